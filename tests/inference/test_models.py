"""The model manager with fake runners and a fake loader: swaps, superseded loads, shadows."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future

import pytest
from prometheus_client import REGISTRY
from sentiflow_client.v1 import events_pb2

from sentiflow.errors import NotReadyError
from sentiflow.models.versions import ModelVersion, fold
from services.inference.backends import Prediction
from services.inference.batcher import Versioned
from services.inference.config import InferenceOptions
from services.inference.kafka_path import _shadow_answers
from services.inference.models import ModelManager, sampled
from tests.support.inference import TIMEOUT, FakeLoader, FakeRunner, WordEncoder, published

SHADOW = events_pb2.MODEL_STAGE_SHADOW
REJECTED = events_pb2.MODEL_STAGE_REJECTED
TEXTS = [f"stocks rally {i} times" for i in range(200)]


@pytest.fixture
def loader() -> FakeLoader:
    runners = {v: FakeRunner(v) for v in ("v1", "v2", "v3", "s1", "s2")}
    return FakeLoader(runners)


@pytest.fixture
def manager(request: pytest.FixtureRequest, loader: FakeLoader) -> Iterator[ModelManager]:
    # A model name per test keeps the Prometheus series of one test apart from another's.
    options = InferenceOptions(models=[request.node.name])
    manager = ModelManager(options, loader=loader)
    yield manager
    manager.close()


def _model(manager: ModelManager) -> str:
    (name,) = manager.models
    return name


def _publish(manager: ModelManager, history: list[ModelVersion]) -> None:
    """What the model.versions watcher does after reading ``history``."""
    model = _model(manager)
    manager.on_change(model, fold(history)[model])


def _wait_for(manager: ModelManager, production: str, shadow: str | None = None) -> None:
    def served() -> bool:
        shadows = {v.version for v in manager.shadows().values()}
        now = manager.serving().get(_model(manager))
        return now is not None and now.version == production and shadows == {shadow} - {None}

    with manager.changed:
        assert manager.changed.wait_for(served, TIMEOUT), (manager.serving(), manager.shadows())


def _versions(futures: list[Future[Versioned[Prediction]]]) -> list[str]:
    return [f.result(TIMEOUT).version for f in futures]


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_nothing_is_queued_before_a_version_serves(manager: ModelManager) -> None:
    assert not manager.ready()
    with pytest.raises(NotReadyError):
        manager.submit_with_shadow(["stocks"], _model(manager), block=False)


def test_a_swap_drops_no_queued_request_and_later_batches_use_the_new_version(
    manager: ModelManager, loader: FakeLoader
) -> None:
    model = _model(manager)
    v1, v2 = loader.runners["v1"], loader.runners["v2"]
    v2_tokenizer = WordEncoder(key="v2 tokenizer")
    v2.encoder = v2_tokenizer
    manager.install(published(model, "v1"), "production")
    v1.hold()
    in_flight, _ = manager.submit_with_shadow(["in flight"], model, block=False)
    assert v1.started.wait(TIMEOUT)
    queued, _ = manager.submit_with_shadow(["queued a", "queued b"], model, block=False)

    manager.install(published(model, "v2"), "production")
    later, _ = manager.submit_with_shadow(["later"], model, block=False)
    v1.release()

    assert _versions(in_flight) == ["v1"]
    assert _versions(queued + later) == ["v2", "v2", "v2"]
    assert manager.serving()[model].version == "v2"
    # Queued with v1's tokenizer, run by v2: re-encoded once, by the runner that ran them.
    assert v2_tokenizer.re_encoded == ["queued a", "queued b"]
    assert v2.texts == ["queued a", "queued b", "later"]


def test_a_newer_publication_supersedes_versions_waiting_or_loading(
    manager: ModelManager, loader: FakeLoader
) -> None:
    model = _model(manager)
    loader.hold("v1")
    first = published(model, "v1")
    _publish(manager, [first])
    assert loader.wait_loading("v1")
    _publish(manager, [first, published(model, "v2")])
    _publish(manager, [first, published(model, "v2"), published(model, "v3")])
    loader.release("v1")

    assert manager.wait_ready(TIMEOUT)
    assert manager.serving()[model].version == "v3"
    # v2 waited behind v1 and was never loaded; v1 finished loading and was discarded.
    assert loader.loaded == ["v1", "v3"]
    assert _metric("sentiflow_inference_model_swaps_total", model=model, role="production") == 1
    (future,), _ = manager.submit_with_shadow(["stocks"], model, block=False)
    assert future.result(TIMEOUT).version == "v3"


def test_a_failed_install_keeps_the_old_version_serving(
    manager: ModelManager, loader: FakeLoader
) -> None:
    model = _model(manager)
    manager.install(published(model, "v1"), "production")
    loader.failing.add("v2")
    with pytest.raises(RuntimeError, match="v2 cannot be loaded"):
        manager.install(published(model, "v2"), "production")
    assert manager.serving()[model].version == "v1"
    futures, _ = manager.submit_with_shadow(["stocks", "bank"], model, block=False)
    assert _versions(futures) == ["v1", "v1"]


def test_a_failed_publication_is_counted_and_the_old_version_keeps_serving(
    manager: ModelManager, loader: FakeLoader
) -> None:
    model = _model(manager)
    v1, v2 = published(model, "v1"), published(model, "v2")
    _publish(manager, [v1])
    _wait_for(manager, "v1")
    loader.failing.add("v2")
    _publish(manager, [v1, v2])
    # Loads run in publication order, so once this shadow serves, v2 has failed.
    _publish(manager, [v1, v2, published(model, "s1", SHADOW, 0.5)])
    _wait_for(manager, "v1", shadow="s1")

    assert _metric("sentiflow_inference_model_load_failures_total", model=model) == 1
    futures, _ = manager.submit_with_shadow(["stocks"], model, block=False)
    assert _versions(futures) == ["v1"]


def test_a_shadow_scores_its_share_and_answers_apart_from_production(
    manager: ModelManager, loader: FakeLoader
) -> None:
    model = _model(manager)
    shadow_tokenizer = WordEncoder()
    loader.runners["s1"].encoder = shadow_tokenizer
    _publish(manager, [published(model, "v1"), published(model, "s1", SHADOW, 0.3)])
    _wait_for(manager, "v1", shadow="s1")

    production, shadow = manager.submit_with_shadow(TEXTS, model, block=True)

    expected = {i for i, text in enumerate(TEXTS) if sampled(text, 0.3)}
    assert 0 < len(expected) < len(TEXTS)
    assert set(shadow) == expected
    assert _versions(production) == ["v1"] * len(TEXTS)
    assert {i: f.result(TIMEOUT).version for i, f in shadow.items()} == dict.fromkeys(
        expected, "s1"
    )
    assert sorted(loader.runners["s1"].texts) == sorted(TEXTS[i] for i in expected)
    # Same tokenizer: the shadow runs production's encodings instead of tokenizing again.
    assert shadow_tokenizer.encoded == []
    assert shadow_tokenizer.re_encoded == []


def test_a_shadow_with_another_tokenizer_encodes_only_its_share(
    manager: ModelManager, loader: FakeLoader
) -> None:
    model = _model(manager)
    shadow_encoder = WordEncoder(key="s1 tokenizer")
    loader.runners["s1"].encoder = shadow_encoder
    _publish(manager, [published(model, "v1"), published(model, "s1", SHADOW, 0.3)])
    _wait_for(manager, "v1", shadow="s1")

    _, shadow = manager.submit_with_shadow(TEXTS, model, block=True)

    assert [f.result(TIMEOUT).version for f in shadow.values()] == ["s1"] * len(shadow)
    assert shadow_encoder.re_encoded == [TEXTS[i] for i in sorted(shadow)]


def test_a_rejected_shadow_is_dropped(manager: ModelManager, loader: FakeLoader) -> None:
    model = _model(manager)
    history = [published(model, "v1"), published(model, "s1", SHADOW, 1.0)]
    _publish(manager, history)
    _wait_for(manager, "v1", shadow="s1")
    _, before = manager.submit_with_shadow(TEXTS[:3], model, block=True)
    assert [f.result(TIMEOUT).version for f in before.values()] == ["s1"] * 3

    _publish(manager, [*history, published(model, "s1", REJECTED)])

    assert manager.shadows() == {}
    production, shadow = manager.submit_with_shadow(TEXTS[3:6], model, block=True)
    assert shadow == {}
    assert _versions(production) == ["v1"] * 3
    assert loader.runners["s1"].texts == TEXTS[:3]


def test_a_shadow_rejected_while_it_loads_never_serves(
    manager: ModelManager, loader: FakeLoader
) -> None:
    model = _model(manager)
    history = [published(model, "v1"), published(model, "s1", SHADOW, 1.0)]
    loader.hold("s1")
    _publish(manager, history)
    assert loader.wait_loading("s1")
    _publish(manager, [*history, published(model, "s1", REJECTED)])
    loader.release("s1")
    # A later publication is loaded after s1's load finished.
    _publish(manager, [*history, published(model, "s1", REJECTED), published(model, "v2")])
    _wait_for(manager, "v2")

    assert manager.shadows() == {}
    _, shadow = manager.submit_with_shadow(TEXTS[:3], model, block=True)
    assert shadow == {}


def _scored(version: str, label: str = "positive") -> Future[Versioned[Prediction]]:
    future: Future[Versioned[Prediction]] = Future()
    future.set_result(Versioned(Prediction(label, {"negative": 0.1, "positive": 0.9}), version))
    return future


def test_failed_and_slow_shadow_answers_are_left_out() -> None:
    failed: Future[Versioned[Prediction]] = Future()
    failed.set_exception(RuntimeError("shadow model broke"))
    slow: Future[Versioned[Prediction]] = Future()
    todo = [("d0", "t0"), ("d1", "t1"), ("d2", "t2"), ("d3", "t3")]

    answers = _shadow_answers("sentiment", todo, {0: _scored("s1"), 1: failed, 3: slow}, 0.0)

    assert list(answers) == ["d0"]
    assert (answers["d0"].model, answers["d0"].version, answers["d0"].label) == (
        "sentiment",
        "s1",
        "positive",
    )
    # Cancelled, so an answer nobody waits for gives up its place in the shadow's queue.
    assert slow.cancelled()
