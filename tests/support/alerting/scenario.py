"""A deterministic docs.scored stream with known incidents, shared by the pure
detector tests and the tests over the real broker.

Two and a half hours of event time, simulated instantly. Negatives follow fixed
patterns instead of random draws, so every window's counts are exact and a test can
say precisely which windows must and must not alert.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sentiflow_client.v1 import events_pb2

from services.alerting.config import AlertingOptions
from services.alerting.detector import DetectorConfig

MINUTE_MS = 60_000
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
END_MINUTE = 150

STEADY = [f"STEADY{i}" for i in range(8)]
SPIKE = "SPIKE"  # 60% negative in minutes [90, 105) and again in [125, 135)
LOW = "LOW"  # two documents a minute; all negative in minutes [90, 94)
LATE = "LATE"  # its incident only shows once late documents are counted

SPIKE_RAISE_WINDOW = (88, 93)  # minutes: the first window whose z clears 4.5
LATE_RAISE_WINDOW = (100, 105)
LATE_EXTRA_NEGATIVES = 16
LATE_BEYOND_ALLOWANCE = 3  # documents for minute 120 that arrive at minute 150


def options(**overrides: object) -> AlertingOptions:
    """Detection settings for the scenario: a one-hour baseline keeps it short."""
    base: dict[str, object] = {
        "window_s": 300,
        "hop_s": 60,
        "long_window_s": 900,
        "baseline_s": 3600,
        "lateness_s": 120,
        "cooldown_s": 3 * 3600,
        "min_negatives": 10,
        "z_threshold": 4.5,
        "prior_share": 0.15,
        "prior_weight": 200.0,
    }
    detector_fields = set(DetectorConfig.__dataclass_fields__)
    detector = {k: v for k, v in {**base, **overrides}.items() if k in detector_fields}
    rest = {k: v for k, v in overrides.items() if k not in detector_fields}
    return AlertingOptions.model_validate({**rest, "detector": detector})


@dataclass(frozen=True)
class Doc:
    entity: str
    time_ms: int
    negative: bool
    doc_id: str
    text: str = ""

    def prediction(self) -> events_pb2.Prediction:
        pred = events_pb2.Prediction()
        doc = pred.document
        doc.id = self.doc_id
        doc.source = "test:scenario"
        doc.text = self.text or f"{self.entity} news {self.doc_id}"
        doc.entities.add(id=self.entity, name=f"${self.entity}")
        doc.published_at.FromMilliseconds(self.time_ms)
        doc.ingested_at.FromMilliseconds(self.time_ms + 1000)
        label = "negative" if self.negative else "neutral"
        answer = pred.predictions.add(model="sentiment", version="v1", label=label)
        answer.scores.add(label="negative", score=0.9 if self.negative else 0.05)
        answer.scores.add(label="neutral", score=0.05 if self.negative else 0.9)
        return pred

    def value(self) -> bytes:
        return self.prediction().SerializeToString()


def _steady(counter: int, _i: int) -> bool:
    """Exactly 3 in every 20 consecutive documents: a 15% share in every window."""
    return counter % 20 in (0, 7, 14)


def _spiking(counter: int, _i: int) -> bool:
    return counter % 5 in (0, 2, 4)  # 60%


def _all(_counter: int, _i: int) -> bool:
    return True


def _first_of_minute(_counter: int, i: int) -> bool:
    return i == 0


Pattern = Callable[[int, int], bool]


@dataclass
class _Emitter:
    entity: str
    per_minute: int
    counter: int = 0
    docs: list[Doc] = field(default_factory=list)

    def minute(self, m: int, negative: Pattern) -> None:
        step = MINUTE_MS // self.per_minute
        for i in range(self.per_minute):
            time_ms = minute_ms(m) + i * step
            doc_id = f"{self.entity}-{self.counter}"
            self.docs.append(Doc(self.entity, time_ms, negative(self.counter, i), doc_id))
            self.counter += 1


def _pattern(entity: str, m: int) -> Pattern:
    if entity == SPIKE and (90 <= m < 105 or 125 <= m < 135):
        return _spiking
    if entity == LOW and 90 <= m < 94:
        return _all
    if entity == LATE and 100 <= m < 105:
        return _first_of_minute  # on time, only 1 of 4 is negative
    return _steady


def documents() -> list[Doc]:
    """The whole stream in the order it is produced (event time, with the late ones
    inserted where they arrive)."""
    emitters = [_Emitter(e, 12) for e in [*STEADY, SPIKE]]
    emitters += [_Emitter(LOW, 2), _Emitter(LATE, 4)]
    for m in range(END_MINUTE):
        for emitter in emitters:
            emitter.minute(m, _pattern(emitter.entity, m))
    stream = sorted((d for em in emitters for d in em.docs), key=lambda d: (d.time_ms, d.entity))
    # LATE_EXTRA_NEGATIVES documents of minute 104 arrive just after LATE's first
    # document of minute 106: two minutes out of order, inside the allowance, so they
    # still count for the window [100, 105). Without the allowance that window would
    # have been evaluated (without them) as soon as minute 105 began.
    arrival = next(
        i for i, d in enumerate(stream) if d.entity == LATE and d.time_ms >= minute_ms(106)
    )
    spacing = MINUTE_MS // LATE_EXTRA_NEGATIVES
    late = [
        Doc(LATE, minute_ms(104) + i * spacing, True, f"LATE-late-{i}")
        for i in range(LATE_EXTRA_NEGATIVES)
    ]
    beyond = [
        Doc(STEADY[0], minute_ms(120) + i, False, f"STEADY0-beyond-{i}")
        for i in range(LATE_BEYOND_ALLOWANCE)
    ]
    return [*stream[: arrival + 1], *late, *stream[arrival + 1 :], *beyond]


def minute_ms(m: int) -> int:
    return T0_MS + m * MINUTE_MS
