"""The manifest's extra columns (those beside ``id`` and the modalities): their arrow types, inferred from the rows.

A column of mixed types is a string column holding JSON text; one with only
nulls a string column. ``samples`` gets these columns (``transforms.parquet_sink``).
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import apache_beam as beam
import pyarrow as pa

from schemas.records import ManifestRecord


class InferExtraFields(beam.CombineFn):
    """Records -> the arrow fields of their extra manifest columns, sorted by name (a column of mixed types is a string
    column holding JSON text; one with only nulls a string column).

    Accumulator: column name -> set of arrow type strings seen.
    """

    def create_accumulator(self) -> dict[str, set[str]]:
        return {}

    def add_input(self, accumulator: dict[str, set[str]], record: ManifestRecord) -> dict[str, set[str]]:
        return self.add_extra(accumulator, record.extra)

    @staticmethod
    def add_extra(accumulator: dict[str, set[str]], extra: dict[str, Any]) -> dict[str, set[str]]:
        """``accumulator`` with the types of one record's extra columns."""
        for name, value in extra.items():
            seen = accumulator.setdefault(name, set())
            if value is not None:
                seen.add(_arrow_type_of(value))
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[dict[str, set[str]]]) -> dict[str, set[str]]:
        merged: dict[str, set[str]] = {}
        for accumulator in accumulators:
            for name, seen in accumulator.items():
                merged.setdefault(name, set()).update(seen)
        return merged

    def extract_output(self, accumulator: dict[str, set[str]]) -> list[pa.Field]:
        return [pa.field(name, _common_type(seen)) for name, seen in sorted(accumulator.items())]


_SCALAR_TYPES = {bool: "bool", int: "int64", float: "double", str: "string"}


def _arrow_type_of(value: Any) -> str:
    """The arrow type name pyarrow infers for ``value`` (``json`` where it infers none)."""
    scalar = _SCALAR_TYPES.get(type(value))
    if scalar:
        return scalar
    try:
        return str(pa.array([value]).type)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return "json"


def _common_type(seen: set[str]) -> pa.DataType:
    if seen == {"int64", "double"}:
        return pa.float64()
    if len(seen) != 1 or "json" in seen:
        return pa.string()
    found = next(iter(seen))
    try:
        return pa.type_for_alias(found)
    except ValueError:
        return pa.string()


def extra_value(value: Any, field: pa.Field) -> Any:
    """``value`` of an extra column as its ``field`` stores it: JSON text in a string column that mixes types."""
    if value is None or not pa.types.is_string(field.type) or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)
