"""Which model versions this process serves, and swapping them without a pause.

One batcher per model name is shared by the Kafka path and gRPC. A new production
version is loaded and warmed up on a loader thread beside the old one (see
:mod:`services.inference.loading`) and only then swapped in: the batch in flight
finishes on the old model and every later batch uses the new one, queued requests
included. A version superseded while it loads (a newer one published, or a shadow
rejected) is discarded rather than swapped in. A version in shadow scores a sampled
share of texts on its own batcher; its answers feed the agreement metric and, on the
Kafka path, ``Prediction.shadow_predictions`` (which the trainer's shadow judge reads),
never a caller's answer.

Texts are tokenized once, when they are queued, by the serving version's runner; the
queue entries carry the encodings to whichever runner ends up running them.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from sentiflow_client.v1 import events_pb2

from sentiflow.config import RegistrySettings
from sentiflow.errors import InvalidInputError, NotReadyError
from sentiflow.models.admission import RefusedRecordError
from sentiflow.models.artifacts import build_manifest, manifest_digest
from sentiflow.models.versions import ModelState, ModelVersion
from services.inference import metrics
from services.inference.backends import Prediction, TextRunner
from services.inference.batcher import Batcher, Item, Versioned
from services.inference.config import InferenceOptions
from services.inference.engines import resolve_workers, serving_device
from services.inference.loading import NOT_IN_MANIFEST, ArtifactLoader, Loader
from services.inference.tokenization import Encoded

log = logging.getLogger(__name__)

Scored = Versioned[Prediction]
# Shadow answers per position in the submitted texts (only the sampled ones).
ShadowFutures = dict[int, Future[Scored]]


def sampled(text: str, share: float) -> bool:
    """Deterministic sampling, so a document is shadow-scored on every replay or none."""
    return (zlib.crc32(text.encode("utf-8", "surrogatepass")) % 10_000) < share * 10_000


def queue_items(encoded: Sequence[Encoded]) -> list[Item[Encoded]]:
    """Batcher items whose length is the encoding's, the tensor width they will need."""
    return [Item(e, e.tokens) for e in encoded]


_Identity = tuple[str, str, str, str]


def _identity(info: ModelVersion) -> _Identity:
    """What makes two records the same publication: a record that reuses a version name
    with another artifact or signature (say, a forgery refused earlier) must not make
    the genuine one look already handled."""
    return (info.version, info.artifact_uri, info.sha256, info.signature)


@dataclass(frozen=True)
class _Served:
    info: ModelVersion
    runner: TextRunner


@dataclass
class _Shadow:
    info: ModelVersion
    runner: TextRunner
    batcher: Batcher[Encoded, Prediction]
    scored: int = 0
    agreed: int = 0


class ModelManager:
    """Serves the production (and shadow) version of each configured model name.

    ``loader`` turns a published version into a warmed-up runner; by default it
    fetches and verifies the artifact with ``registry``'s settings and builds the
    runner ``options`` ask for.
    """

    def __init__(
        self,
        options: InferenceOptions,
        *,
        registry: RegistrySettings | None = None,
        loader: Loader | None = None,
    ) -> None:
        self._options = options
        self._load = loader or ArtifactLoader(options, registry)
        self._workers = resolve_workers(options, serving_device(options.device))
        self._batchers = {name: self._new_batcher(name) for name in options.models}
        self._serving: dict[str, _Served] = {}
        self._shadows: dict[str, _Shadow] = {}
        self._wanted: dict[tuple[str, str], _Identity | None] = {}
        self._lock = threading.Lock()
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="model-loader")
        self.changed = threading.Condition()

    def _new_batcher(
        self, name: str, role: str = "production", runner: TextRunner | None = None
    ) -> Batcher[Encoded, Prediction]:
        o = self._options
        return Batcher(
            runner,
            max_batch_size=o.max_batch_size,
            max_batch_tokens=o.max_batch_tokens,
            max_padding=o.max_padding,
            max_delay_s=o.max_delay_ms / 1000,
            capacity=o.queue_capacity,
            on_batch=lambda stats: metrics.observe_batch(name, stats),
            on_shed=lambda reason, count: metrics.observe_shed(name, reason, count),
            name=f"batcher-{name}-{role}",
            workers=self._workers,
        )

    # -- what is served -------------------------------------------------------------

    @property
    def models(self) -> list[str]:
        return list(self._batchers)

    def ready(self) -> bool:
        with self._lock:
            return all(name in self._serving for name in self._batchers)

    def serving(self) -> dict[str, ModelVersion]:
        with self._lock:
            return {name: served.info for name, served in self._serving.items()}

    def shadows(self) -> dict[str, ModelVersion]:
        with self._lock:
            return {name: s.info for name, s in self._shadows.items()}

    def wait_ready(self, timeout: float | None = None) -> bool:
        with self.changed:
            return self.changed.wait_for(self.ready, timeout)

    # -- loading ------------------------------------------------------------------------

    def load_local_paths(self) -> None:
        """Serve configured local checkpoints instead of following model.versions."""
        for name, path in self._options.model_paths.items():
            if name not in self._batchers:
                continue
            digest = manifest_digest(build_manifest(path, NOT_IN_MANIFEST))
            info = ModelVersion(
                model=name,
                version=f"local-{digest[:12]}",
                artifact_uri=str(path),
                sha256=digest,
                stage=events_pb2.MODEL_STAGE_PRODUCTION,
            )
            self.install(info, "production")

    def on_change(self, model: str, state: ModelState) -> None:
        """Called by the model.versions watcher; loads happen on the loader thread."""
        if model not in self._batchers or model in self._options.model_paths:
            return
        for role, info in (("production", state.production), ("shadow", state.shadow)):
            wanted = _identity(info) if info is not None else None
            with self._lock:
                if self._wanted.get((model, role)) == wanted:
                    continue
                self._wanted[(model, role)] = wanted
            if info is None:
                if role == "shadow":
                    self._drop_shadow(model)
                continue
            snapshot = ModelVersion()
            snapshot.CopyFrom(info)
            self._loader.submit(self._load_if_still_wanted, snapshot, role)

    def _load_if_still_wanted(self, info: ModelVersion, role: str) -> None:
        with self._lock:
            if self._superseded(info, role):
                return  # a newer version was published while this one waited
        try:
            runner = self._load(info)
        except RefusedRecordError as exc:
            metrics.LOAD_FAILURES.labels(info.model).inc()
            metrics.RECORDS_REFUSED.labels(info.model, exc.reason).inc()
            log.error("refused %s %s as %s: %s", info.model, info.version, role, exc)
            return
        except Exception:
            metrics.LOAD_FAILURES.labels(info.model).inc()
            log.exception("cannot serve %s %s as %s", info.model, info.version, role)
            return
        if not self._swap_in(info, role, runner, unless_superseded=True):
            log.info("%s %s was superseded while it loaded", info.model, info.version)

    def install(self, info: ModelVersion, role: str) -> None:
        """Load, warm up, then swap in (blocking); raises, still serving the old, on failure."""
        self._swap_in(info, role, self._load(info))

    def _superseded(self, info: ModelVersion, role: str) -> bool:
        """Whether a later publication replaced ``info`` in ``role``; the lock is held."""
        return self._wanted.get((info.model, role)) != _identity(info)

    def _swap_in(
        self, info: ModelVersion, role: str, runner: TextRunner, *, unless_superseded: bool = False
    ) -> bool:
        """Serve ``runner`` as ``info``; False if ``unless_superseded`` and it was.

        The check and the swap happen under the lock ``on_change`` records publications
        under, so a newer version or a rejection published meanwhile always wins.
        """
        swap = self._swap_production if role == "production" else self._swap_shadow
        if not swap(info, runner, unless_superseded):
            return False
        metrics.SWAPS.labels(info.model, role).inc()
        self._export_info()
        log.info("serving %s %s as %s", info.model, info.version, role)
        with self.changed:
            self.changed.notify_all()
        return True

    def _swap_production(
        self, info: ModelVersion, runner: TextRunner, unless_superseded: bool
    ) -> bool:
        with self._lock:
            if unless_superseded and self._superseded(info, "production"):
                return False
            # No waiting for the old model's batch in flight: nothing here frees it.
            self._batchers[info.model].swap(runner, wait=False)
            self._serving[info.model] = _Served(info, runner)
        return True

    def _swap_shadow(self, info: ModelVersion, runner: TextRunner, unless_superseded: bool) -> bool:
        shadow = _Shadow(info, runner, self._new_batcher(info.model, "shadow", runner))
        with self._lock:
            stale = unless_superseded and self._superseded(info, "shadow")
            retired = shadow if stale else self._shadows.get(info.model)
            if not stale:
                self._shadows[info.model] = shadow
        if retired is not None:
            retired.batcher.close(drain=False)
        return not stale

    def _drop_shadow(self, model: str) -> None:
        with self._lock:
            old = self._shadows.pop(model, None)
        if old is not None:
            old.batcher.close(drain=False)
            self._export_info()

    def _export_info(self) -> None:
        metrics.observe_served({"production": self.serving(), "shadow": self.shadows()})

    # -- scoring --------------------------------------------------------------------------

    def resolve_models(self, requested: Sequence[str]) -> list[str]:
        if not requested:
            return self.models
        unknown = [m for m in requested if m not in self._batchers]
        if unknown:
            raise InvalidInputError(f"unknown model(s) {unknown}; served: {self.models}")
        return list(dict.fromkeys(requested))

    def submit(
        self,
        texts: Sequence[str],
        models: Sequence[str],
        *,
        block: bool,
        timeout: float | None = None,
        urgent: bool = False,
        deadline_s: float | None = None,
    ) -> dict[str, list[Future[Scored]]]:
        """Queue every text on every model's batcher; one future per (model, text).

        Raises NotReadyError before any model version exists, OverloadedError when the
        queue is full (``block=False``) or stays full past ``timeout``. ``urgent``: a
        caller with a deadline, served ahead of queued Kafka work. ``deadline_s``: seconds
        left to answer in; work that cannot make it is refused (see the batcher).
        """
        out: dict[str, list[Future[Scored]]] = {}
        try:
            for model in models:
                out[model], _ = self.submit_with_shadow(
                    texts, model, block=block, timeout=timeout, urgent=urgent, deadline_s=deadline_s
                )
        except Exception:
            for futures in out.values():
                for future in futures:
                    future.cancel()
            raise
        return out

    def submit_with_shadow(
        self,
        texts: Sequence[str],
        model: str,
        *,
        block: bool,
        timeout: float | None = None,
        urgent: bool = False,
        deadline_s: float | None = None,
    ) -> tuple[list[Future[Scored]], ShadowFutures]:
        """Queue texts on ``model``'s production batcher and, for the sampled share, on
        its shadow; the shadow futures are keyed by position in ``texts``."""
        with self._lock:
            served = self._serving.get(model)
            shadow = self._shadows.get(model)
        if served is None:
            raise NotReadyError(f"no model version published yet for {model}")
        items = queue_items(served.runner.encode(texts))
        batcher = self._batchers[model]
        futures = batcher.submit(
            items, block=block, timeout=timeout, urgent=urgent, deadline_s=deadline_s
        )
        return futures, _shadow_score(shadow, texts, items, futures)

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)
        for batcher in self._batchers.values():
            batcher.close(drain=True, timeout=10)
        for shadow in list(self._shadows.values()):
            shadow.batcher.close(drain=False)


def _shadow_score(
    shadow: _Shadow | None,
    texts: Sequence[str],
    items: Sequence[Item[Encoded]],
    production: Sequence[Future[Scored]],
) -> ShadowFutures:
    """Queue the sampled texts on the shadow, reusing their encodings where it can."""
    if shadow is None:
        return {}
    picked = [i for i, t in enumerate(texts) if sampled(t, shadow.info.shadow_share)]
    if not picked:
        return {}
    try:
        encoded = shadow.runner.adopt([items[i].payload for i in picked])
        futures = shadow.batcher.submit(queue_items(encoded), block=False)
    except Exception as exc:
        # A shadow must never fail, or hold up, the production answer it rides along with.
        metrics.ERRORS.labels("shadow_skipped").inc()
        log.debug("shadow %s skipped %d texts: %r", shadow.info.version, len(picked), exc)
        return {}
    for i, future in zip(picked, futures, strict=True):
        _when_both_done(production[i], future, partial(_record_agreement, shadow))
    return dict(zip(picked, futures, strict=True))


def _when_both_done(
    first: Future[Scored],
    second: Future[Scored],
    then: Callable[[Future[Scored], Future[Scored]], None],
) -> None:
    """Call ``then`` once, on whichever thread finishes the later of the two futures."""
    lock = threading.Lock()
    fired = [False]

    def check(_done: Future[Scored]) -> None:
        with lock:
            if fired[0] or not (first.done() and second.done()):
                return
            fired[0] = True
        then(first, second)

    first.add_done_callback(check)
    second.add_done_callback(check)


def _record_agreement(
    shadow: _Shadow, production: Future[Scored], candidate: Future[Scored]
) -> None:
    for future in (production, candidate):
        if future.cancelled() or future.exception() is not None:
            return
    model, version = shadow.info.model, shadow.info.version
    shadow.scored += 1
    metrics.SHADOW_SCORED.labels(model, version).inc()
    if candidate.result().value.label == production.result().value.label:
        shadow.agreed += 1
        metrics.SHADOW_AGREED.labels(model, version).inc()
    metrics.SHADOW_AGREEMENT.labels(model, version).set(shadow.agreed / shadow.scored)
