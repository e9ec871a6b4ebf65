"""A dead letter sent back after the cause is fixed is scored: the operator's loop with
``sentiflow dlq redrive`` against a running inference, over the real broker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sentiflow_client.v1 import events_pb2

from sentiflow.config import Settings
from sentiflow.kafka import Output, make_producer, produce_and_wait
from sentiflow.models.tiny import make_checkpoint
from sentiflow.readback import read_topic
from services.inference.config import InferenceOptions, InferenceSettings
from services.inference.main import run
from stack import devstack
from tests.stack.conftest import Cli
from tests.support.signing import registry_settings

LONG_TEXT = " ".join(["Shares of the retailer fell after it cut its outlook for the year."] * 3)


def _inference(settings: Settings, tmp_path: Path, max_text_chars: int) -> InferenceSettings:
    return InferenceSettings(
        registry=registry_settings(tmp_path / "registry"),
        kafka=settings.kafka,
        redis=settings.redis,
        topics=settings.topics,
        group_prefix=settings.group_prefix,
        inference=InferenceOptions(
            grpc_address=f"127.0.0.1:{devstack.free_port()}",
            engine="torch-fp32",
            max_text_chars=max_text_chars,
            model_paths={"sentiment": make_checkpoint(tmp_path / "model")},
        ),
    )


@contextmanager
def _running(service: InferenceSettings) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(service, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.mark.integration
@pytest.mark.slow
def test_a_letter_redriven_after_the_limit_is_raised_is_scored(
    cli_env: Settings, cli: Cli, tmp_path: Path
) -> None:
    topics = cli_env.topics
    raw, scored, dlq = (
        topics.full(topics.docs_raw),
        topics.full(topics.docs_scored),
        topics.full(topics.docs_dlq),
    )
    document = events_pb2.Document(id="d-long", source="test", text=LONG_TEXT)
    produce_and_wait(make_producer(cli_env.kafka), [Output.of(raw, document, key=b"RETAIL")])

    # Deployed with a limit the text is over: the document is dead-lettered, not scored.
    with _running(_inference(cli_env, tmp_path, max_text_chars=100)):
        [letter] = read_topic(cli_env.kafka, dlq, expect=1, timeout_s=60)
    rejected = events_pb2.Rejected.FromString(letter.value() or b"")
    assert rejected.reason == events_pb2.REJECT_REASON_TOO_LARGE
    assert read_topic(cli_env.kafka, scored, settle_s=1.0) == []

    # The fix: a limit the text is within. Then the letter goes back to docs.raw.
    with _running(_inference(cli_env, tmp_path, max_text_chars=1_000)):
        assert cli("dlq", "redrive", "--reason", "too_large") == 0
        [answer] = read_topic(cli_env.kafka, scored, expect=1, timeout_s=60)
    prediction = events_pb2.Prediction.FromString(answer.value() or b"")
    assert (prediction.document.id, prediction.document.text) == ("d-long", LONG_TEXT)
    (label,) = prediction.predictions
    assert label.label in {"negative", "neutral", "positive"}
    assert len(read_topic(cli_env.kafka, dlq, settle_s=1.0)) == 1, "no second letter"
