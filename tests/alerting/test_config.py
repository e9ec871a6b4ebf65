"""Alerting settings from the environment, and the rules they must obey."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from services.alerting.config import AlertingOptions, AlertingSettings
from stack.cli import build_parser

# The Standard Webhooks format: whsec_ and the base64 of 24 to 64 bytes.
SECRET = "whsec_aHVzaC00Mi1odXNoLTQyLWh1c2gtNDItaHVzaC00MiE="


def test_environment_configures_detection_and_webhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIFLOW_ALERTING__DETECTOR__WINDOW_S", "600")
    monkeypatch.setenv("SENTIFLOW_ALERTING__DETECTOR__LONG_WINDOW_S", "1800")
    monkeypatch.setenv("SENTIFLOW_ALERTING__BY_SOURCE", "true")
    monkeypatch.setenv(
        "SENTIFLOW_ALERTING__WEBHOOKS",
        json.dumps([{"url": "https://hooks.example/a?token=t", "secret": SECRET}]),
    )
    options = AlertingSettings().alerting
    config = options.detector
    assert (config.window_s, config.long_window_s, options.by_source) == (600, 1800, True)
    [hook] = options.webhooks
    assert hook.secret is not None
    assert hook.secret.get_secret_value() == SECRET
    assert SECRET.removeprefix("whsec_") not in repr(hook)


@pytest.mark.parametrize(
    "bad",
    [
        {"detector": {"window_s": 301}},  # not a multiple of the hop
        # not a multiple of the window
        {"detector": {"long_window_s": 600, "window_s": 400, "hop_s": 100}},
        {"detector": {"share_floor": 1.5}},
        {"detector": {"no_such_setting": 1}},
        {"webhooks": [{"url": "ftp://example.com/x"}]},
    ],
)
def test_inconsistent_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AlertingOptions.model_validate(bad)


def test_the_cli_has_an_alerting_command() -> None:
    args = build_parser().parse_args(["alerting"])
    assert args.func.__name__ == "_alerting"
