"""The registry signing key every test process shares, and records signed with it."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from sentiflow_client.v1 import events_pb2

from sentiflow.config import RegistrySettings
from sentiflow.models.signing import sign

TEST_SIGNING_KEY = SecretStr("test-registry-signing-key")
OTHER_SIGNING_KEY = SecretStr("someone-elses-key")


def registry_settings(uri: Path | str = "var/registry", **fields: object) -> RegistrySettings:
    """Registry settings at ``uri`` that sign and verify with the tests' key."""
    return RegistrySettings(uri=str(uri), signing_key=TEST_SIGNING_KEY, **fields)  # type: ignore[arg-type]


def signed(record: events_pb2.ModelVersion) -> events_pb2.ModelVersion:
    """``record`` signed with the tests' key (in place; returned for chaining)."""
    return sign(record, TEST_SIGNING_KEY)
