"""Signing model.versions records, so that only key holders can choose what serves.

A record names an artifact and its digest; whoever can write to the topic could
otherwise compute a digest for any directory and have it served. The trainer and the
operator tools (``sentiflow models``, the console) hold a shared HMAC-SHA256 key and
sign a canonical form of every field that decides what is served and how; inference
holds the same key and refuses a record that does not verify.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from pydantic import SecretStr
from sentiflow_client.v1 import events_pb2

SCHEME = "hmac-sha256"
_DOMAIN = "sentiflow.model-version.v1"


class SignatureError(ValueError):
    """A record is unsigned, signed under another scheme, or its signature does not match."""


Key = SecretStr | str | bytes


def _key_bytes(key: Key) -> bytes:
    if isinstance(key, SecretStr):
        key = key.get_secret_value()
    raw = key.encode("utf-8") if isinstance(key, str) else key
    if not raw:
        raise SignatureError("the signing key is empty")
    return raw


def canonical(record: events_pb2.ModelVersion) -> bytes:
    """The bytes a signature covers: every field but the signature itself, in a fixed
    order and encoding, so that signer and verifier never disagree about protobuf
    serialisation details (map order, unknown fields)."""
    fields = {
        "domain": _DOMAIN,
        "model": record.model,
        "version": record.version,
        "parent": record.parent,
        "artifact_uri": record.artifact_uri,
        "sha256": record.sha256,
        "metrics": {k: repr(float(v)) for k, v in sorted(record.metrics.items())},
        "stage": int(record.stage),
        "labels": list(record.labels),
        "created_at": [record.created_at.seconds, record.created_at.nanos],
        "published_at": [record.published_at.seconds, record.published_at.nanos],
        "shadow_share": repr(float(record.shadow_share)),
        "reason": record.reason,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")


def signature(record: events_pb2.ModelVersion, key: Key) -> str:
    """The value of ``record.signature`` for ``record`` under ``key``."""
    mac = hmac.new(_key_bytes(key), canonical(record), hashlib.sha256).hexdigest()
    return f"{SCHEME}:{mac}"


def sign(record: events_pb2.ModelVersion, key: Key) -> events_pb2.ModelVersion:
    """Set ``record.signature``; fields must not change afterwards. Returns ``record``."""
    record.signature = signature(record, key)
    return record


def verify(record: events_pb2.ModelVersion, key: Key) -> None:
    """Raise SignatureError unless ``record`` carries a valid signature under ``key``."""
    if not record.signature:
        raise SignatureError(f"{record.model} {record.version}: the record is not signed")
    scheme, _, _mac = record.signature.partition(":")
    if scheme != SCHEME:
        raise SignatureError(
            f"{record.model} {record.version}: unknown signature scheme {scheme!r}"
        )
    if not hmac.compare_digest(record.signature, signature(record, key)):
        raise SignatureError(
            f"{record.model} {record.version}: the signature does not match this key"
        )
