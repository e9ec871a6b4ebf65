"""The ``sentiflow ingest`` command line: connectors, and options over the settings."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from services.ingest.config import IngestSettings
from services.ingest.main import run, settings_from_args
from stack.cli import build_parser


def settings(*argv: str) -> IngestSettings:
    return settings_from_args(build_parser().parse_args(["ingest", *argv]), IngestSettings())


def test_help_lists_every_connector(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("files", "http", "rss", "stdin"))


def test_file_options_override_the_settings() -> None:
    options = settings(
        "files",
        "in/",
        "--follow",
        "--text-field",
        "body",
        "--id-field",
        "tweet_id",
        "--no-dedup",
        "--redact",
        "--over-limit",
        "reject",
        "--workers",
        "2",
        "--source",
        "seed",
    ).ingest
    assert (options.fields.text, options.fields.id, options.fields.time) == (
        "body",
        "tweet_id",
        "published_at",
    )
    assert (options.dedup, options.redact, options.over_limit) == (False, True, "reject")
    assert (options.workers, options.source) == (2, "seed")


def test_rss_feeds_and_interval() -> None:
    options = settings("rss", "--feed", "http://a/feed", "--feed", "http://b/x", "--interval", "30")
    assert [(f.url, f.interval_s) for f in options.ingest.feeds] == [
        ("http://a/feed", 30.0),
        ("http://b/x", 30.0),
    ]


def test_invalid_values_fail_like_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_text_chars"):
        settings("stdin", "--max-text-chars", "0")


def test_defaults_leave_the_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIFLOW_INGEST__MAX_TEXT_CHARS", "123")
    assert settings("files", str(Path("x.jsonl"))).ingest.max_text_chars == 123


def test_the_command_line_names_the_connector_and_what_it_reads() -> None:
    files = settings("files", "in/", "--follow", "--from-start", "--state-file", "s.json")
    assert files.ingest.connector == "files"
    assert (files.ingest.path, files.ingest.state_file) == (Path("in/"), Path("s.json"))
    assert files.ingest.follow
    assert files.ingest.from_start
    assert settings("stdin", "--format", "jsonl").ingest.stdin_format == "jsonl"
    assert settings("http").ingest.connector == "http"


def test_the_connector_can_come_from_the_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a container: ``python -m services.ingest.main`` with only the environment."""
    monkeypatch.setenv("SENTIFLOW_INGEST__CONNECTOR", "files")
    monkeypatch.setenv("SENTIFLOW_INGEST__PATH", "/data/in")
    monkeypatch.setenv("SENTIFLOW_INGEST__FOLLOW", "true")
    options = IngestSettings().ingest
    assert (options.connector, options.path, options.follow) == ("files", Path("/data/in"), True)


def test_files_without_a_path_is_a_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    options = IngestSettings().ingest.model_copy(update={"connector": "files", "path": None})
    assert run(IngestSettings().model_copy(update={"ingest": options}), threading.Event()) == 2
    assert "no path to read" in caplog.text
