"""Negative-sentiment spike detection as a pure, deterministic state machine.

The detector sees observations ``(entity, source, event time, negative?)`` in the
order of one input partition and answers with alert events. It imports nothing from
Kafka or Faust, so the same code runs in the service, in unit tests and in the
offline evaluation, and a replay of the same input gives the same alerts.

Windows. Time is cut into buckets of one hop. A short window of ``window_s`` (several
hops) ends at every hop boundary and is evaluated once the watermark (the largest
event time seen, minus the lateness allowance) has passed its end, so documents up to
``lateness_s`` out of order still count. A longer window (``long_window_s``) is
tested beside it: a moderate spike that lasts gathers there the evidence one short
window lacks, at the same threshold.

Baseline. Each window is compared with the ``baseline_s`` before it, shrunk towards a
prior share so that an entity with little history is judged against the prior
instead of its own noise. Window-sized blocks of the baseline that are outliers
against the rest (an earlier incident) are left out, so one incident neither blunts
detection nor counts as normal for hours afterwards.

Test. The signed root of the binomial deviance of the window's negative count against
the baseline share: much closer to a standard normal in the upper tail than the Wald
z-score at small counts and low shares, where the binomial is skewed. It is deflated
for the baseline's own uncertainty and for extra-binomial spread the baseline shows.
A window raises when the z-score, the negative count, the share (absolute floor) and
its lift over the baseline all clear their thresholds, unless the series is in its
cool-down; a raised incident resolves after ``resolve_hops`` windows in a row whose
z-score is back under ``resolve_z``.

State. Changes are recorded as keyed records (:meth:`Detector.drain_changes`) so a
caller can replicate them to a changelog and rebuild the detector after a restart
(:meth:`Detector.restore`). Every observation carries a sequence number (the input
offset); a bucket remembers the last one it counted, so a replay of already-counted
input is skipped instead of counted twice.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None
Kind = Literal["raised", "resolved"]
Severity = Literal["low", "medium", "high"]
SeriesKey = tuple[str, str]  # (entity, source); source is "" when not split by source

# Fewer baseline blocks than this and the spread estimate is too noisy to use.
_MIN_DISPERSION_BLOCKS = 6
# A baseline block this many standard errors from the rest is an outlier (an earlier
# incident, a glitch), not the entity's normal behaviour.
_OUTLIER_Z = 3.5


@dataclass(frozen=True)
class DetectorConfig:
    """The detection rule; every duration is in seconds of event time."""

    window_s: int = 300
    hop_s: int = 60
    baseline_s: int = 6 * 3600
    lateness_s: int = 120
    z_threshold: float = 4.5
    min_negatives: int = 10
    share_floor: float = 0.2
    # The share must also be this multiple of the baseline: at high volume a drift of
    # a few percent is statistically significant and still nothing anyone acts on.
    min_lift: float = 1.5
    prior_share: float = 0.15
    prior_weight: float = 200.0
    # Also test this longer window (0: off), so that a moderate spike that lasts is
    # caught within a few windows at the same threshold; a multiple of window_s.
    long_window_s: int = 900
    cooldown_s: int = 3600
    resolve_z: float = 1.0
    resolve_hops: int = 3
    medium_lift: float = 2.0
    high_lift: float = 3.0
    max_examples: int = 3
    example_chars: int = 280
    # How many standard errors the baseline's spread must exceed the binomial's
    # before it is believed: keeps sampling noise in that estimate from eating power.
    dispersion_guard: float = 2.0

    def __post_init__(self) -> None:
        for name in ("window_s", "hop_s", "baseline_s", "resolve_hops", "max_examples"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("lateness_s", "cooldown_s", "min_negatives", "prior_weight", "long_window_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.window_s % self.hop_s:
            raise ValueError("window_s must be a multiple of hop_s")
        if self.long_window_s and (
            self.long_window_s % self.window_s or self.long_window_s <= self.window_s
        ):
            raise ValueError("long_window_s must be 0 or a larger multiple of window_s")
        if self.baseline_s % self.window_s:
            raise ValueError("baseline_s must be a multiple of window_s")
        if not 0.0 < self.prior_share < 1.0:
            raise ValueError("prior_share must be between 0 and 1")
        if not 0.0 <= self.share_floor <= 1.0:
            raise ValueError("share_floor must be between 0 and 1")
        if not 1.0 <= self.medium_lift <= self.high_lift:
            raise ValueError("need 1 <= medium_lift <= high_lift")
        if self.min_lift < 1.0:
            raise ValueError("min_lift must be at least 1")


@dataclass(frozen=True)
class Observation:
    """One scored document, reduced to what detection needs."""

    entity: str
    time_ms: int
    negative: bool
    seq: int  # position in the input (the partition offset); replays reuse it
    source: str = ""
    doc_id: str = ""
    text: str = ""
    score: float = 0.0  # the model's negative score: the most negative make the examples


@dataclass(frozen=True)
class Example:
    doc_id: str
    text: str
    score: float

    def rank(self) -> tuple[float, str]:
        return (-self.score, self.doc_id)


@dataclass(frozen=True)
class AlertEvent:
    """A raised or resolved alert; a resolved one carries the id of what it resolves."""

    alert_id: str
    kind: Kind
    entity: str
    source: str
    window_start_ms: int
    window_end_ms: int
    negative_share: float
    baseline_share: float
    z: float
    volume: int
    negative_count: int
    severity: Severity
    examples: tuple[Example, ...] = ()

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "id": self.alert_id,
            "kind": self.kind,
            "entity": self.entity,
            "source": self.source,
            "start": self.window_start_ms,
            "end": self.window_end_ms,
            "share": self.negative_share,
            "baseline": self.baseline_share,
            "z": self.z,
            "volume": self.volume,
            "negatives": self.negative_count,
            "severity": self.severity,
            "examples": [[e.doc_id, e.text, e.score] for e in self.examples],
        }

    @classmethod
    def from_json(cls, data: dict[str, JsonValue]) -> AlertEvent:
        kind = str(data["kind"])
        severity = str(data["severity"])
        if kind not in ("raised", "resolved") or severity not in ("low", "medium", "high"):
            raise ValueError(f"bad alert record: {data!r}")
        return cls(
            alert_id=str(data["id"]),
            kind="raised" if kind == "raised" else "resolved",
            entity=str(data["entity"]),
            source=str(data["source"]),
            window_start_ms=_int(data["start"]),
            window_end_ms=_int(data["end"]),
            negative_share=_float(data["share"]),
            baseline_share=_float(data["baseline"]),
            z=_float(data["z"]),
            volume=_int(data["volume"]),
            negative_count=_int(data["negatives"]),
            severity=_severity(severity),
            examples=tuple(_example(e) for e in _list(data["examples"])),
        )


@dataclass(frozen=True)
class WindowStats:
    """One entity's window against its baseline."""

    start_ms: int
    end_ms: int
    volume: int
    negatives: int
    share: float
    baseline: float
    z: float


@dataclass
class DetectorStats:
    """Counters the service exports; they never influence detection."""

    observed: int = 0
    duplicates: int = 0
    late: int = 0  # arrived after a window containing it was evaluated; still counted
    expired: int = 0  # older than anything a future window or baseline will read
    windows: int = 0  # entity-windows evaluated
    raised: int = 0
    resolved: int = 0


# --- the statistics -------------------------------------------------------------


def alert_id(entity: str, source: str, window_start_ms: int) -> str:
    """The incident's id: the same input always yields the same id, so replays dedupe."""
    digest = hashlib.sha256(f"{entity}\x1f{source}\x1f{window_start_ms}".encode())
    return digest.hexdigest()[:32]


def signed_root_deviance(negatives: int, volume: int, p0: float) -> float:
    """sign(k/n - p0) * sqrt(2 n KL(k/n || p0)): the binomial likelihood-ratio z."""
    if volume <= 0:
        return 0.0
    k, n = negatives, volume
    d = 0.0
    if k > 0:
        d += k * math.log(k / (n * p0))
    if n - k > 0:
        d += (n - k) * math.log((n - k) / (n * (1.0 - p0)))
    root = math.sqrt(max(0.0, 2.0 * d))
    return root if k >= n * p0 else -root


def extra_variance(
    sum_k_sq_over_n: float, total_k: int, total_n: int, blocks: int, guard: float
) -> float:
    """Extra-binomial variance of a window's share, from the baseline's blocks.

    Pearson's dispersion over the blocks is 1 for binomial data; what exceeds it by
    more than ``guard`` standard errors is turned into a variance per window share.
    """
    if blocks < _MIN_DISPERSION_BLOCKS or total_n <= 0 or total_k in (0, total_n):
        return 0.0
    p = total_k / total_n
    pq = p * (1.0 - p)
    phi = (sum_k_sq_over_n - total_k * total_k / total_n) / pq / (blocks - 1)
    excess = phi - 1.0 - guard * math.sqrt(2.0 / (blocks - 1))
    return max(0.0, excess) * pq / (total_n / blocks)


def adjusted_z(
    negatives: int, volume: int, p0: float, baseline_weight: float, tau2: float
) -> float:
    """The deviance z, deflated for the baseline's uncertainty and extra spread."""
    raw = signed_root_deviance(negatives, volume, p0)
    inflation = 1.0 + volume / max(baseline_weight, 1e-9) + volume * tau2 / (p0 * (1.0 - p0))
    return raw / math.sqrt(inflation)


def severity_for(share: float, baseline: float, config: DetectorConfig) -> Severity:
    """How far above: the share as a multiple of the baseline."""
    lift = share / baseline if baseline > 0 else math.inf
    if lift >= config.high_lift:
        return "high"
    if lift >= config.medium_lift:
        return "medium"
    return "low"


# --- state ------------------------------------------------------------------------


@dataclass
class _Bucket:
    total: int = 0
    negative: int = 0
    last_seq: int = -1
    examples: list[Example] = field(default_factory=list)

    def to_json(self) -> JsonValue:
        return [
            self.total,
            self.negative,
            self.last_seq,
            [[e.doc_id, e.text, e.score] for e in self.examples],
        ]

    @classmethod
    def from_json(cls, data: JsonValue) -> _Bucket:
        total, negative, last_seq, examples = _list(data)
        return cls(
            _int(total), _int(negative), _int(last_seq), [_example(e) for e in _list(examples)]
        )


@dataclass
class _Incident:
    alert_id: str
    severity: Severity
    recovered: int = 0  # consecutive windows back near the baseline

    def to_json(self) -> dict[str, JsonValue]:
        return {"id": self.alert_id, "severity": self.severity, "recovered": self.recovered}

    @classmethod
    def from_json(cls, data: JsonValue) -> _Incident:
        d = _dict(data)
        return cls(str(d["id"]), _severity(str(d["severity"])), _int(d["recovered"]))


@dataclass
class _BaselineCache:
    """Sums over the ordinary whole blocks of a baseline (outliers left out); valid
    while no late event lands in them."""

    first_block: int
    end_block: int
    p_all: float  # the share over every block, outliers included: what they are judged by
    n: int
    k: int
    k_sq_over_n: float
    blocks: int


@dataclass
class _Series:
    buckets: dict[int, _Bucket] = field(default_factory=dict)
    # Derived from buckets (never persisted): per window-aligned block [n, k].
    blocks: dict[int, list[int]] = field(default_factory=dict)
    oldest: int | None = None  # lowest bucket index that may still be present
    incident: _Incident | None = None
    cooldown_until_ms: int = 0
    outbox: list[AlertEvent] = field(default_factory=list)
    caches: list[_BaselineCache] = field(default_factory=list)

    def status_json(self) -> dict[str, JsonValue]:
        return {
            "incident": self.incident.to_json() if self.incident else None,
            "cooldown_until": self.cooldown_until_ms,
            "outbox": [a.to_json() for a in self.outbox],
        }

    def idle(self, now_ms: int) -> bool:
        return (
            not self.buckets
            and self.incident is None
            and not self.outbox
            and now_ms >= self.cooldown_until_ms
        )


# Record kinds in the changelog: the clock, one status per series, one per bucket.
_CLOCK = "c"
_STATUS = "s"
_BUCKET = "b"


def _record_key(*parts: str | int) -> str:
    return json.dumps(list(parts), separators=(",", ":"), ensure_ascii=True)


class Detector:
    """Spike detection over one input partition (or any single ordered stream).

    ``outbox=True`` keeps every alert in the persisted state until the caller
    :meth:`acknowledge` s it, so a crash between deciding and publishing an alert
    re-publishes it after :meth:`restore` instead of losing it.
    """

    def __init__(self, config: DetectorConfig, *, outbox: bool = False) -> None:
        self.config = config
        self.stats = DetectorStats()
        self._outbox_enabled = outbox
        self._hop_ms = config.hop_s * 1000
        self._window_ms = config.window_s * 1000
        self._window_buckets = config.window_s // config.hop_s
        self._baseline_buckets = config.baseline_s // config.hop_s
        # Window lengths tested, in buckets: the short window, then the long one.
        self._spans = [self._window_buckets]
        if config.long_window_s:
            self._spans.append(config.long_window_s // config.hop_s)
        self._series: dict[SeriesKey, _Series] = {}
        self._max_time_ms: int | None = None
        self._evaluated_until_ms: int | None = None
        self._dirty: dict[tuple[str, str, str, int], None] = {}

    # -- input ---------------------------------------------------------------------

    def observe(self, obs: Observation) -> list[AlertEvent]:
        """Count one document, then evaluate every window the watermark has passed."""
        example = None
        if obs.negative and self.config.max_examples:
            example = Example(obs.doc_id, obs.text[: self.config.example_chars], obs.score)
        return self._add(
            (obs.entity, obs.source), obs.time_ms, 1, int(obs.negative), obs.seq, example
        )

    def observe_counts(
        self, entity: str, source: str, time_ms: int, total: int, negatives: int, seq: int
    ) -> list[AlertEvent]:
        """Count many documents of one bucket at once: the same as observing each of them
        (without examples). The offline evaluation uses it to simulate weeks quickly."""
        if not 0 <= negatives <= total:
            raise ValueError("need 0 <= negatives <= total")
        return self._add((entity, source), time_ms, total, negatives, seq, None)

    def _add(
        self,
        key: SeriesKey,
        time_ms: int,
        total: int,
        negatives: int,
        seq: int,
        example: Example | None,
    ) -> list[AlertEvent]:
        self.stats.observed += total
        if self._evaluated_until_ms is None:
            start = time_ms - self.config.lateness_s * 1000
            self._evaluated_until_ms = (start // self._hop_ms) * self._hop_ms
            self._mark(_CLOCK)
        alerts: list[AlertEvent] = []
        if self._max_time_ms is None or time_ms > self._max_time_ms:
            # Windows the watermark passes end before this document's time, so they
            # can be evaluated before counting it; after a long silence that lets the
            # old state expire first and the empty stretch be skipped in one step.
            self._max_time_ms = time_ms
            alerts = self._advance()
        index = time_ms // self._hop_ms
        series = self._series.get(key)
        bucket = series.buckets.get(index) if series is not None else None
        if bucket is not None and seq <= bucket.last_seq:
            self.stats.duplicates += total
        elif index < self._oldest_needed_index():
            self.stats.expired += total
        else:
            if time_ms < self._evaluated_until_ms:
                self.stats.late += total
            if series is None:
                series = self._series[key] = _Series()
            self._count(key, series, index, total, negatives, seq, example)
        return alerts

    def _oldest_needed_index(self) -> int:
        """The first bucket the next window's baseline reads; anything older is expired."""
        assert self._evaluated_until_ms is not None
        next_end = self._evaluated_until_ms // self._hop_ms + 1
        return next_end - self._spans[-1] - self._baseline_buckets

    def _count(
        self,
        key: SeriesKey,
        series: _Series,
        index: int,
        total: int,
        negatives: int,
        seq: int,
        example: Example | None,
    ) -> None:
        bucket = series.buckets.get(index)
        if bucket is None:
            bucket = series.buckets[index] = _Bucket()
            if series.oldest is None or index < series.oldest:
                series.oldest = index
        bucket.total += total
        bucket.negative += negatives
        bucket.last_seq = seq
        if example is not None:
            _keep_top(bucket.examples, example, self.config.max_examples)
        block_index = index // self._window_buckets
        block = series.blocks.setdefault(block_index, [0, 0])
        block[0] += total
        block[1] += negatives
        if any(block_index < c.end_block for c in series.caches):
            series.caches = [c for c in series.caches if block_index >= c.end_block]
        self._mark(_BUCKET, key, index)

    # -- evaluation ----------------------------------------------------------------

    def _advance(self) -> list[AlertEvent]:
        assert self._max_time_ms is not None
        assert self._evaluated_until_ms is not None
        watermark = self._max_time_ms - self.config.lateness_s * 1000
        before = self._evaluated_until_ms
        alerts: list[AlertEvent] = []
        while self._evaluated_until_ms + self._hop_ms <= watermark:
            if self._quiet():
                # Nothing is counted or open anywhere: skip the empty stretch at once.
                self._evaluated_until_ms = (watermark // self._hop_ms) * self._hop_ms
                break
            end_ms = self._evaluated_until_ms + self._hop_ms
            step: list[AlertEvent] = []
            for key in list(self._series):
                event = self._evaluate(key, self._series[key], end_ms)
                if event is not None:
                    step.append(event)
            self._evaluated_until_ms = end_ms
            self._prune(end_ms)
            alerts.extend(sorted(step, key=lambda a: (a.entity, a.source, a.kind)))
        if self._evaluated_until_ms != before:
            self._mark(_CLOCK)
        return alerts

    def _quiet(self) -> bool:
        return all(not s.buckets and s.incident is None for s in self._series.values())

    def window_stats(self, key: SeriesKey, end_ms: int, span_s: int | None = None) -> WindowStats:
        """The statistics of one series' window of ``span_s`` (default: the short
        window) ending at ``end_ms``."""
        series = self._series.get(key) or _Series()
        span = (span_s or self.config.window_s) // self.config.hop_s
        end_index = end_ms // self._hop_ms
        return self._stats(series, end_index - span, end_index)[0]

    def _stats(
        self, series: _Series, start_index: int, end_index: int
    ) -> tuple[WindowStats, float, float]:
        """Window stats, plus the baseline's effective weight and extra variance."""
        cfg = self.config
        n = k = 0
        for i in range(start_index, end_index):
            b = series.buckets.get(i)
            if b is not None:
                n += b.total
                k += b.negative
        cache = self._baseline_blocks(series, start_index)
        n_base, k_base = cache.n, cache.k
        lo = start_index - self._baseline_buckets
        # The partial blocks at either end, each judged as one block.
        for edge in (
            range(lo, cache.first_block * self._window_buckets),
            range(max(lo, cache.end_block * self._window_buckets), start_index),
        ):
            n_edge = k_edge = 0
            for i in edge:
                b = series.buckets.get(i)
                if b is not None:
                    n_edge += b.total
                    k_edge += b.negative
            if n_edge and not self._outlier(k_edge, n_edge, cache.p_all):
                n_base += n_edge
                k_base += k_edge
        weight = n_base + cfg.prior_weight
        p0 = (k_base + cfg.prior_share * cfg.prior_weight) / weight if weight else cfg.prior_share
        p0 = min(max(p0, 1e-6), 1.0 - 1e-6)
        tau2 = extra_variance(
            cache.k_sq_over_n, cache.k, cache.n, cache.blocks, cfg.dispersion_guard
        )
        z = adjusted_z(k, n, p0, weight, tau2)
        share = k / n if n else 0.0
        stats = WindowStats(
            start_index * self._hop_ms, end_index * self._hop_ms, n, k, share, p0, z
        )
        return stats, weight, tau2

    def _outlier(self, k: int, n: int, p: float) -> bool:
        """A block far outside what the rest of the baseline says (an earlier incident)."""
        if not 0.0 < p < 1.0:
            return False
        return (k - n * p) ** 2 > _OUTLIER_Z**2 * n * p * (1.0 - p)

    def _baseline_blocks(self, series: _Series, window_start_index: int) -> _BaselineCache:
        """Sums over the window-aligned blocks wholly inside the baseline, cached.

        Blocks that are outliers against the whole baseline are left out of its share
        and spread: an incident is not the entity's normal behaviour, and leaving it in
        would blunt detection (and resolve incidents early) for hours afterwards. A
        lasting shift becomes the majority and so, within half a baseline, the normal.
        """
        lo = window_start_index - self._baseline_buckets
        first = -(-lo // self._window_buckets)
        end = window_start_index // self._window_buckets
        for cache in series.caches:
            if cache.first_block == first and cache.end_block == end:
                return cache
        present = [
            block
            for j in range(first, end)
            if (block := series.blocks.get(j)) is not None and block[0] > 0
        ]
        n_all = sum(b[0] for b in present)
        p_all = sum(b[1] for b in present) / n_all if n_all else 0.0
        n = k = blocks = 0
        k_sq_over_n = 0.0
        for total, negative in present:
            if not self._outlier(negative, total, p_all):
                n += total
                k += negative
                k_sq_over_n += negative * negative / total
                blocks += 1
        cache = _BaselineCache(first, end, p_all, n, k, k_sq_over_n, blocks)
        # One entry per window length in use; the oldest is the one no longer asked for.
        series.caches.append(cache)
        del series.caches[: -len(self._spans)]
        return cache

    def _qualifies(self, stats: WindowStats) -> bool:
        cfg = self.config
        return (
            stats.negatives >= cfg.min_negatives
            and stats.share >= cfg.share_floor
            and stats.share >= cfg.min_lift * stats.baseline
            and stats.z >= cfg.z_threshold
        )

    def _evaluate(self, key: SeriesKey, series: _Series, end_ms: int) -> AlertEvent | None:
        cfg = self.config
        end_index = end_ms // self._hop_ms
        in_window = any(
            i in series.buckets for i in range(end_index - self._window_buckets, end_index)
        )
        if not in_window and series.incident is None:
            return None
        self.stats.windows += 1
        stats = self._stats(series, end_index - self._window_buckets, end_index)[0]
        incident = series.incident
        if incident is None:
            if end_ms < series.cooldown_until_ms:
                return None
            if self._qualifies(stats):
                return self._raise(key, series, stats)
            # A moderate spike that lasts: the longer window has the evidence the
            # short one lacks, at the same false-alarm threshold.
            for span in self._spans[1:]:
                long_stats = self._stats(series, end_index - span, end_index)[0]
                if self._qualifies(long_stats):
                    return self._raise(key, series, long_stats)
            return None
        # The baseline leaves the incident's blocks out, so "back near the baseline"
        # means back to normal, not merely that the incident became part of the mean.
        incident.recovered = incident.recovered + 1 if stats.z <= cfg.resolve_z else 0
        self._mark(_STATUS, key)
        if incident.recovered < cfg.resolve_hops:
            return None
        series.incident = None
        # No window that still overlaps the incident may raise it again.
        longest_ms = self._spans[-1] * self._hop_ms
        series.cooldown_until_ms = max(series.cooldown_until_ms, end_ms + longest_ms)
        self._mark(_STATUS, key)
        self.stats.resolved += 1
        event = AlertEvent(
            alert_id=incident.alert_id,
            kind="resolved",
            entity=key[0],
            source=key[1],
            window_start_ms=stats.start_ms,
            window_end_ms=stats.end_ms,
            negative_share=stats.share,
            baseline_share=stats.baseline,
            z=stats.z,
            volume=stats.volume,
            negative_count=stats.negatives,
            severity=incident.severity,
        )
        self._enqueue(series, event)
        return event

    def _raise(self, key: SeriesKey, series: _Series, stats: WindowStats) -> AlertEvent:
        severity = severity_for(stats.share, stats.baseline, self.config)
        event = AlertEvent(
            alert_id=alert_id(key[0], key[1], stats.start_ms),
            kind="raised",
            entity=key[0],
            source=key[1],
            window_start_ms=stats.start_ms,
            window_end_ms=stats.end_ms,
            negative_share=stats.share,
            baseline_share=stats.baseline,
            z=stats.z,
            volume=stats.volume,
            negative_count=stats.negatives,
            severity=severity,
            examples=self._examples(series, stats.start_ms, stats.end_ms),
        )
        series.incident = _Incident(event.alert_id, severity)
        series.cooldown_until_ms = stats.end_ms + self.config.cooldown_s * 1000
        self.stats.raised += 1
        self._mark(_STATUS, key)
        self._enqueue(series, event)
        return event

    def _examples(self, series: _Series, start_ms: int, end_ms: int) -> tuple[Example, ...]:
        pool: list[Example] = []
        for i in range(start_ms // self._hop_ms, end_ms // self._hop_ms):
            b = series.buckets.get(i)
            if b is not None:
                pool.extend(b.examples)
        return tuple(sorted(pool, key=Example.rank)[: self.config.max_examples])

    def _enqueue(self, series: _Series, event: AlertEvent) -> None:
        if self._outbox_enabled:
            series.outbox.append(event)

    def _prune(self, end_ms: int) -> None:
        """Drop buckets no future window or baseline reads, and series with nothing left."""
        oldest_needed = self._oldest_needed_index()
        per_block = self._window_buckets
        for key in list(self._series):
            series = self._series[key]
            if series.oldest is not None and series.oldest < oldest_needed:
                if oldest_needed - series.oldest <= len(series.buckets):
                    for i in range(series.oldest, oldest_needed):
                        if series.buckets.pop(i, None) is not None:
                            self._mark(_BUCKET, key, i)
                        if (i + 1) % per_block == 0:  # the block's last bucket is gone
                            series.blocks.pop(i // per_block, None)
                else:  # after a long gap: cheaper to look at what is there
                    for i in [i for i in series.buckets if i < oldest_needed]:
                        del series.buckets[i]
                        self._mark(_BUCKET, key, i)
                    for j in [j for j in series.blocks if (j + 1) * per_block <= oldest_needed]:
                        del series.blocks[j]
                series.oldest = oldest_needed if series.buckets else None
            if series.idle(end_ms):
                del self._series[key]
                self._mark(_STATUS, key)

    # -- delivery ------------------------------------------------------------------

    def pending(self) -> list[AlertEvent]:
        """Alerts decided but not yet acknowledged as published (after a restore)."""
        return [a for s in self._series.values() for a in s.outbox]

    def acknowledge(self, event: AlertEvent) -> None:
        """The caller published ``event``: forget it from the outbox."""
        key = (event.entity, event.source)
        series = self._series.get(key)
        if series is None:
            return
        kept = [a for a in series.outbox if (a.alert_id, a.kind) != (event.alert_id, event.kind)]
        if len(kept) != len(series.outbox):
            series.outbox = kept
            self._mark(_STATUS, key)
            if series.idle(self._evaluated_until_ms or 0):
                del self._series[key]

    # -- persistence ---------------------------------------------------------------

    def _mark(self, kind: str, key: SeriesKey = ("", ""), index: int = 0) -> None:
        self._dirty[(kind, key[0], key[1], index)] = None

    def drain_changes(self) -> list[tuple[str, JsonValue]]:
        """Records changed since the last call, as ``(record key, value)``; ``None``
        means deleted. Replaying them in order through :meth:`restore` rebuilds the
        detector."""
        out: list[tuple[str, JsonValue]] = []
        for kind, entity, source, index in self._dirty:
            if kind == _CLOCK:
                out.append(
                    (
                        _record_key(_CLOCK),
                        {"max": self._max_time_ms, "until": self._evaluated_until_ms},
                    )
                )
                continue
            series = self._series.get((entity, source))
            value: JsonValue
            if kind == _STATUS:
                value = series.status_json() if series is not None else None
                out.append((_record_key(_STATUS, entity, source), value))
            else:
                bucket = series.buckets.get(index) if series is not None else None
                value = bucket.to_json() if bucket is not None else None
                out.append((_record_key(_BUCKET, entity, source, index), value))
        self._dirty.clear()
        return out

    @classmethod
    def restore(
        cls,
        config: DetectorConfig,
        records: Iterable[tuple[str, JsonValue]],
        *,
        outbox: bool = False,
    ) -> Detector:
        """Rebuild a detector from the latest value of each record key."""
        detector = cls(config, outbox=outbox)
        for record_key, value in records:
            if value is None:
                continue
            parts = json.loads(record_key)
            kind = parts[0]
            if kind == _CLOCK:
                clock = _dict(value)
                detector._max_time_ms = _opt_int(clock.get("max"))
                detector._evaluated_until_ms = _opt_int(clock.get("until"))
                continue
            key: SeriesKey = (str(parts[1]), str(parts[2]))
            series = detector._series.setdefault(key, _Series())
            if kind == _STATUS:
                status = _dict(value)
                incident = status.get("incident")
                series.incident = _Incident.from_json(incident) if incident else None
                series.cooldown_until_ms = _int(status["cooldown_until"])
                series.outbox = [AlertEvent.from_json(_dict(a)) for a in _list(status["outbox"])]
            elif kind == _BUCKET:
                index = int(parts[3])
                bucket = _Bucket.from_json(value)
                series.buckets[index] = bucket
                block = series.blocks.setdefault(index // detector._window_buckets, [0, 0])
                block[0] += bucket.total
                block[1] += bucket.negative
                series.oldest = index if series.oldest is None else min(series.oldest, index)
            else:
                raise ValueError(f"unknown record kind {kind!r}")
        return detector

    # -- introspection -------------------------------------------------------------

    @property
    def watermark_ms(self) -> int | None:
        if self._max_time_ms is None:
            return None
        return self._max_time_ms - self.config.lateness_s * 1000

    @property
    def evaluated_until_ms(self) -> int | None:
        return self._evaluated_until_ms

    def open_incidents(self) -> dict[SeriesKey, str]:
        return {k: s.incident.alert_id for k, s in self._series.items() if s.incident}


def _keep_top(examples: list[Example], example: Example, limit: int) -> None:
    """Keep the ``limit`` most negative examples, deterministically (ties by doc id)."""
    if any(e.doc_id == example.doc_id for e in examples):
        return
    examples.append(example)
    examples.sort(key=Example.rank)
    del examples[limit:]


# --- JSON helpers: the changelog is JSON, read back with checks ---------------------


def _int(value: JsonValue) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return int(value)


def _opt_int(value: JsonValue) -> int | None:
    return None if value is None else _int(value)


def _float(value: JsonValue) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _list(value: JsonValue) -> list[JsonValue]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {value!r}")
    return value


def _dict(value: JsonValue) -> dict[str, JsonValue]:
    if not isinstance(value, dict):
        raise ValueError(f"expected an object, got {value!r}")
    return value


def _severity(value: str) -> Severity:
    if value == "high":
        return "high"
    if value == "medium":
        return "medium"
    if value == "low":
        return "low"
    raise ValueError(f"unknown severity {value!r}")


def _example(value: JsonValue) -> Example:
    doc_id, text, score = _list(value)
    return Example(str(doc_id), str(text), _float(score))
