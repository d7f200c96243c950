"""Is a cached sample still what the manifest row describes? The decision shared by the join and the extractor.

A sample is unchanged when the cache holds it with the same manifest row (its
URIs and extra columns, ``ManifestRecord.fingerprint``) and the same feature
config, and its files are the same: by *metadata* when every file's identity
(size and modification time, or an object store's metadata;
``media_io.file_identity``) equals the cached one, else by *content* when the
SHA-256 of every file equals the cached hash (the files are read only then,
or always under ``verify_content``). A file that cannot be read has no
identity: that it stays unreadable is part of what is compared.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Collection, Optional

from schemas.errors import SampleFailure
from schemas.records import ManifestRecord
from transforms import media_io

logger = logging.getLogger(__name__)

UNCHANGED_BY_METADATA = "metadata"
UNCHANGED_BY_CONTENT = "content"


@dataclass(frozen=True)
class KnownSample:
    """What the cache already holds for a sample (from earlier runs).

    Attributes:
        content_hash: SHA-256 over its files' contents, where an earlier run computed it.
        same_features: it was computed with the run's feature config.
        manifest_hash: ``ManifestRecord.fingerprint`` of the row it was computed from.
        modalities_with_features: the modalities it has feature rows of.
        file_identity: its files' identities (``identities_json``), ``None`` in older caches.
        embedded: (modality, encoder fingerprint) of the embeddings it has.
    """

    content_hash: Optional[str]
    same_features: bool
    manifest_hash: str
    modalities_with_features: frozenset[str]
    file_identity: Optional[str] = None
    embedded: frozenset[tuple[str, str]] = frozenset()

    def missing_embeddings(self, requests: dict[str, str]) -> set[str]:
        """The modalities it has features of whose requested encoder (``{modality: fingerprint}``) has not embedded it."""
        return missing_embeddings(self.modalities_with_features, self.embedded, requests)


def missing_embeddings(modalities: Collection[str], embedded: Collection[tuple[str, str]], requests: dict[str, str]) -> set[str]:
    """Of ``modalities`` (those a sample has features of), those whose requested encoder (``{modality: fingerprint}``)
    is not among ``embedded`` (``(modality, encoder fingerprint)`` of the embeddings the sample has)."""
    return {m for m, fingerprint in requests.items() if m in modalities and (m, fingerprint) not in embedded}


def identities_json(identities: dict[str, str]) -> str:
    """``{modality: file identity}`` of the readable files as the JSON ``samples.file_identity`` holds (``{}``: none).

    The text ``json.dumps(identities, sort_keys=True)`` gives, built directly (an unchanged rerun compares one per
    sample): modality names and identities (digits, ``:`` and ``.``) hold no character JSON escapes."""
    if len(identities) == 1:  # the common case, without sorting
        (modality, identity), = identities.items()
        return f'{{"{modality}": "{identity}"}}'
    return "{" + ", ".join([f'"{modality}": "{identities[modality]}"' for modality in sorted(identities)]) + "}"


def same_row_and_config(record: ManifestRecord, known: Optional[KnownSample]) -> bool:
    """The cache holds this sample from the same manifest row and the run's feature config (files not compared)."""
    return known is not None and known.same_features and known.manifest_hash == record.fingerprint()


def files_identity(uris: dict[str, str]) -> Optional[str]:
    """``identities_json`` of the files ``uris`` (``{modality: uri}``) as they are now, or ``None`` when it cannot be
    told (a file whose identity could not be taken for a reason other than being unreadable: the extractor then
    decides with the content hash). A file that cannot be read has no identity: that it stays unreadable is part of
    what is compared."""
    identities = {}
    for modality, uri in uris.items():
        try:
            identities[modality] = media_io.file_identity(uri)
        except SampleFailure:
            continue  # unreadable now: compared with the cached identities, which then lack it too
        except Exception as error:  # an unforeseen failure: let the extractor read it and record it
            logger.debug("cannot take the identity of %s (%s)", uri, error)
            return None
    return identities_json(identities)


def same_files(cached_identity: Optional[str], uris: dict[str, str]) -> bool:
    """The files ``uris`` (``{modality: uri}``) have the identities the cache holds (``identities_json``; one ``stat``
    per local file, one metadata request per file in an object store; no content is read). The join asks this only
    of a sample the cache holds from the same row and config.

    ``False`` whenever this cannot tell (an identity that cannot be taken, an older cache without identities): the
    extractor then decides with the content hash."""
    return cached_identity is not None and files_identity(uris) == cached_identity
