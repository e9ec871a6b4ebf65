"""Stable document ids and content fingerprints: the recipe every producer shares.

Every stage downstream is idempotent by document id, so the id must come out the same
whenever the same document arrives again, by whichever path (ingest, or a JSON
Document written straight to docs.raw): from the channel's own id when it has one,
else from the normalised text. The source is part of both, so two channels that
happen to reuse an id, or to carry the same headline, stay two documents.
"""

from __future__ import annotations

from hashlib import sha256

ID_HEX_CHARS = 32  # 128 bits: collisions are not a practical concern
_SEP = "\x1f"  # cannot appear in a cleaned text or a sane id, so fields cannot run together


def source_doc_id(source: str, source_id: str) -> str:
    return sha256(f"{source}{_SEP}{source_id}".encode()).hexdigest()[:ID_HEX_CHARS]


def content_hash(source: str, text: str) -> str:
    """Fingerprint of (source, normalised text): the id of documents without one, and
    the key under which near-in-time copies of the same text are recognised."""
    return sha256(f"{source}{_SEP}{_SEP}{text}".encode()).hexdigest()[:ID_HEX_CHARS]


def document_id(source: str, source_id: str, text: str) -> str:
    """The id of a document: from the channel's id when it has one, else from the
    normalised ``text``."""
    return source_doc_id(source, source_id) if source_id else content_hash(source, text)
