"""``sentiflow ingest``: connectors as subcommands, options overriding the settings.

Only argparse here, so building the top-level parser stays cheap; the wiring is
imported when a connector actually runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONNECTORS = ("files", "http", "rss", "stdin")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="source name on every document (default per connector)")
    parser.add_argument(
        "--no-dedup", dest="dedup", action="store_false", default=None, help="publish duplicates"
    )
    parser.add_argument(
        "--redact",
        action="store_true",
        default=None,
        help="replace e-mails, phones, IBANs, card numbers by placeholders",
    )
    parser.add_argument("--max-text-chars", type=int, help="length limit in code points")
    parser.add_argument("--over-limit", choices=["truncate", "reject"])
    parser.add_argument("--text-field", help="input field holding the text (default: text)")
    parser.add_argument("--id-field", help="input field holding the channel's id (default: id)")
    parser.add_argument("--time-field", help="input field holding the publication time")
    parser.add_argument("--source-field", help="input field naming a per-record source")
    parser.add_argument(
        "--entities-file", type=Path, help="JSON list of {id, names, aliases, case_sensitive}"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=None,
        help="TOML settings file (the same as SENTIFLOW_CONFIG_FILE=FILE); "
        "environment variables and these options override it",
    )


class _FeedURLs(argparse.Action):
    """Feed URLs given as arguments join those given with ``--feed``, in the order
    written, so ``rss URL`` and ``rss --feed URL`` mean the same."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        given = [values] if isinstance(values, str) else list(values or [])
        namespace.feed = [*(getattr(namespace, "feed", None) or []), *given]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ingest`` subcommand's own subcommands (one per connector) and options."""
    sub = parser.add_subparsers(dest="connector", required=True, metavar="CONNECTOR")

    files = sub.add_parser(
        "files", help="JSONL/CSV files: a file or a folder, once or following appends"
    )
    files.add_argument("path", type=Path, help="a .jsonl/.ndjson/.csv file or a folder of them")
    files.add_argument("--follow", action="store_true", help="keep reading appends and new files")
    files.add_argument("--format", choices=["auto", "jsonl", "csv"], help="default: by extension")
    files.add_argument("--encoding", help="declared file charset (ASCII-compatible)")
    files.add_argument("--state-file", type=Path, help="checkpoint file (default under state_dir)")
    files.add_argument(
        "--from-start",
        action="store_true",
        help="ignore the checkpoint (dedup still drops what was published)",
    )
    files.add_argument("--no-progress", dest="progress", action="store_false", default=True)
    files.add_argument(
        "--workers", type=int, help="processes building documents (bulk loads on several cores)"
    )
    _common(files)

    http = sub.add_parser("http", help="HTTP endpoint: POST /v1/documents (one or a batch)")
    http.add_argument("--host", help="bind address (default 0.0.0.0)")
    http.add_argument("--port", type=int, help="port (default 8090)")
    _common(http)

    rss = sub.add_parser("rss", help="poll RSS/Atom feeds with conditional requests")
    rss.add_argument(
        "urls",
        nargs="*",
        metavar="URL",
        action=_FeedURLs,
        default=argparse.SUPPRESS,
        help="feed URLs (default: the feeds in the settings, SENTIFLOW_INGEST__FEEDS)",
    )
    rss.add_argument(
        "--feed", metavar="URL", action="append", default=[], help="a feed URL (repeatable)"
    )
    rss.add_argument("--interval", type=float, help="seconds between polls of each feed")
    _common(rss)

    stdin = sub.add_parser("stdin", help="one document per line on standard input")
    stdin.add_argument(
        "--format", choices=["text", "jsonl"], default="text", help="plain text or JSON lines"
    )
    _common(stdin)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ingest options the command line sets (None means "not given")."""
    out: dict[str, Any] = {}
    simple = {
        "source": "source",
        "dedup": "dedup",
        "redact": "redact",
        "max_text_chars": "max_text_chars",
        "over_limit": "over_limit",
        "entities_file": "entities_file",
        "host": "http_host",
        "port": "http_port",
        "encoding": "file_encoding",
        "workers": "workers",
    }
    for arg, option in simple.items():
        value = getattr(args, arg, None)
        if value is not None:
            out[option] = value
    out["connector"] = args.connector
    if args.connector == "files":
        out.update(path=args.path, follow=args.follow, from_start=args.from_start)
        out["progress"] = args.progress and sys.stderr.isatty()
        if args.state_file is not None:
            out["state_file"] = args.state_file
        if args.format is not None:
            out["file_format"] = args.format
    if args.connector == "stdin":
        out["stdin_format"] = args.format
    return out


def field_overrides(args: argparse.Namespace) -> dict[str, str]:
    names = {"text_field": "text", "id_field": "id", "time_field": "time", "source_field": "source"}
    return {f: getattr(args, a) for a, f in names.items() if getattr(args, a, None) is not None}
