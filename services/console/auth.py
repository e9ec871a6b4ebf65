"""Who may use the console: API keys, login sessions, and which callers are operators.

A key arrives as ``Authorization: Bearer <key>`` (scripts) or is exchanged once at
the login form for a session cookie (the page), so the key itself is never kept in
the browser. Keys are compared in constant time (:class:`sentiflow.apikeys.KeyRing`)
and a caller is known by its key's user; sessions live in memory only, so a restart
logs everyone out, which is acceptable for a tool a browser re-logs into.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sentiflow.apikeys import ApiKey, KeyRing

SESSION_COOKIE = "sentiflow_console"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller; ``key`` is what it authenticated with (None when open),
    kept to forward to the feedback service and out of the repr."""

    name: str
    key: str | None = field(repr=False)
    operator: bool


def bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return None


class Access:
    def __init__(
        self,
        api_keys: Sequence[ApiKey],
        operator_keys: Sequence[ApiKey],
        session_ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = KeyRing(api_keys)
        self._operator_keys = KeyRing(operator_keys)
        self._ttl = session_ttl_s
        self._clock = clock
        self._sessions: dict[str, tuple[Caller, float]] = {}
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        """No keys configured: everyone is an anonymous operator (a dev machine)."""
        return not self._keys and not self._operator_keys

    def check_key(self, key: str) -> Caller | None:
        if self.open:
            return Caller("anonymous", None, operator=True)
        operator = self._operator_keys.identify(key)
        if operator is not None:
            return Caller(operator, key, operator=True)
        reader = self._keys.identify(key)
        return Caller(reader, key, operator=False) if reader is not None else None

    def login(self, key: str) -> tuple[str, Caller] | None:
        caller = self.check_key(key)
        if caller is None:
            return None
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            self._sessions = {t: s for t, s in self._sessions.items() if s[1] > now}
            self._sessions[token] = (caller, now + self._ttl)
        return token, caller

    def logout(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(token, None)

    def authenticate(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> Caller | None:
        if self.open:
            return Caller("anonymous", None, operator=True)
        key = bearer(headers.get("Authorization"))
        if key is not None:
            return self.check_key(key)
        token = cookies.get(SESSION_COOKIE)
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if session[1] <= self._clock():
                del self._sessions[token]
                return None
            return session[0]
