"""API keys, sessions and operators."""

from __future__ import annotations

from sentiflow.apikeys import api_keys, key_name
from services.console.auth import SESSION_COOKIE, Access, bearer


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


def test_a_key_no_client_was_given_is_refused_not_an_error() -> None:
    a = access()
    for strange in ("reader-kéy", "ключ", "reader-key\udc80", "", "reader-key\x00"):
        assert a.check_key(strange) is None
        assert a.login(strange) is None
        assert a.authenticate({"Authorization": f"Bearer {strange}"}, {}) is None


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
    assert bearer(None) is None
