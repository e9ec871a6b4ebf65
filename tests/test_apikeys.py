"""The one API-key shape: how it is configured, how it stays secret, how keys are checked."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from sentiflow.apikeys import ApiKeys, KeyRing, api_keys, key_name
from sentiflow.config import Settings
from sentiflow.grpcserver import api_key_from_metadata

SECRET = "s3cret-Key_1"


class Section(BaseModel):
    api_keys: ApiKeys = []


class SectionSettings(Settings):
    section: Section = Section()


def test_entries_are_named_keys_or_bare_keys_known_by_a_derived_name() -> None:
    keys = api_keys([{"key": SECRET, "user": "alice"}, "bare-key", {"key": "other"}])
    assert [(k.key.get_secret_value(), k.user) for k in keys] == [
        (SECRET, "alice"),
        ("bare-key", key_name("bare-key")),
        ("other", key_name("other")),
    ]
    assert key_name("bare-key").startswith("key:")
    assert "bare" not in key_name("bare-key")


def test_one_user_may_hold_several_keys() -> None:
    keys = api_keys([{"key": "old", "user": "alice"}, {"key": "new", "user": "alice"}])
    ring = KeyRing(keys)
    assert (ring.identify("old"), ring.identify("new")) == ("alice", "alice")


def test_the_environment_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SENTIFLOW_SECTION__API_KEYS", f'[{{"key": "{SECRET}", "user": "analytics-team"}}]'
    )
    (only,) = SectionSettings().section.api_keys
    assert (only.key.get_secret_value(), only.user) == (SECRET, "analytics-team")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({SECRET: "alice"}, "not a mapping"),
        (SECRET, "a JSON list"),
        ([SECRET, SECRET], "listed twice"),
        ([{"key": SECRET, "user": "a"}, {"key": SECRET, "user": "b"}], "listed twice"),
        ([f"{SECRET} "], "printable ASCII"),
        ([f"{SECRET}é"], "printable ASCII"),
        ([""], "printable ASCII"),
        ([{"key": SECRET, "user": ""}], "at least 1 character"),
        ([{"kye": SECRET, "user": "alice"}], "Field required"),
        ([{"key": SECRET, "user": "alice", "role": SECRET}], "Extra inputs"),
    ],
)
def test_bad_configurations_are_refused_without_quoting_the_key(value: object, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Section.model_validate({"api_keys": value})
    assert says in str(caught.value)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.errors())


def test_keys_never_show_in_reprs_or_dumps() -> None:
    section = Section(api_keys=api_keys([{"key": SECRET, "user": "alice"}]))
    ring = KeyRing(section.api_keys)
    for shown in (repr(section), str(section), section.model_dump_json(), repr(ring)):
        assert SECRET not in shown
    assert "alice" in repr(ring)


def test_a_presented_key_is_matched_as_bytes_and_anything_else_is_a_mismatch() -> None:
    ring = KeyRing(api_keys([{"key": SECRET, "user": "alice"}, {"key": "k2", "user": "bob"}]))
    assert ring.identify(SECRET) == "alice"
    assert ring.identify(SECRET.encode()) == "alice"
    assert ring.identify("k2") == "bob"
    for other in (None, "", "k", "k2 ", "ключ", "k2\udc80", b"\xff\xfe", SECRET.upper()):
        assert ring.identify(other) is None
    assert not KeyRing([])
    assert ring


def test_keys_are_read_from_grpc_metadata_as_sent() -> None:
    assert api_key_from_metadata([("x-api-key", SECRET)]) == SECRET
    assert api_key_from_metadata([("other", "x"), ("authorization", f"Bearer {SECRET}")]) == (
        SECRET.encode()
    )
    assert api_key_from_metadata([("authorization", b"bearer \xff\xfe")]) == b"\xff\xfe"
    assert api_key_from_metadata([("authorization", "Basic abc")]) is None
    assert api_key_from_metadata([("trace-bin", b"\xff"), ("x-api-key", b"k2")]) == b"k2"
    assert api_key_from_metadata([]) is None
