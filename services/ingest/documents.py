"""The pure core of ingest: one record's fields in, one publishable Document out.

No Kafka, Redis or sockets here. Every connector turns its input into ``RawFields``
and hands them to ``DocumentBuilder``; what comes back is either a ``Candidate``
(serialised Document, Kafka key, dedup identity) or a ``Bad`` record for docs.dlq.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from google.protobuf.timestamp_pb2 import Timestamp
from sentiflow_client.v1 import events_pb2
from sentiflow_client.v1.events_pb2 import Document

from sentiflow.dlq import RejectError, Rejection
from sentiflow.ids import content_hash, source_doc_id
from sentiflow.normalize import (
    EPOCH_SECONDS_BELOW,
    TIME_FLAG_ATTRIBUTE,
    clean_title,
    normalize_text,
    parse_time,
)
from sentiflow.strictjson import decode_line, parse_json_bytes
from services.ingest.config import IngestOptions
from services.ingest.decode import FieldExtractor, RawFields, parse_csv_record
from services.ingest.entities import EntityMatcher, load_entities_file
from services.ingest.redact import Redactor

log = logging.getLogger(__name__)

REDACTED_ATTRIBUTE = "redacted"
_NS = 1_000_000_000


class Candidate(NamedTuple):
    """A document ready to publish, and what deduplication needs to know about it.

    A tuple, because bulk loads ship these between processes: tuples pickle several
    times faster than dataclasses.
    """

    doc_id: str
    key: bytes
    value: bytes
    source: str
    # Set when the id came from the channel; None when the id is the content hash.
    source_doc_id: str | None
    content: str  # content_hash(source, text)


@dataclass(slots=True)
class Bad:
    """A record that cannot become a document: it goes to docs.dlq with the reason."""

    rejection: Rejection
    original: bytes
    source: str


Item = Candidate | Bad


class DocumentBuilder:
    """Turns fields into Documents under one configuration; safe to share by threads."""

    def __init__(
        self,
        options: IngestOptions,
        source: str,
        *,
        entities: EntityMatcher | None = None,
        redactor: Redactor | None = None,
        on_redacted: Callable[[Counter[str]], None] | None = None,
    ) -> None:
        self.options = options
        self.source = source
        if entities is None:
            specs = list(options.entities)
            if options.entities_file is not None:
                specs.extend(load_entities_file(options.entities_file))
            entities = EntityMatcher(specs, cashtags=options.cashtags)
        self._entities = entities
        if redactor is None and options.redact:
            redactor = Redactor(options.redact_kinds)
        self._redactor = redactor
        # Receives counts per kind (exported as metrics), never the values themselves.
        self._on_redacted = on_redacted
        self._extract = FieldExtractor(options.fields)
        self._max_chars = options.max_text_chars
        self._over_limit = options.over_limit
        self._html = options.strip_html
        self._skew_s = options.max_future_skew_s
        self._max_record = options.max_record_bytes
        self._encoding = options.file_encoding
        self._skew_ns = int(options.max_future_skew_s * _NS)
        self._now: tuple[int, Timestamp, bytes] = (-1, Timestamp(), b"")

    # -- items ------------------------------------------------------------------------

    def bad(self, rejection: Rejection, original: bytes, source: str | None = None) -> Bad:
        """A dead letter; with redaction on, its original bytes are redacted too."""
        if self._redactor is not None and original:
            text = original.decode("utf-8", "surrogateescape")
            original = self._redactor.redact(text)[0].encode("utf-8", "surrogateescape")
        return Bad(rejection, original, source or self.source)

    def item(self, fields: RawFields, original: bytes, now_ns: int) -> Item:
        """``build``, with every refusal (or bug) turned into a dead letter."""
        try:
            return self.build(fields, now_ns)
        except RejectError as exc:
            return self.bad(exc.rejection, original, fields.source or None)
        except Exception as exc:  # a bug must cost one record, not the connector
            log.exception("unexpected error building a document")
            return self.bad(
                Rejection(events_pb2.REJECT_REASON_PROCESSING_ERROR, type(exc).__name__),
                original,
            )

    def from_json_line(self, line: bytes, now_ns: int) -> Item:
        if len(line) > self._max_record:
            return self.too_large(line)
        try:
            fields = self._extract(parse_json_bytes(line, self._encoding))
        except RejectError as exc:
            return self.bad(exc.rejection, line)
        return self.item(fields, line, now_ns)

    def from_json_lines(self, lines: list[bytes], now_ns: int) -> list[Item]:
        from_json_line = self.from_json_line
        return [from_json_line(line, now_ns) for line in lines]

    def from_mapping(self, record: object, original: bytes, now_ns: int) -> Item:
        if len(original) > self._max_record:
            return self.too_large(original)
        try:
            fields = self._extract(record)
        except RejectError as exc:
            return self.bad(exc.rejection, original)
        return self.item(fields, original, now_ns)

    def from_csv(self, header: list[str], record: bytes, now_ns: int) -> Item:
        """One CSV record (bytes, possibly spanning lines) under the file's header."""
        if len(record) > self._max_record:
            return self.too_large(record)
        try:
            row = parse_csv_record(decode_line(record, self._encoding))
            if len(row) > len(header):
                raise RejectError(
                    events_pb2.REJECT_REASON_INVALID_FIELD,
                    f"row has {len(row)} columns, header has {len(header)}",
                )
            fields = self._extract(dict(zip(header, row, strict=False)))
        except RejectError as exc:
            return self.bad(exc.rejection, record)
        return self.item(fields, record, now_ns)

    def from_text(self, text: str, original: bytes, now_ns: int) -> Item:
        return self.item(RawFields(text=text), original, now_ns)

    def too_large(self, original: bytes) -> Bad:
        return self.bad(
            Rejection(
                events_pb2.REJECT_REASON_TOO_LARGE,
                f"record of {len(original)} bytes over the {self.options.max_record_bytes} cap",
            ),
            original,
        )

    # -- the document -----------------------------------------------------------------

    def build(self, fields: RawFields, now_ns: int) -> Candidate:
        """Normalise, redact, find entities, derive the id; raise RejectError if unusable.

        1. Clean the text (markup, NFC, invisible and control characters, spaces) and
           apply the length policy.
        2. Redact personal data (when configured) from the cleaned text, so data
           hidden behind invisible characters is found too.
        3. Id from source + channel id, else from the text; the primary entity (or
           the id) is the Kafka key.
        """
        raw = fields.text
        text, truncated = normalize_text(
            raw, max_chars=self._max_chars, over_limit=self._over_limit, html_markup=self._html
        )
        title = self._title(fields.title) if fields.title else ""
        redacted = 0
        if self._redactor is not None:
            text, counts = self._redactor.redact(text)
            if title:
                title, title_counts = self._redactor.redact(title)
                counts.update(title_counts)
            redacted = sum(counts.values())
            if redacted and self._on_redacted is not None:
                self._on_redacted(counts)
        source = fields.source or self.source
        content = content_hash(source, text)
        source_id = fields.source_id
        channel_id = source_doc_id(source, source_id) if source_id else None
        doc_id = channel_id or content
        # Only non-empty fields are set: each assignment costs, and this runs per document.
        doc = Document(id=doc_id, source=source, text=text)
        if source_id:
            doc.source_id = source_id
        if fields.lang:
            doc.lang = fields.lang
        # The raw text is kept for display when it differs, except with redaction on:
        # personal data hidden by invisible characters would survive in it.
        if raw is not text and raw != text and self._redactor is None:
            doc.raw_text = raw[: self._max_chars * 4]
        matches = self._entities.find(text)
        if matches:
            add = doc.entities.add
            for match in matches:
                add(id=match.id, name=match.name, kind=match.kind)
        flag = None
        when = fields.time
        if (
            # parse_time's common case (epoch seconds, not in the future), without the call
            type(when) is int
            and 0 < when < EPOCH_SECONDS_BELOW
            and when * _NS - now_ns <= self._skew_ns
        ):
            doc.published_at.seconds = when
        elif when is not None:
            parsed = parse_time(when, now_ns=now_ns, max_future_skew_s=self._skew_s)
            flag = parsed.flag
            if parsed.ns is not None:
                seconds, nanos = divmod(parsed.ns, _NS)
                published = doc.published_at
                published.seconds = seconds
                if nanos:
                    published.nanos = nanos
        key = matches[0].id if matches else doc_id
        if not (truncated or fields.url or title or flag or fields.attributes or redacted):
            # Fields serialise in field-number order and ingested_at (9) would be the
            # last: its encoding, made once per batch, is appended instead of set.
            value = doc.SerializeToString() + self._ingested(now_ns)[1]
            return Candidate(doc_id, key.encode(), value, source, channel_id, content)
        doc.ingested_at.CopyFrom(self._ingested(now_ns)[0])
        if truncated:
            doc.truncated = True
        if fields.url:
            doc.url = fields.url
        if title:
            doc.title = title
        if flag is not None:
            doc.attributes[TIME_FLAG_ATTRIBUTE] = flag
        if fields.attributes:
            doc.attributes.update(fields.attributes)
        if redacted:
            doc.attributes[REDACTED_ATTRIBUTE] = str(redacted)
        return Candidate(doc_id, key.encode(), doc.SerializeToString(), source, channel_id, content)

    def _ingested(self, now_ns: int) -> tuple[Timestamp, bytes]:
        """ingested_at, and its encoding as a Document field, made once per batch
        rather than once per document (a batch shares now_ns)."""
        cached = self._now
        if cached[0] != now_ns:
            stamp = Timestamp(seconds=now_ns // _NS, nanos=now_ns % _NS)
            cached = (now_ns, stamp, Document(ingested_at=stamp).SerializeToString())
            self._now = cached
        return cached[1], cached[2]

    def _title(self, title: str) -> str:
        return clean_title(title, html_markup=self._html)
