"""The ``sentiflow`` command line: version, service help, --config, ``ingest rss URL``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path

import pytest
from sentiflow_client.v1 import events_pb2

from sentiflow.config import Settings
from sentiflow.readback import read_topic
from services.ingest.config import IngestSettings
from services.ingest.main import settings_from_args
from stack.cli import build_parser
from stack.servicehelp import SERVICES
from tests.stack.conftest import Cli


def test_version_is_the_installed_distribution(
    cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("--version")
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"sentiflow {version('sentiflow')}"


@pytest.mark.parametrize(
    "command", ["inference", "alerting", "feedback", "feedback-aggregator", "trainer", "console"]
)
def test_service_help_lists_its_settings_and_config(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    out = capsys.readouterr().out
    doc = SERVICES[command]
    assert "--config FILE" in out
    assert doc.description.split()[0] in out
    assert f"SENTIFLOW_{doc.section.upper()}__" in out
    assert "SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:19092" in out


def test_service_help_shows_defaults_choices_and_nested_sections(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["inference", "--help"])
    inference = capsys.readouterr().out
    engine = next(line for line in inference.splitlines() if "__ENGINE=" in line)
    assert engine.split()[0] == "SENTIFLOW_INFERENCE__ENGINE=auto"
    assert "|onnx-int8-static|" in engine.split()[1]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["alerting", "--help"])
    assert "SENTIFLOW_ALERTING__DETECTOR__WINDOW_S=300" in capsys.readouterr().out


def test_config_file_reaches_the_settings(
    cli: Cli, settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the file names the broker and the topics; the command finds both."""
    config = tmp_path / "sentiflow.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{settings.kafka.bootstrap_servers}"\n'
        f'[topics]\nprefix = "{settings.topics.prefix}"\n'
    )
    assert cli("dlq", "list", "--config", str(config)) == 0
    assert capsys.readouterr().out.strip() == f"no dead letters on {settings.topics.prefix}docs.dlq"


def test_a_missing_config_file_is_an_error(
    cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("topics", "lag", "--config", str(tmp_path / "nope.toml")) == 2
    assert "no such file" in capsys.readouterr().err


def rss_settings(*argv: str) -> IngestSettings:
    return settings_from_args(build_parser().parse_args(["ingest", "rss", *argv]), IngestSettings())


def test_rss_urls_as_arguments_or_options() -> None:
    assert [f.url for f in rss_settings("https://example.com/feed.xml").ingest.feeds] == [
        "https://example.com/feed.xml"
    ]
    both = rss_settings("http://a/1", "http://c/3", "--feed", "http://b/2", "--interval", "5")
    assert [(f.url, f.interval_s) for f in both.ingest.feeds] == [
        ("http://a/1", 5.0),
        ("http://c/3", 5.0),
        ("http://b/2", 5.0),
    ]


RSS = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Markets</title>
<item><title>$AAPL beats estimates</title><guid>n-1</guid></item>
<item><title>$TSLA recalls cars</title><guid>n-2</guid></item>
</channel></rss>"""


@pytest.fixture
def feed_url() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            self.send_header("Content-Length", str(len(RSS)))
            self.end_headers()
            self.wfile.write(RSS)

        def log_message(self, format: str, *args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/feed.xml"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.integration
def test_ingest_rss_takes_the_feed_url_as_an_argument(
    cli_env: Settings, feed_url: str, tmp_path: Path
) -> None:
    """``sentiflow ingest rss URL`` as the README writes it, in its own process."""
    env = {
        **os.environ,
        "SENTIFLOW_INGEST__STATE_DIR": str(tmp_path / "state"),
        "SENTIFLOW_LOG_FORMAT": "console",
    }
    command = Path(sys.executable).with_name("sentiflow")
    proc = subprocess.Popen(
        [str(command), "ingest", "rss", feed_url, "--interval", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        topics = cli_env.topics
        records = read_topic(cli_env.kafka, topics.full(topics.docs_raw), expect=2, timeout_s=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output.decode(errors="replace")
    titles = set()
    for record in records:
        doc = events_pb2.Document()
        doc.ParseFromString(record.value() or b"")
        titles.add(doc.title)
    assert titles == {"$AAPL beats estimates", "$TSLA recalls cars"}
