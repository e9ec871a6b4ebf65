"""A local HTTP server that plays a webhook receiver, scripted per request.

With a ``secret`` it is a receiver as the README tells users to write one: each
delivery is verified with ``standardwebhooks.Webhook.verify`` when it arrives (the
verifier's replay window is measured against that moment), and one that fails is
answered 401 and recorded with the verifier's reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from multidict import CIMultiDict, CIMultiDictProxy
from standardwebhooks import Webhook, WebhookVerificationError


def refusal(secret: str, headers: dict[str, str], body: bytes) -> str | None:
    """Why the library's verifier refuses the delivery; None when it accepts it."""
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
    except (WebhookVerificationError, ValueError) as exc:  # ValueError: a malformed header
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass(frozen=True)
class Received:
    path: str
    headers: CIMultiDictProxy[str]  # HTTP names are case-insensitive
    body: bytes
    verified: bool | None = None  # None: the receiver has no secret to check with
    refused: str = ""


@dataclass
class Receiver:
    """Answers each POST with the next scripted status (then ``default``); with a
    ``secret``, a delivery the verifier refuses gets 401 and leaves the script alone."""

    script: list[int] = field(default_factory=list)
    default: int = 200
    delay_s: float = 0.0
    extra_headers: dict[str, str] = field(default_factory=dict)
    secret: str | None = None
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def take(self, path: str, headers: CIMultiDictProxy[str], body: bytes) -> int:
        why = None if self.secret is None else refusal(self.secret, dict(headers), body)
        verified = None if self.secret is None else why is None
        with self._lock:
            self.received.append(Received(path, headers, body, verified, why or ""))
            if verified is False:
                return 401
            return self.script.pop(0) if self.script else self.default


@contextmanager
def serving(receiver: Receiver) -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            headers = CIMultiDictProxy(CIMultiDict(self.headers.items()))
            status = receiver.take(self.path, headers, body)
            if receiver.delay_s:
                time.sleep(receiver.delay_s)
            self.send_response(status)
            for name, value in receiver.extra_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
