"""docs.raw records as Documents, whether protobuf or JSON, by the rules ingest applies.

A producer that cannot build the protobuf message (Kafka Connect, a Kafka UI, a
script) writes a JSON object instead, with ``content-type: application/json`` or, with
no header, a value whose first byte is ``{``: no serialised Document starts with that
byte (it would be a group of field 15, and Document has 13 fields), so the two never
mix. The JSON fields are ingest's default field names, and the text, the id and the
timestamps come out exactly as ingest would make them, so the same document is one
document whichever way it arrived.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from sentiflow_client.v1 import events_pb2
from sentiflow_client.v1.events_pb2 import Document

from sentiflow.dlq import RejectError, decode
from sentiflow.fields import (
    MAX_LANG_CHARS,
    MAX_SOURCE_CHARS,
    id_string,
    scalar_string,
    short_string,
    time_value,
)
from sentiflow.ids import document_id
from sentiflow.kafka import Record
from sentiflow.normalize import (
    DEFAULT_MAX_FUTURE_SKEW_S,
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_OVER_LIMIT,
    TIME_FLAG_ATTRIBUTE,
    clean_title,
    normalize_text,
    parse_time,
)
from sentiflow.strictjson import parse_json_bytes
from sentiflow.wire import (
    CONTENT_TYPE_HEADER,
    JSON_MEDIA_TYPE,
    PROTOBUF_MEDIA_TYPES,
    MediaType,
    header,
)

R = events_pb2
# A JSON Document without a ``source`` field is from this source (part of its id).
DEFAULT_SOURCE = "kafka"
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class DocumentRules:
    """How a JSON Document's text and times are normalised: ingest's defaults."""

    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    over_limit: Literal["truncate", "reject"] = DEFAULT_OVER_LIMIT
    strip_html: bool = True
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S
    default_source: str = DEFAULT_SOURCE


INGEST_RULES = DocumentRules()

Format = Literal["protobuf", "json"]


def record_format(record: Record) -> tuple[Format, MediaType | None]:
    """How a docs.raw record's value is encoded, from its ``content-type`` header or,
    without one, from its first byte; an unknown content type raises RejectError."""
    raw = header(record.headers, CONTENT_TYPE_HEADER)
    if raw is None:
        return ("json" if (record.value or b"")[:1] == b"{" else "protobuf"), None
    media = MediaType(raw.decode("utf-8", "replace"))
    if media.type == JSON_MEDIA_TYPE:
        return "json", media
    if media.type in PROTOBUF_MEDIA_TYPES:
        expected = Document.DESCRIPTOR.full_name
        if media.message_type not in (None, expected):
            raise RejectError(
                R.REJECT_REASON_UNSUPPORTED_ENCODING,
                f"content-type names {media.message_type}, this topic carries {expected}",
            )
        return "protobuf", media
    raise RejectError(
        R.REJECT_REASON_UNSUPPORTED_ENCODING,
        f"content-type {media.type!r} is neither {JSON_MEDIA_TYPE} nor protobuf",
    )


def decode_document(
    record: Record, rules: DocumentRules = INGEST_RULES, now_ns: int | None = None
) -> Document:
    """A docs.raw record as a Document, or RejectError saying why it is not one."""
    fmt, media = record_format(record)
    if fmt == "protobuf":
        return decode(record, Document)
    if record.value is None:
        raise RejectError(R.REJECT_REASON_TOMBSTONE, "record has no value (tombstone)")
    charset = (media.charset if media is not None else None) or "utf-8"
    ingested_ns = record.timestamp_ms * 1_000_000 if record.timestamp_ms else None
    return json_document(
        parse_json_bytes(record.value, charset.lower()),
        rules,
        now_ns=time.time_ns() if now_ns is None else now_ns,
        ingested_ns=ingested_ns,
    )


def _source_id(obj: Mapping[str, object]) -> str:
    """The channel's id, named ``source_id`` or, as ingest reads it, ``id``."""
    given = {
        name: id_string(obj[name], name)
        for name in ("source_id", "id")
        if obj.get(name) is not None
    }
    values = set(given.values())
    if len(values) > 1:
        raise RejectError(
            R.REJECT_REASON_INVALID_FIELD,
            f"id {given['id']!r} and source_id {given['source_id']!r} differ",
        )
    return values.pop() if values else ""


def _attributes(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RejectError(
            R.REJECT_REASON_INVALID_FIELD,
            f"attributes must be an object, got {type(value).__name__}",
        )
    return {
        short_string(name, "attribute name", limit=MAX_SOURCE_CHARS): scalar_string(
            item, f"attributes.{name}"
        )
        for name, item in value.items()
    }


def json_document(
    obj: object, rules: DocumentRules, *, now_ns: int, ingested_ns: int | None = None
) -> Document:
    """A decoded JSON Document as the Document ingest would publish for it.

    ``text`` is required; ``source``, ``id`` (or ``source_id``), ``title``, ``url``,
    ``lang``, ``published_at`` and ``attributes`` (an object of scalars) are optional,
    other fields are ignored. The same steps as ingest, in the same order: clean the
    text, derive the id from source and id (else from the text), clean the title,
    parse the time.
    """
    if not isinstance(obj, Mapping):
        raise RejectError(
            R.REJECT_REASON_INVALID_FIELD,
            f"a document must be a JSON object, got {type(obj).__name__}",
        )
    raw = obj.get("text")
    if raw is None:
        raise RejectError(R.REJECT_REASON_MISSING_FIELD, "missing field 'text'")
    if not isinstance(raw, str):
        raise RejectError(
            R.REJECT_REASON_INVALID_FIELD, f"text must be a string, got {type(raw).__name__}"
        )
    source = short_string(obj.get("source"), "source", limit=MAX_SOURCE_CHARS)
    source = source or rules.default_source
    source_id = _source_id(obj)
    title = short_string(obj.get("title"), "title")
    url = short_string(obj.get("url"), "url")
    lang = short_string(obj.get("lang"), "lang", limit=MAX_LANG_CHARS)
    when = time_value(obj.get("published_at"), "published_at")
    attributes = _attributes(obj.get("attributes"))
    text, truncated = normalize_text(
        raw,
        max_chars=rules.max_text_chars,
        over_limit=rules.over_limit,
        html_markup=rules.strip_html,
    )
    doc = Document(id=document_id(source, source_id, text), source=source, text=text)
    if source_id:
        doc.source_id = source_id
    if lang:
        doc.lang = lang
    if raw != text:
        doc.raw_text = raw[: rules.max_text_chars * 4]
    if when is not None:
        parsed = parse_time(when, now_ns=now_ns, max_future_skew_s=rules.max_future_skew_s)
        if parsed.ns is not None:
            doc.published_at.FromNanoseconds(parsed.ns)
        if parsed.flag is not None:
            doc.attributes[TIME_FLAG_ATTRIBUTE] = parsed.flag
    doc.ingested_at.FromNanoseconds(now_ns if ingested_ns is None else ingested_ns)
    if truncated:
        doc.truncated = True
    if url:
        doc.url = url
    if title:
        doc.title = clean_title(title, html_markup=rules.strip_html)
    doc.attributes.update(attributes)
    return doc
