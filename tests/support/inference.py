"""Small stand-ins for model runners, the artifact loader and a gRPC call context.

They keep the contracts of the real ones (:class:`services.inference.backends.TextRunner`,
:data:`services.inference.loading.Loader`) without weights, files or network, so the
model manager, the Kafka handler and the gRPC service can be driven by hand.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn, Protocol, cast

import grpc
from sentiflow_client.v1 import events_pb2
from tokenizers import Encoding

from sentiflow.models.versions import ModelVersion
from services.inference.backends import Prediction
from services.inference.tokenization import BatchTokenizer, Encoded

TIMEOUT = 10.0


class Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> list[Encoded]: ...

    def adopt(self, encoded: Sequence[Encoded]) -> list[Encoded]: ...


class WordEncoder:
    """One token per whitespace-separated word; ``key`` names the "tokenizer"."""

    def __init__(self, key: str = "words") -> None:
        self.key = key
        self.encoded: list[str] = []
        self.re_encoded: list[str] = []

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        self.encoded.extend(texts)
        return [self._one(t) for t in texts]

    def adopt(self, encoded: Sequence[Encoded]) -> list[Encoded]:
        out = []
        for e in encoded:
            if e.tokenizer == self.key:
                out.append(e)
            else:
                self.re_encoded.append(e.text)
                out.append(self._one(e.text))
        return out

    def _one(self, text: str) -> Encoded:
        n = max(1, len(text.split()))
        return Encoded(text, [1] * n, [0] * n, truncated=False, tokenizer=self.key)


def label_of(encoded: Encoded) -> str:
    return "positive" if encoded.tokens % 2 else "negative"


class FakeRunner:
    """A model that labels by token count parity; ``hold`` keeps its next batch in flight."""

    def __init__(self, version: str, encoder: Encoder | None = None) -> None:
        self.version = version
        self.encoder: Encoder = encoder or WordEncoder()
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self._gate = threading.Event()
        self._gate.set()

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        return self.encoder.encode(texts)

    def adopt(self, encoded: Sequence[Encoded]) -> list[Encoded]:
        return self.encoder.adopt(encoded)

    def __call__(self, payloads: Sequence[Encoded], /) -> list[Prediction]:
        self.batches.append([p.text for p in payloads])
        self.started.set()
        assert self._gate.wait(TIMEOUT), "the test never released the batch"
        return [
            Prediction(label_of(e), {"negative": 0.5, "positive": 0.5}, e.truncated)
            for e in self.adopt(payloads)
        ]

    def hold(self) -> None:
        self.started.clear()
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    @property
    def texts(self) -> list[str]:
        return [t for batch in self.batches for t in batch]


@dataclass
class FakeLoader:
    """Hands out prepared runners by version; a version can be held mid-load or fail."""

    runners: dict[str, FakeRunner]
    failing: set[str] = field(default_factory=set)
    loaded: list[str] = field(default_factory=list)
    _holds: dict[str, threading.Event] = field(default_factory=dict)
    _loading: dict[str, threading.Event] = field(default_factory=dict)

    def hold(self, version: str) -> None:
        self._holds[version] = threading.Event()
        self._loading[version] = threading.Event()

    def release(self, version: str) -> None:
        self._holds[version].set()

    def wait_loading(self, version: str) -> bool:
        return self._loading[version].wait(TIMEOUT)

    def __call__(self, info: ModelVersion) -> FakeRunner:
        self.loaded.append(info.version)
        if info.version in self._holds:
            self._loading[info.version].set()
            assert self._holds[info.version].wait(TIMEOUT), "the test never released the load"
        if info.version in self.failing:
            raise RuntimeError(f"{info.version} cannot be loaded")
        return self.runners[info.version]


def published(
    model: str,
    version: str,
    stage: events_pb2.ModelStage.ValueType = events_pb2.MODEL_STAGE_PRODUCTION,
    shadow_share: float = 0.0,
) -> ModelVersion:
    return events_pb2.ModelVersion(
        model=model, version=version, stage=stage, shadow_share=shadow_share, sha256="0" * 64
    )


class CountingTokenizer:
    """Forwards to a real tokenizer, counting what it is given and what it produces."""

    def __init__(self, inner: BatchTokenizer) -> None:
        self.inner = inner
        self.calls = 0
        self.chars = 0
        self.tokens = 0

    def encode_batch(
        self,
        input: Sequence[str],
        is_pretokenized: bool = False,
        add_special_tokens: bool = True,
    ) -> list[Encoding]:
        self.calls += 1
        self.chars += sum(len(t) for t in input)
        out = self.inner.encode_batch(input, is_pretokenized, add_special_tokens)
        self.tokens += sum(len(e.ids) + sum(len(o.ids) for o in e.overflowing) for e in out)
        return out


class AbortedError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass
class FakeCallContext:
    """A call with a fixed time remaining (None: no deadline) that records its trailers."""

    remaining: float | None = None
    trailing: tuple[tuple[str, str | bytes], ...] = ()

    def time_remaining(self) -> float | None:
        return self.remaining

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self.trailing = tuple(metadata)

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise AbortedError(code, details)


def call_context(fake: FakeCallContext | None = None) -> grpc.ServicerContext:
    """A call (by default with no deadline) whose ``abort`` raises :class:`AbortedError`."""
    return cast(grpc.ServicerContext, fake or FakeCallContext())
