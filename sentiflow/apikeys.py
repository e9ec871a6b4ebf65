"""API keys, one shape for every surface: gRPC metadata, HTTP bearer tokens, the console.

A key set is configured (from a secret) as a JSON list whose entries are either
``{"key": "<key>", "user": "<who>"}`` or a bare ``"<key>"``. The user is the identity a
service knows the caller by: the user a feedback signal is recorded for, the caller
label on gRPC metrics, the name the console shows. A bare key gets a stable name
derived from it (:func:`key_name`), never the key itself.

A mapping such as ``{"<key>": "<who>"}`` is refused rather than guessed at: read the
wrong way round, every user name would become a valid key.

Keys are held as ``SecretStr``, so reprs, logs and settings dumps show asterisks, and
validation errors are built from a masked copy of the input, since pydantic quotes
the input of whatever failed. A presented key is compared as UTF-8 bytes in constant
time against every configured key (:class:`KeyRing`), so a key no client could have
been given (non-ASCII, say) is a mismatch, never an error.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    field_validator,
    model_validator,
)

MAX_KEY_CHARS = 4096


def key_name(secret: str) -> str:
    """A stable, non-secret name for a key, for logs, metrics and the page."""
    return "key:" + hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def sendable(secret: str) -> bool:
    """Whether a client can present the key as it is: printable ASCII with no spaces at
    either end, which is what HTTP headers and gRPC metadata carry unchanged."""
    return (
        0 < len(secret) <= MAX_KEY_CHARS
        and secret == secret.strip()
        and all(" " <= c <= "~" for c in secret)
    )


class ApiKey(BaseModel):
    """One key and the identity it authenticates."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    key: SecretStr
    user: str = Field(min_length=1, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data: Any) -> Any:
        """A bare key, or an entry without a user, is known by its derived name."""
        if isinstance(data, str | SecretStr):
            data = {"key": data}
        if isinstance(data, dict) and "user" not in data:
            secret = data.get("key")
            if isinstance(secret, SecretStr):
                secret = secret.get_secret_value()
            if isinstance(secret, str):
                data = {**data, "user": key_name(secret)}
        return data

    @field_validator("key")
    @classmethod
    def _sendable(cls, value: SecretStr) -> SecretStr:
        if not sendable(value.get_secret_value()):
            raise ValueError(
                f"an API key must be 1 to {MAX_KEY_CHARS} printable ASCII characters "
                "with no space at either end (it travels in a header)"
            )
        return value


def _secret(value: object) -> object:
    return SecretStr(value) if isinstance(value, str) else value


class _Mapping:
    """What a mapping is masked to: its keys may be the API keys."""

    def __repr__(self) -> str:
        return "<a mapping>"


def _masked(value: object) -> object:
    """The configured value with everything that may be a key wrapped in SecretStr."""
    if isinstance(value, dict):
        return _Mapping()
    if not isinstance(value, list | tuple):
        return _secret(value)
    return [
        {k: v if k == "user" else _secret(v) for k, v in item.items()}
        if isinstance(item, dict)
        else _secret(item)
        for item in value
    ]


def _configured(item: object) -> object:
    if isinstance(item, ApiKey):
        return item.key.get_secret_value()
    secret = item.get("key") if isinstance(item, dict) else item
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


def _listed(value: object) -> object:
    """A list of distinct entries (checked on the masked input, which errors quote)."""
    shape = 'API keys are a JSON list: [{"key": "<key>", "user": "<who>"}] or ["<key>"]'
    if isinstance(value, _Mapping):
        raise ValueError(f"{shape}, not a mapping (which side would be the key?)")
    if not isinstance(value, list):
        raise ValueError(shape)
    secrets = [_configured(item) for item in value]
    hashable = [s for s in secrets if isinstance(s, str)]
    if len(set(hashable)) != len(hashable):
        raise ValueError("the same API key is listed twice")
    return value


# Before-validators run last-listed first: the input is masked before anything can
# fail and quote it.
ApiKeys = Annotated[
    list[ApiKey],
    BeforeValidator(_listed),
    BeforeValidator(_masked),
]
"""The settings type of every ``api_keys`` field."""

_ADAPTER: TypeAdapter[list[ApiKey]] = TypeAdapter(ApiKeys)


def api_keys(value: object) -> list[ApiKey]:
    """Keys validated as settings validate them, e.g. ``api_keys({"k1": ...})`` is
    refused and ``api_keys(["k1", {"key": "k2", "user": "ops"}])`` is two keys."""
    return _ADAPTER.validate_python(value)


class KeyRing:
    """The configured keys as bytes, for checking the key a caller presents."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._entries = [(k.key.get_secret_value().encode(), k.user) for k in keys]

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __repr__(self) -> str:
        return f"KeyRing(users={[user for _, user in self._entries]!r})"

    def identify(self, presented: str | bytes | None) -> str | None:
        """The user of the presented key; None for a missing or unknown one.

        Every configured key is compared, so the time taken does not tell which one a
        guess came close to.
        """
        if presented is None:
            return None
        if isinstance(presented, str):
            try:
                presented = presented.encode()
            except UnicodeEncodeError:  # lone surrogates: no configured key has them
                return None
        found: str | None = None
        for secret, user in self._entries:
            if hmac.compare_digest(presented, secret) and found is None:
                found = user
        return found
