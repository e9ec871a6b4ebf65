"""The README's ``sentiflow`` command lines are real, and every command's help lists
its main settings as options.

Every command line in the README's shell blocks is parsed by the real parser (none is
run, except ``--version`` and ``--help``, which are run for real in a subprocess), so
a renamed option or subcommand fails here before it misleads a reader.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sentiflow.config import Settings
from stack.cli import COMMAND_OPTIONS, NO_CONFIG, build_parser, leaf_commands
from stack.servicehelp import BOOTSTRAP_SERVERS, TOPIC_PREFIX
from tests.stack.conftest import Cli

README = Path(__file__).resolve().parents[2] / "README.md"
SHELL_BLOCKS = frozenset({"", "sh", "bash", "shell", "console"})
PROMPTED_BLOCKS = frozenset({"", "console"})
FENCE = re.compile(r"^\s*```(\S*)\s*$")
# Programs that are the sentiflow command: the entry point and its module.
ENTRY_POINTS = (("sentiflow",), ("python", "-m", "stack.cli"), ("python3", "-m", "stack.cli"))
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class ReadmeCommand:
    line: int
    text: str
    argv: tuple[str, ...]

    @property
    def cheap(self) -> bool:
        """Prints and exits: safe to run for real."""
        return any(arg in ("--help", "-h", "--version") for arg in self.argv)

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) of the commands in code blocks, continuations
    joined: every line of a shell block, and the prompted lines (``$ ``) of an
    untagged block, where the rest is output or a diagram."""
    out: list[tuple[int, str]] = []
    language: str | None = None
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        fence = FENCE.match(raw)
        if fence:
            language = None if language is not None else fence.group(1).lower()
            pending = None
            continue
        if language not in SHELL_BLOCKS:
            continue
        line = raw.strip()
        if pending is not None:
            start, line = pending[0], pending[1] + " " + line
        elif line.startswith("$ "):
            start, line = number, line.removeprefix("$ ")
        elif language in PROMPTED_BLOCKS:
            continue
        else:
            start = number
        if line.endswith("\\"):
            pending = (start, line[:-1].rstrip())
            continue
        pending = None
        if line:
            out.append((start, line))
    return out


def _entry_point(words: list[str]) -> tuple[str, ...] | None:
    """The arguments after the sentiflow program at the head of ``words``."""
    while words and ASSIGNMENT.match(words[0]):
        words = words[1:]
    for program in ENTRY_POINTS:
        head = tuple(words[: len(program)])
        if head and Path(head[0]).name == program[0] and head[1:] == program[1:]:
            return tuple(words[len(program) :])
    return None


def commands_in(number: int, line: str) -> list[ReadmeCommand]:
    """The sentiflow invocations on one shell line: at the head of any pipeline stage
    or list element, or after ``--`` (``kubectl exec … -- sentiflow …``)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: no shell would run it either
        return [ReadmeCommand(number, line, ())] if "sentiflow" in line else []
    stages: list[list[str]] = [[]]
    for token in tokens:
        if token and all(c in lexer.punctuation_chars for c in token):
            stages.append([])
        else:
            stages[-1].append(token)
    found = []
    for stage in stages:
        candidates = [stage]
        if "--" in stage:
            candidates.append(stage[stage.index("--") + 1 :])
        for words in candidates:
            argv = _entry_point(words)
            if argv is not None:
                found.append(ReadmeCommand(number, line, argv))
                break
    return found


def readme_commands() -> list[ReadmeCommand]:
    text = README.read_text(encoding="utf-8")
    return [c for number, line in shell_lines(text) for c in commands_in(number, line)]


COMMANDS = readme_commands()


def test_the_readme_has_command_lines_of_each_kind() -> None:
    """Guards the extraction itself: it finds runnable and cheap commands, through
    pipes and prompts alike."""
    firsts = {c.argv[0] for c in COMMANDS if c.argv}
    assert {"--version", "dev", "topics", "dlq", "train", "models", "ingest"} <= firsts
    assert any(c.cheap for c in COMMANDS)
    assert any("|" in c.text and c.argv[:2] == ("ingest", "stdin") for c in COMMANDS)


def test_the_extraction_reads_shell_syntax() -> None:
    (command,) = commands_in(1, "tail -f app.log | SENTIFLOW_X=1 sentiflow ingest stdin  # c")
    assert command.argv == ("ingest", "stdin")
    (command,) = commands_in(
        1, "kubectl -n sentiflow exec deploy/t -- python -m stack.cli models list"
    )
    assert command.argv == ("models", "list")
    assert commands_in(1, "pip install sentiflow") == []
    assert shell_lines("```sh\n$ sentiflow dlq list \\\n  --json\n```\n") == [
        (2, "sentiflow dlq list --json")
    ]
    assert shell_lines("```\n[ 1.0s] sentiflow demo is running\n$ sentiflow dlq list\n```") == [
        (3, "sentiflow dlq list")
    ]


@pytest.mark.parametrize("command", [c for c in COMMANDS if not c.cheap], ids=str)
def test_each_readme_command_parses(command: ReadmeCommand) -> None:
    parser = build_parser()
    try:
        args = parser.parse_args(list(command.argv))
    except SystemExit as exc:
        pytest.fail(f"{command} does not parse (exit {exc.code})")
    assert callable(getattr(args, "func", None)), f"{command} names no command"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.cheap], ids=str)
def test_each_readme_help_and_version_command_runs(command: ReadmeCommand) -> None:
    entry = Path(sys.executable).with_name("sentiflow")
    done = subprocess.run(
        [str(entry), *command.argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
    first = done.stdout.splitlines()[0] if done.stdout else ""
    assert first.startswith(("usage: sentiflow", "sentiflow ")), f"{command}: {first!r}"


LEAVES = [(name, parser) for name, parser in leaf_commands(build_parser())]


@pytest.mark.parametrize(("command", "parser"), LEAVES, ids=[name for name, _ in LEAVES])
def test_every_command_lists_its_main_settings_as_options(
    command: str, parser: argparse.ArgumentParser
) -> None:
    help_text = " ".join(parser.format_help().split())
    if command not in NO_CONFIG:
        assert "--config FILE" in help_text
    for option in COMMAND_OPTIONS.get(command, ()):
        assert f"{option.flag} {option.metavar}" in help_text
        assert f"(${option.env_var}; now: " in help_text


def test_every_kafka_command_takes_the_broker_and_topic_prefix() -> None:
    for command, _parser in LEAVES:
        if command.split()[0] in ("topics", "dlq") and command != "topics list":
            assert BOOTSTRAP_SERVERS in COMMAND_OPTIONS[command], command
            assert TOPIC_PREFIX in COMMAND_OPTIONS[command], command


def test_help_shows_the_value_the_environment_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIFLOW_TOPICS__PREFIX", "staging.")
    (dlq_list,) = [p for name, p in leaf_commands(build_parser()) if name == "dlq list"]
    assert "($SENTIFLOW_TOPICS__PREFIX; now: staging.)" in " ".join(dlq_list.format_help().split())


def test_options_reach_the_settings_over_the_environment(
    cli: Cli,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The environment names a broker where none listens and another prefix; the
    options win, so the command reads this test's docs.dlq on the session broker."""
    monkeypatch.setenv("SENTIFLOW_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("SENTIFLOW_TOPICS__PREFIX", "elsewhere.")
    code = cli(
        "dlq",
        "list",
        "--bootstrap-servers",
        settings.kafka.bootstrap_servers,
        "--topic-prefix",
        settings.topics.prefix,
    )
    assert code == 0
    assert capsys.readouterr().out.strip() == f"no dead letters on {settings.topics.prefix}docs.dlq"
    assert Settings().topics.prefix == settings.topics.prefix


def test_a_bad_port_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["inference", "--metrics-port", "nine"])
    assert exited.value.code == 2
    assert "--metrics-port" in capsys.readouterr().err
