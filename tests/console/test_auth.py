"""API keys, sessions and operators; malformed keys at every console entry point.

The entry points are driven over a raw socket against the console's own app (its
middlewares and server settings, no broker behind it), since an HTTP client refuses
to send most of what is tried here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from sentiflow.apikeys import api_keys, key_name
from sentiflow.logs import JsonFormatter
from services.console.auth import SESSION_COOKIE, Access, bearer
from services.console.config import ConsoleOptions, ConsoleSettings
from services.console.main import build
from services.console.web import SERVER_LOG, redact_refusal


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def access(clock: Clock | None = None) -> Access:
    return Access(
        api_keys(["reader-key"]), api_keys(["ops-key"]), session_ttl_s=60, clock=clock or Clock()
    )


def test_without_keys_everyone_is_an_anonymous_operator() -> None:
    open_access = Access([], [], session_ttl_s=60)
    assert open_access.open
    caller = open_access.authenticate({}, {})
    assert caller is not None
    assert (caller.name, caller.operator, caller.key) == ("anonymous", True, None)


def test_bearer_keys_and_operator_keys() -> None:
    a = access()
    assert not a.open
    assert a.authenticate({}, {}) is None
    assert a.authenticate({"Authorization": "Bearer wrong"}, {}) is None
    reader = a.authenticate({"Authorization": "Bearer reader-key"}, {})
    assert reader is not None
    assert not reader.operator
    assert reader.key == "reader-key"
    assert reader.name == key_name("reader-key")
    assert "reader" not in reader.name
    ops = a.authenticate({"Authorization": "bearer ops-key"}, {})
    assert ops is not None
    assert ops.operator


def test_a_named_key_is_known_by_its_user_and_stays_out_of_the_repr() -> None:
    a = Access(
        api_keys([{"key": "alice-key", "user": "alice"}]),
        api_keys([{"key": "root-key", "user": "ops"}]),
        session_ttl_s=60,
    )
    alice = a.authenticate({"Authorization": "Bearer alice-key"}, {})
    assert alice is not None
    assert (alice.name, alice.operator) == ("alice", False)
    ops = a.check_key("root-key")
    assert ops is not None
    assert (ops.name, ops.operator) == ("ops", True)
    assert "alice-key" not in repr(alice)
    assert "root-key" not in repr(ops)


STRANGE_KEYS = (
    "reader-kéy",
    "ключ",
    "reader-key\udc80",  # a lone surrogate: what undecodable header bytes become
    "",
    "reader-key\x00",
    "reader-key\r\nX-Injected: 1",
    "reader-key" * 10_000,  # 100 KB
)


def test_a_key_no_client_was_given_is_refused_not_an_error() -> None:
    a = access()
    for strange in STRANGE_KEYS:
        assert a.check_key(strange) is None
        assert a.login(strange) is None
        assert a.authenticate({"Authorization": f"Bearer {strange}"}, {}) is None


def test_a_garbage_session_cookie_is_no_session() -> None:
    a = access()
    assert a.login("reader-key") is not None  # one real session exists
    for garbage in (*STRANGE_KEYS, '"unterminated', "%00%ff", "reader-key"):
        assert a.authenticate({}, {SESSION_COOKIE: garbage}) is None
        a.logout(garbage)


def test_sessions_expire_and_log_out() -> None:
    clock = Clock()
    a = access(clock)
    assert a.login("nope") is None
    session = a.login("reader-key")
    assert session is not None
    token, caller = session
    assert a.authenticate({}, {SESSION_COOKIE: token}) == caller
    assert a.authenticate({}, {SESSION_COOKIE: "forged"}) is None
    clock.now = 61
    assert a.authenticate({}, {SESSION_COOKIE: token}) is None
    token2, _ = a.login("ops-key") or ("", None)
    a.logout(token2)
    assert a.authenticate({}, {SESSION_COOKIE: token2}) is None


def test_bearer_parsing() -> None:
    assert bearer("Bearer abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer ") is None
    assert bearer("Bearer") is None
    assert bearer("Bearerabc") is None
    assert bearer(None) is None


# -- what the log keeps of a request the HTTP parser refused ----------------------------

MARK = "k3y-material-7f3a"


def _parser_record(exc: Exception, level: int = logging.ERROR) -> logging.LogRecord:
    """A record as aiohttp's connection handler writes one for a refused request."""
    try:
        raise exc
    except Exception:
        exc_info = sys.exc_info()
    return logging.LogRecord(
        SERVER_LOG.name,
        level,
        __file__,
        1,
        "Error handling request from %s",
        ("10.0.0.9",),
        exc_info,
    )


def _rendered(record: logging.LogRecord) -> str:
    return logging.Formatter().format(record) + JsonFormatter("console").format(record)


@pytest.mark.parametrize(
    "exc",
    [
        BadHttpMessage(f"Invalid header value char:\n\n  b'Authorization: Bearer {MARK}\\x00'"),
        LineTooLong(f"Bearer {MARK}KKKK...", "8190"),
    ],
)
def test_a_refused_request_is_logged_without_what_it_quoted(exc: Exception) -> None:
    assert MARK in _rendered(_parser_record(exc))  # what aiohttp would have logged
    record = _parser_record(exc)
    redact_refusal(record)
    assert MARK not in _rendered(record)
    assert record.getMessage() == (
        f"refused a malformed HTTP request from 10.0.0.9: {type(exc).__name__} (HTTP 400)"
    )
    assert record.levelno == logging.WARNING  # the client's fault, not the console's
    quiet = _parser_record(exc, logging.DEBUG)
    redact_refusal(quiet)
    assert quiet.levelno == logging.DEBUG


def test_a_handler_error_is_logged_as_it_was() -> None:
    record = _parser_record(RuntimeError("a bug, with its traceback"))
    redact_refusal(record)
    assert record.exc_info is not None
    assert "a bug, with its traceback" in _rendered(record)


# -- every entry point over a socket ----------------------------------------------------


@pytest.fixture(scope="module")
def console_port() -> Iterator[int]:
    """The console's app, served as ``services.console.main`` serves it, with keys."""
    settings = ConsoleSettings(
        console=ConsoleOptions(
            host="127.0.0.1",
            port=0,
            api_keys=api_keys(["reader-key"]),
            operator_keys=api_keys(["ops-key"]),
        )
    )
    console = build(settings)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(console.app(), shutdown_timeout=2.0, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
        console.gateway.close()


def _exchange(port: int, raw: bytes) -> tuple[int, bytes]:
    """Send raw bytes as one request; the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(raw)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _get(headers: bytes) -> bytes:
    return b"GET /api/me HTTP/1.1\r\nHost: console\r\nConnection: close\r\n" + headers + b"\r\n"


def _login(body: bytes) -> bytes:
    return (
        b"POST /api/login HTTP/1.1\r\nHost: console\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body


def _login_key(key: str) -> bytes:
    return _login(json.dumps({"key": key}).encode())


def test_a_good_key_works_over_the_socket(console_port: int) -> None:
    status, body = _exchange(console_port, _get(b"Authorization: Bearer reader-key\r\n"))
    assert (status, json.loads(body)["name"]) == (200, key_name("reader-key"))
    status, body = _exchange(console_port, _login_key("ops-key"))
    assert (status, json.loads(body)["operator"]) == (200, True)


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("Authorization: Bearer reader-kéy".encode(), 401),  # UTF-8
        (b"Authorization: Bearer reader-k\xe9y", 401),  # Latin-1: not UTF-8 at all
        (b"Authorization: Bearer \xff\xfe", 401),
        (b"Authorization: Bearer ", 401),
        (b"Authorization: Bearer", 401),
        (b"Authorization: Bearer reader-key reader-key", 401),
        (b"Authorization: Bearer " + b"k" * 8000, 401),  # within aiohttp's line limit
        (b"Authorization: Bearer " + b"k" * 100_000, 400),  # the parser's limit
        (b"Authorization: Bearer reader-key\x00", 400),  # no valid header carries a NUL
        (b"Authorization: Bearer reader\rkey", 400),
    ],
)
def test_a_malformed_bearer_key_is_refused(console_port: int, header: bytes, status: int) -> None:
    assert _exchange(console_port, _get(header + b"\r\n"))[0] == status


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (json.dumps({"key": "reader-kéy"}).encode(), 401),
        (json.dumps({"key": "reader-kéy"}, ensure_ascii=False).encode(), 401),
        (b'{"key": "reader-key\\udc80"}', 401),  # a lone surrogate
        (b'{"key": "reader-key\\u0000"}', 401),
        (json.dumps({"key": "k" * 60_000}).encode(), 401),
        (json.dumps({"key": "k" * 100_000}).encode(), 413),  # over the console's body limit
        (b'{"key": ""}', 400),
        (b'{"key": null}', 400),
        (b'{"key": ["reader-key"]}', 400),
        (b'{"key": "reader-key\x00"}', 400),  # a raw control character: not JSON
        (b'{"key": "reader-k\xe9y"}', 400),  # not UTF-8
        (b'{"key": ' + b"1" * 5000 + b"}", 400),  # over Python's integer digit limit
        (b'{"key": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", 400),  # deeper than json goes
        (b"key=reader-key", 400),  # a form post, not JSON
    ],
)
def test_a_malformed_login_key_is_refused(console_port: int, body: bytes, status: int) -> None:
    assert _exchange(console_port, _login(body))[0] == status


@pytest.mark.parametrize(
    ("cookie", "status"),
    [
        (b"forged-token", 401),
        (b'"unterminated', 401),
        (b"\xff\xfe", 401),
        (b"%00%ff\\x", 401),
        (b"a" * 8000, 401),
        (b"x; ;;==; " + SESSION_COOKIE.encode() + b"=", 401),
        (b"abc\x00", 400),
    ],
)
def test_a_garbage_session_cookie_is_refused(console_port: int, cookie: bytes, status: int) -> None:
    header = b"Cookie: " + SESSION_COOKIE.encode() + b"=" + cookie + b"\r\n"
    assert _exchange(console_port, _get(header))[0] == status
    logout = b"POST /api/logout HTTP/1.1\r\nHost: console\r\nConnection: close\r\n"
    assert _exchange(console_port, logout + header + b"\r\n")[0] == status


def test_no_key_material_reaches_the_log(
    console_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = MARK.encode()
    refused_by_the_parser = [
        _get(b"Authorization: Bearer " + key + b"\x00\r\n"),
        _get(b"Authorization: Bearer " + key + b"\rmore\r\n"),
        _get(b"Authorization: Bearer " + key + b"K" * 100_000 + b"\r\n"),
        _get(b"Cookie: " + SESSION_COOKIE.encode() + b"=" + key + b"\x00\r\n"),
        # A chunked login whose bad chunk is the key itself.
        b"POST /api/login HTTP/1.1\r\nHost: console\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'8\r\n{"key": \r\n' + key + b"\r\n0\r\n\r\n",
    ]
    refused_by_the_console = [
        _get(b"Authorization: Bearer " + key + "é".encode() + b"\r\n"),
        _login(b'{"key": "' + key + b'\\u0000"}'),
    ]
    for raw in refused_by_the_parser:
        assert _exchange(console_port, raw)[0] == 400
    for raw in refused_by_the_console:
        assert _exchange(console_port, raw)[0] == 401
    rendered = [_rendered(r) for r in caplog.records]
    assert not [line for line in rendered if MARK in line]
    refusals = [r for r in caplog.records if r.name == SERVER_LOG.name]
    assert len(refusals) == len(refused_by_the_parser)
    assert all(r.getMessage().startswith("refused a malformed HTTP request") for r in refusals)
