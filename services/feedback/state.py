"""Reading what the aggregation wrote: aggregates, live quality and counts (for the API)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis

from services.feedback import quality, votes
from services.feedback.keys import Keys, as_bytes, parts

COUNT_FIELDS = ("events", "duplicates", "rejected", "settled", "replaced")


@dataclass(frozen=True)
class Summary:
    events: int  # signals counted (duplicates and rejects not included)
    settled_documents: int
    users: int
    duplicates: int
    rejected: int


def quality_cells(
    raw: Mapping[bytes, bytes],
) -> dict[tuple[str, str], dict[quality.Cell, int]]:
    """One partition's ``quality`` hash as (model, version) -> confusion counts."""
    out: dict[tuple[str, str], dict[quality.Cell, int]] = {}
    for name, value in raw.items():
        model, version, true, predicted = parts(name)
        cells = out.setdefault((model, version), {})
        cells[(true, predicted)] = cells.get((true, predicted), 0) + int(value)
    return out


def version_qualities(
    partitions: Sequence[Mapping[bytes, bytes]], labels: Mapping[bytes, bytes], model: str = ""
) -> list[quality.VersionQuality]:
    """Quality per (model, version) from every partition's counts, sorted by name."""
    merged: dict[tuple[str, str], list[Mapping[quality.Cell, int]]] = {}
    for raw in partitions:
        for key, cells in quality_cells(raw).items():
            merged.setdefault(key, []).append(cells)
    known: dict[tuple[str, str], list[str]] = {}
    for name, value in labels.items():
        m, v = parts(name)
        known[(m, v)] = list(json.loads(value))
    return [
        quality.version_quality(m, v, known.get((m, v), []), quality.merge(cells))
        for (m, v), cells in sorted(merged.items())
        if not model or m == model
    ]


class FeedbackState:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys

    def aggregate(self, doc_id: str) -> votes.DocState | None:
        raw = self._client.get(self._keys.agg(doc_id))
        return votes.decode(as_bytes(raw), doc_id) if raw is not None else None

    def _partitions(self) -> list[int]:
        return sorted(int(m) for m in self._client.smembers(self._keys.partitions))

    def quality(self, model: str = "") -> list[quality.VersionQuality]:
        pipe = self._client.pipeline(transaction=False)
        for p in self._partitions():
            pipe.hgetall(self._keys.quality(p))
        pipe.hgetall(self._keys.labels)
        *partitions, labels = pipe.execute()
        return version_qualities(partitions, labels, model)

    def summary(self) -> Summary:
        pipe = self._client.pipeline(transaction=False)
        for p in self._partitions():
            pipe.hmget(self._keys.counts(p), list(COUNT_FIELDS))
        pipe.scard(self._keys.users)
        *counts, users = pipe.execute()
        totals = dict.fromkeys(COUNT_FIELDS, 0)
        for row in counts:
            for name, value in zip(COUNT_FIELDS, row, strict=True):
                totals[name] += int(value or 0)
        return Summary(
            events=totals["events"],
            settled_documents=totals["settled"],
            users=int(users),
            duplicates=totals["duplicates"],
            rejected=totals["rejected"],
        )
