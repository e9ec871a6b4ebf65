"""RSS/Atom: parsing (pure) and polling feeds served by a local HTTP server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.ingest.config import FeedSpec, IngestSettings
from services.ingest.connectors.rss import (
    FeedError,
    RssConnector,
    backoff_s,
    feed_entries,
    parse_xml,
)
from services.ingest.main import make_builder, start_runtime
from tests.support.ingest import Readers, reasons

RSS = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Markets</title>
<item><title>$AAPL beats estimates</title><link>https://n.example/1</link>
  <guid>n-1</guid><pubDate>Fri, 01 Mar 2024 12:00:00 GMT</pubDate>
  <description>&lt;p&gt;Shares &lt;b&gt;rise&lt;/b&gt; after hours&lt;/p&gt;</description></item>
<item><title>Oil slips</title><link>https://n.example/2</link></item>
</channel></rss>"""

ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Wire</title>
<entry><id>urn:wire:7</id><title>Tesla recalls cars</title>
  <link rel="alternate" href="https://w.example/7"/><updated>2024-03-02T08:00:00Z</updated>
  <summary>Recall covers 2m vehicles.</summary></entry>
</feed>"""

BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>
<rss><channel><item><title>&lol2;</title></item></channel></rss>"""


def test_rss_and_atom_entries() -> None:
    rss = [e.fields for e in feed_entries(parse_xml(RSS))]
    assert [(f.source_id, f.title, f.url) for f in rss] == [
        ("n-1", "$AAPL beats estimates", "https://n.example/1"),
        ("https://n.example/2", "Oil slips", "https://n.example/2"),
    ]
    assert rss[0].text == "$AAPL beats estimates. <p>Shares <b>rise</b> after hours</p>"
    assert rss[0].time == "Fri, 01 Mar 2024 12:00:00 GMT"
    atom = [e.fields for e in feed_entries(parse_xml(ATOM))]
    assert [(f.source_id, f.text, f.time) for f in atom] == [
        ("urn:wire:7", "Tesla recalls cars. Recall covers 2m vehicles.", "2024-03-02T08:00:00Z")
    ]


@pytest.mark.parametrize("body", [BOMB, b"<rss><channel>", b"\x00\x01", b""])
def test_dtds_and_broken_xml_are_refused(body: bytes) -> None:
    with pytest.raises(FeedError):
        parse_xml(body)


def test_backoff_doubles_per_failure_up_to_the_cap() -> None:
    assert [backoff_s(10, n, 100) for n in range(6)] == [10, 20, 40, 80, 100, 100]


class FeedServer:
    """Serves feeds by path, honours If-None-Match, and records what it was asked."""

    def __init__(self) -> None:
        self.feeds: dict[str, bytes] = {"/rss": RSS, "/atom": ATOM, "/bomb": BOMB}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("If-None-Match")))
                body = server.feeds.get(self.path)
                if body is None:
                    self.send_response(500)
                    self.end_headers()
                    return
                etag = f'"{hash(body) & 0xFFFF:x}"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def hits(self, path: str) -> list[str | None]:
        return [etag for p, etag in self.requests if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def feeds() -> Iterator[FeedServer]:
    server = FeedServer()
    yield server
    server.close()


def wait_until(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.mark.integration
def test_polling_publishes_once_and_uses_conditional_requests(
    ingest_settings: IngestSettings, readers: Readers, feeds: FeedServer
) -> None:
    options = ingest_settings.ingest.model_copy(update={"rss_max_backoff_s": 60.0})
    specs = [
        FeedSpec(url=f"{feeds.url}/rss", name="markets", interval_s=0.1),
        FeedSpec(url=f"{feeds.url}/atom", name="wire", interval_s=0.1),
        FeedSpec(url=f"{feeds.url}/bomb", name="bomb", interval_s=0.1),
        FeedSpec(url=f"{feeds.url}/down", name="down", interval_s=0.1),
    ]
    runtime = start_runtime(ingest_settings)
    connector = RssConnector(
        specs,
        builder_for=lambda source: make_builder(options, source),
        publisher=runtime.publisher,
        options=options,
    )
    stop = threading.Event()
    thread = threading.Thread(target=connector.run, args=(stop,))
    thread.start()
    try:
        docs = readers.docs(3, settle_s=0)
        # Validators are kept once the items are acknowledged: later polls are 304s.
        wait_until(lambda: len(feeds.hits("/rss")) >= 3)
        # A new item appears: only it is published.
        feeds.feeds["/rss"] = RSS.replace(
            b"<channel><title>Markets</title>",
            b"<channel><title>Markets</title><item><title>Gold up</title><guid>n-3</guid></item>",
        )
        docs = readers.docs(4, settle_s=0.5)
        wait_until(lambda: len(feeds.hits("/down")) >= 3)
    finally:
        stop.set()
        thread.join(10)
        runtime.close()
    assert sorted(d.title for d in docs) == [
        "$AAPL beats estimates",
        "Gold up",
        "Oil slips",
        "Tesla recalls cars",
    ]
    first = next(d for d in docs if d.source_id == "n-1")
    assert (first.source, first.url) == ("rss:markets", "https://n.example/1")
    assert first.text == "$AAPL beats estimates. Shares rise after hours"
    assert first.published_at.ToJsonString() == "2024-03-01T12:00:00Z"
    assert first.entities[0].id == "AAPL"
    rss_hits = feeds.hits("/rss")
    assert rss_hits[0] is None
    assert rss_hits[1] is not None  # conditional from the second poll on
    # The failing feeds backed off (0.1 s, 0.2 s, 0.4 s ...) instead of being hammered.
    assert len(feeds.hits("/down")) < len(rss_hits)
    assert "processing_error" in reasons(readers.dead(1))
