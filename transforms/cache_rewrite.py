"""Taking superseded rows out of the committed files, on the workers: the commit then only commits.

The rows a run replaces are known once its ``samples`` rows and embeddings
exist (``SupersedeRule``: the samples it recomputed, those it embedded again,
and those it found unchanged by their content, whose ``samples`` rows get their
files' new identities).
Each committed file of the state the run started from is then read and,
where it holds such rows, rewritten without them (``replace_file``), in
parallel. The replacements go into the attempt's ``_pending`` list; the
commit applies them when the cache is still in that state.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam

from schemas.cache import Replacement, SupersedeRule, replace_file
from schemas.tables import EMBEDDINGS_DIR, SKIPPED_TABLE

CommittedFile = tuple[str, dict[str, Any]]
"""A table name and one of its files as ``schemas.cache.file_rows`` describes it."""


class _RuleFn(beam.CombineFn):
    """``(table, row)`` pairs of samples, embeddings and unchanged samples -> the ``SupersedeRule`` of an extraction.

    Accumulator: (ids of recomputed samples, ids of embedded samples by embedding table, the file identities now of
    samples unchanged by their content, by id).
    """

    def create_accumulator(self) -> tuple[set[str], dict[str, set[str]], dict[str, str]]:
        return set(), {}, {}

    def add_input(self, accumulator: tuple[set[str], dict[str, set[str]], dict[str, str]],
                  pair: tuple[str, dict[str, Any]]) -> tuple[set[str], dict[str, set[str]], dict[str, str]]:
        table, row = pair
        if table == "samples" and row["manifest_ok"]:
            accumulator[0].add(row["sample_id"])
        elif table.startswith(f"{EMBEDDINGS_DIR}/"):
            accumulator[1].setdefault(table, set()).add(row["sample_id"])
        elif table == SKIPPED_TABLE and row.get("file_identity"):
            accumulator[2][row["sample_id"]] = row["file_identity"]
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[tuple[set[str], dict[str, set[str]], dict[str, str]]]
                           ) -> tuple[set[str], dict[str, set[str]], dict[str, str]]:
        recomputed: set[str] = set()
        embedded: dict[str, set[str]] = {}
        refreshed: dict[str, str] = {}
        for more_recomputed, more_embedded, more_refreshed in accumulators:
            recomputed |= more_recomputed
            refreshed.update(more_refreshed)
            for table, ids in more_embedded.items():
                embedded.setdefault(table, set()).update(ids)
        return recomputed, embedded, refreshed

    def extract_output(self, accumulator: tuple[set[str], dict[str, set[str]], dict[str, str]]) -> SupersedeRule:
        recomputed, embedded, refreshed = accumulator
        return SupersedeRule.of("extract", frozenset(recomputed), {table: frozenset(ids) for table, ids in embedded.items()},
                                refreshed)


class _ReplaceFileFn(beam.DoFn):
    """One committed file -> its ``Replacement`` when it holds rows the rule drops."""

    def __init__(self, cache: str, attempt: str) -> None:
        self._cache = cache
        self._attempt = attempt

    def process(self, element: CommittedFile, rule: SupersedeRule) -> Iterator[Replacement]:
        table, file = element
        replacement: Optional[Replacement] = replace_file(self._cache, table, file, rule, self._attempt)
        if replacement:
            yield replacement


class ReplaceSupersededRows(beam.PTransform):
    """``PCollection[(table, row)]`` of the run's samples, embedding and ``_skipped`` rows -> ``PCollection[Replacement]``.

    Args:
        cache: the cache folder; attempt: the run attempt that names the rewrites.
        committed: every file of the state the run started from (empty for a new cache or ``--overwrite``).
    """

    def __init__(self, cache: str, attempt: str, committed: list[CommittedFile]) -> None:
        super().__init__()
        self._cache = cache
        self._attempt = attempt
        self._committed = committed

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        rule = rows | "Rule" >> beam.CombineGlobally(_RuleFn()).without_defaults()  # no rows (all unchanged): the default below
        no_rows = _RuleFn().extract_output(_RuleFn().create_accumulator())
        return (
            rows.pipeline
            | "CommittedFiles" >> beam.Create(self._committed)  # Create spreads its elements over workers (a reshuffle)
            | "Replace" >> beam.ParDo(_ReplaceFileFn(self._cache, self._attempt),
                                      rule=beam.pvalue.AsSingleton(rule, default_value=no_rows))
        )
