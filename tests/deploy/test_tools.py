"""A validator that is not installed fails the deployment checks in CI, skips elsewhere."""

from __future__ import annotations

import pytest

from tests.support.deploy import tool


def test_a_missing_validator_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        tool("sentiflow-no-such-validator")


def test_a_missing_validator_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        tool("sentiflow-no-such-validator")


def test_an_installed_validator_is_found() -> None:
    assert tool("python").endswith("python")
