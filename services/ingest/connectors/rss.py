"""RSS 2.0, RSS 1.0 and Atom feeds, polled with conditional requests.

Each feed has its own interval; a failing feed backs off exponentially without
holding up the others. The validators (ETag, Last-Modified) of a response are only
remembered once every item of it is acknowledged, so a crash or a failed delivery
makes the next poll fetch the feed again instead of hearing "304, nothing new".
Items already published are dropped by dedup (stable ids from guid/id/link).

XML is parsed with expat directly and any DTD is refused: entity declarations are
how "billion laughs" and external-entity attacks arrive, and feeds never need them.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pyexpat import XML_PARAM_ENTITY_PARSING_NEVER, ExpatError, ParserCreate
from urllib.parse import urlsplit

from sentiflow_client.v1 import events_pb2

from sentiflow.dlq import Rejection
from services.ingest import metrics
from services.ingest.config import FeedSpec, IngestOptions
from services.ingest.decode import RawFields
from services.ingest.documents import DocumentBuilder, Item
from services.ingest.publisher import Batch, Outcome, Publisher

log = logging.getLogger(__name__)

NAME = "rss"
ATOM = "{http://www.w3.org/2005/Atom}"
RSS1 = "{http://purl.org/rss/1.0/}"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
DC = "{http://purl.org/dc/elements/1.1/}"
CONTENT = "{http://purl.org/rss/1.0/modules/content/}"
USER_AGENT = "sentiflow-ingest/0.1 (+https://github.com/sentiflow)"


class FeedError(Exception):
    """The feed could not be fetched or read; the feed backs off and is tried again."""


# -- parsing (pure) ------------------------------------------------------------------------


def _qname(name: str) -> str:
    uri, sep, local = name.rpartition(" ")
    return f"{{{uri}}}{local}" if sep else name


def parse_xml(data: bytes) -> ET.Element:
    """Well-formed XML without any DTD, as an ElementTree element."""
    parser = ParserCreate(namespace_separator=" ")
    builder = ET.TreeBuilder()

    def refuse(*_args: object) -> None:
        raise FeedError("feeds with a DTD or entity declarations are refused")

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.SetParamEntityParsing(XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = lambda name, attrs: builder.start(
        _qname(name), {_qname(k): v for k, v in attrs.items()}
    )
    parser.EndElementHandler = lambda name: builder.end(_qname(name))
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    try:
        parser.Parse(data, True)
    except ExpatError as exc:
        raise FeedError(f"not well-formed XML: {exc}") from None
    root: ET.Element = builder.close()
    return root


@dataclass(frozen=True)
class Entry:
    fields: RawFields
    original: bytes


def _text(element: ET.Element | None) -> str:
    return "".join(element.itertext()).strip() if element is not None else ""


def _first(element: ET.Element, *paths: str) -> str:
    for path in paths:
        value = _text(element.find(path))
        if value:
            return value
    return ""


def _atom_link(entry: ET.Element) -> str:
    for link in entry.findall(f"{ATOM}link"):
        if link.get("rel", "alternate") == "alternate" and link.get("href"):
            return link.get("href", "")
    return ""


def _join(title: str, summary: str) -> str:
    """What the model reads: the headline, and the summary when it adds something."""
    if not summary or summary == title:
        return title
    if not title:
        return summary
    return f"{title} {summary}" if title[-1] in ".!?:;" else f"{title}. {summary}"


def feed_entries(root: ET.Element) -> list[Entry]:
    """Entries of an RSS 2.0, RSS 1.0 (RDF) or Atom document, in document order."""
    out: list[Entry] = []
    if root.tag == f"{ATOM}feed":
        for entry in root.iter(f"{ATOM}entry"):
            title = _text(entry.find(f"{ATOM}title"))
            summary = _first(entry, f"{ATOM}summary", f"{ATOM}content")
            link = _atom_link(entry)
            fields = RawFields(
                text=_join(title, summary),
                source_id=_text(entry.find(f"{ATOM}id")) or link,
                time=_first(entry, f"{ATOM}published", f"{ATOM}updated") or None,
                url=link,
                title=title,
            )
            out.append(Entry(fields, ET.tostring(entry)))
        return out
    items = root.findall("channel/item") or root.findall(f"{RSS1}item") or root.iter("item")
    for item in items:
        ns = RSS1 if item.tag == f"{RSS1}item" else ""
        title = _text(item.find(f"{ns}title"))
        summary = _first(item, f"{ns}description", f"{CONTENT}encoded")
        link = _text(item.find(f"{ns}link"))
        fields = RawFields(
            text=_join(title, summary),
            source_id=_text(item.find("guid")) or item.get(f"{RDF}about", "") or link,
            time=_first(item, "pubDate", f"{DC}date") or None,
            url=link,
            title=title,
        )
        out.append(Entry(fields, ET.tostring(item)))
    return out


def backoff_s(interval_s: float, failures: int, max_backoff_s: float) -> float:
    """Seconds until the next poll: the interval, doubled per consecutive failure."""
    if failures <= 0:
        return interval_s
    return float(min(max_backoff_s, interval_s * 2 ** min(failures, 30)))


# -- polling (I/O) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int  # 200 or 304
    body: bytes
    etag: str | None
    last_modified: str | None


def fetch(
    url: str, *, etag: str | None, last_modified: str | None, timeout_s: float, max_bytes: int
) -> Response:
    """A conditional GET; raises FeedError for anything but 200 and 304."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    if urlsplit(url).scheme not in {"http", "https"}:
        raise FeedError(f"unsupported URL scheme: {url[:100]}")
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (scheme checked)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310
            body = resp.read(max_bytes + 1)
            if len(body) > max_bytes:
                raise FeedError(f"feed over {max_bytes} bytes")
            return Response(
                resp.status, body, resp.headers.get("ETag"), resp.headers.get("Last-Modified")
            )
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return Response(304, b"", etag, last_modified)
        raise FeedError(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise FeedError(f"unreachable: {exc}") from None


@dataclass
class FeedState:
    spec: FeedSpec
    name: str
    builder: DocumentBuilder
    next_due: float = 0.0
    failures: int = 0
    etag: str | None = None
    last_modified: str | None = None
    in_flight: bool = False  # items of the last response not yet acknowledged


def feed_name(spec: FeedSpec) -> str:
    return spec.name or urlsplit(spec.url).netloc or spec.url[:60]


class RssConnector:
    """Polls every configured feed on its own schedule until stopped."""

    name = NAME

    def __init__(
        self,
        feeds: Sequence[FeedSpec],
        *,
        builder_for: Callable[[str], DocumentBuilder],
        publisher: Publisher,
        options: IngestOptions,
    ) -> None:
        self._publisher = publisher
        self._options = options
        self.feeds = [
            FeedState(spec, feed_name(spec), builder_for(f"rss:{feed_name(spec)}"))
            for spec in feeds
        ]

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            now = time.monotonic()
            for feed in self.feeds:
                if not feed.in_flight and feed.next_due <= now and not stop.is_set():
                    self.poll(feed)
            upcoming = [f.next_due for f in self.feeds if not f.in_flight]
            wait = min(upcoming, default=now + 1.0) - time.monotonic()
            stop.wait(min(max(wait, 0.01), 1.0))

    def poll(self, feed: FeedState) -> None:
        """One poll of one feed; never raises (a broken feed only backs off)."""
        spec, options = feed.spec, self._options
        try:
            response = fetch(
                spec.url,
                etag=feed.etag,
                last_modified=feed.last_modified,
                timeout_s=options.rss_timeout_s,
                max_bytes=options.rss_max_bytes,
            )
        except FeedError as exc:
            self._failed(feed, str(exc), None)
            return
        if response.status == 304:
            self._succeeded(feed, "not_modified")
            return
        try:
            entries = feed_entries(parse_xml(response.body))
        except FeedError as exc:
            # A body that is not a usable feed is bad input: dead-lettered with its bytes.
            self._failed(feed, str(exc), response.body)
            return
        except Exception as exc:  # a parser bug must not stop the other feeds
            log.exception("feed %s failed unexpectedly", feed.name)
            self._failed(feed, type(exc).__name__, response.body)
            return
        self._publish(feed, entries, response)

    def _publish(self, feed: FeedState, entries: list[Entry], response: Response) -> None:
        now_ns = time.time_ns()
        items: list[Item] = [feed.builder.item(e.fields, e.original, now_ns) for e in entries]
        metrics.READ.labels(NAME).inc(len(items))

        def done(_batch: Batch, outcomes: list[Outcome]) -> None:
            feed.in_flight = False
            if Outcome.FAILED in outcomes:
                self._failed(feed, "delivery failed", None)
                return
            feed.etag, feed.last_modified = response.etag, response.last_modified
            self._succeeded(feed, "fetched")

        if not items:
            done(Batch(NAME, []), [])
            return
        feed.in_flight = True
        try:
            self._publisher.submit(Batch(NAME, items, done))
        except Exception as exc:
            feed.in_flight = False
            self._failed(feed, f"publisher unavailable: {exc}", None)

    def _succeeded(self, feed: FeedState, outcome: str) -> None:
        feed.failures = 0
        feed.next_due = time.monotonic() + feed.spec.interval_s
        metrics.RSS_FETCHES.labels(feed.name, outcome).inc()

    def _failed(self, feed: FeedState, why: str, original: bytes | None) -> None:
        feed.failures += 1
        delay = backoff_s(feed.spec.interval_s, feed.failures, self._options.rss_max_backoff_s)
        feed.next_due = time.monotonic() + delay
        metrics.RSS_FETCHES.labels(feed.name, "failed").inc()
        log.warning("feed %s: %s; next try in %.0fs", feed.name, why, delay)
        if original is not None:
            bad = feed.builder.bad(
                Rejection(events_pb2.REJECT_REASON_PROCESSING_ERROR, why), original
            )
            try:
                self._publisher.submit(Batch(NAME, [bad]))
            except Exception as exc:
                log.warning("dead letter for feed %s dropped: %s", feed.name, exc)
