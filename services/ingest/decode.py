"""From a decoded record to the fields of a document, with a reason for every refusal.

Pure functions: each raises ``RejectError`` with a reason from the fixed set
(``invalid_utf8``, ``invalid_json``, ``missing_field``, ``invalid_field``,
``too_large``, ``unsupported_encoding``) and never anything else, whatever the input
(the fuzz tests hold them to that). Bytes become text and JSON values by the shared
rules of ``sentiflow.strictjson``; field values are checked by ``sentiflow.fields``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

from sentiflow_client.v1 import events_pb2

from sentiflow.dlq import RejectError
from sentiflow.fields import (
    MAX_LANG_CHARS,
    MAX_SOURCE_CHARS,
    id_string,
    scalar_string,
    short_string,
    time_value,
)
from sentiflow.strictjson import parse_json_bytes
from services.ingest.config import FieldMap

R = events_pb2


@dataclass(slots=True)
class RawFields:
    """What a connector extracted from one record, before normalisation."""

    text: str
    source_id: str = ""
    time: object = None
    source: str = ""
    url: str = ""
    title: str = ""
    lang: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


def _lookup(record: Mapping[str, object], name: str) -> object:
    if name in record:
        return record[name]
    if "." not in name:
        return None
    node: object = record
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


class FieldExtractor:
    """Picks the configured fields out of decoded records (JSON objects or CSV rows).

    Built once per field map; a plain ``dict.get`` per field unless a name is dotted.
    """

    def __init__(self, fields: FieldMap) -> None:
        self.fields = fields
        self._text = fields.text
        self._id = fields.id
        self._time = fields.time
        self._source = fields.source
        self._url = fields.url
        self._title = fields.title
        self._lang = fields.lang
        self._attributes = list(fields.attributes)
        self._nested = fields.nested

    def __call__(self, record: object) -> RawFields:
        # A dict is a Mapping: checked first, isinstance against an ABC costs.
        if type(record) is not dict and not isinstance(record, Mapping):
            raise RejectError(
                R.REJECT_REASON_INVALID_FIELD,
                f"a document must be a JSON object, got {type(record).__name__}",
            )
        get = partial(_lookup, record) if self._nested else record.get
        text = get(self._text)
        if text is None:
            raise RejectError(R.REJECT_REASON_MISSING_FIELD, f"missing field {self._text!r}")
        if type(text) is not str:
            raise RejectError(
                R.REJECT_REASON_INVALID_FIELD,
                f"{self._text} must be a string, got {type(text).__name__}",
            )
        source_id = get(self._id)
        time = get(self._time)
        source = get(self._source) if self._source else None
        url, title, lang = get(self._url), get(self._title), get(self._lang)
        out = RawFields(
            text,
            "" if source_id is None else id_string(source_id, self._id),
            None if time is None else time_value(time, self._time),
            ""
            if source is None
            else short_string(source, self._source or "", limit=MAX_SOURCE_CHARS),
            "" if url is None else short_string(url, self._url),
            "" if title is None else short_string(title, self._title),
            "" if lang is None else short_string(lang, self._lang, limit=MAX_LANG_CHARS),
            {},
        )
        for name in self._attributes:
            value = get(name)
            if value is not None:
                out.attributes[name] = scalar_string(value, name)
        return out


def map_fields(record: object, fields: FieldMap) -> RawFields:
    """Pick the configured fields out of one decoded record."""
    return FieldExtractor(fields)(record)


def json_record(line: bytes, fields: FieldMap, encoding: str = "utf-8") -> RawFields:
    """One JSONL line (without its newline) to fields."""
    return map_fields(parse_json_bytes(line, encoding), fields)


def json_body(body: bytes, charset: str = "utf-8") -> list[object]:
    """An HTTP body: one document object, a list of them, or ``{"documents": [...]}``."""
    parsed = parse_json_bytes(body, charset)
    if isinstance(parsed, list):
        return parsed
    if isinstance(parsed, dict) and "documents" in parsed:
        docs = parsed["documents"]
        if not isinstance(docs, list):
            raise RejectError(R.REJECT_REASON_INVALID_FIELD, "documents must be a list")
        return docs
    return [parsed]


def csv_fields(header: Sequence[str], row: Sequence[str], fields: FieldMap) -> RawFields:
    """A parsed CSV row, with the file's header naming the columns."""
    if len(row) > len(header):
        raise RejectError(
            R.REJECT_REASON_INVALID_FIELD, f"row has {len(row)} columns, header has {len(header)}"
        )
    return FieldExtractor(fields)(dict(zip(header, row, strict=False)))


def parse_csv_record(text: str) -> list[str]:
    """One complete CSV record (it may span lines inside quotes) to its columns."""
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise RejectError(R.REJECT_REASON_INVALID_FIELD, f"malformed CSV: {exc}") from None
    if len(rows) != 1:
        raise RejectError(R.REJECT_REASON_INVALID_FIELD, "malformed CSV record")
    return rows[0]
