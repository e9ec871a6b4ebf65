"""Where the feedback service keeps things in Redis, in one place.

Every key starts with the configured Redis prefix and ``feedback:``. Composite hash
fields are JSON arrays, so model names, versions, labels and user names may contain
any character.

- ``doc:<doc id>`` (hash): the scored document (field ``doc``), each prediction by
  (model, version), the latest version per model; expires after the retention.
- ``agg:<doc id>`` (string): the document's aggregate, i.e. signals, votes and settled
  labels (JSON, see :mod:`services.feedback.votes`).
- ``trust:<partition>`` (hash): per user, agreements and disagreements with settled
  labels, learned within that partition of feedback.events.
- ``quality:<partition>`` (hash): confusion counts per (model, version, settled label,
  predicted label).
- ``counts:<partition>`` (hash): events, duplicates, rejected, settled, replaced.
- ``labels`` (hash): each (model, version)'s labels, in the model's order.
- ``partitions``, ``users`` (sets): partitions that hold counts; users who sent signals.
- ``review:<model>`` (sorted set): documents by the margin between their top two
  scores, least confident first (see :mod:`services.feedback.review`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sentiflow.config import RedisSettings
from sentiflow.redisclient import key

DOC_FIELD = "doc"


def field(*parts: str) -> str:
    """A composite hash field that any text can go into."""
    return json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))


def parts(raw: bytes | str) -> list[str]:
    value = json.loads(raw)
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"not a composite field: {raw!r}")
    return value


def as_bytes(value: bytes | str) -> bytes:
    """A Redis reply as bytes (the client is typed for both; it returns bytes here)."""
    return value.encode() if isinstance(value, str) else value


def prediction_field(model: str, version: str) -> str:
    return field("pred", model, version)


def latest_field(model: str) -> str:
    return field("latest", model)


@dataclass(frozen=True)
class Keys:
    base: str

    @classmethod
    def of(cls, redis: RedisSettings) -> Keys:
        return cls(key(redis, "feedback", ""))

    def doc(self, doc_id: str) -> str:
        return f"{self.base}doc:{doc_id}"

    def agg(self, doc_id: str) -> str:
        return f"{self.base}agg:{doc_id}"

    def trust(self, partition: int) -> str:
        return f"{self.base}trust:{partition}"

    def quality(self, partition: int) -> str:
        return f"{self.base}quality:{partition}"

    def counts(self, partition: int) -> str:
        return f"{self.base}counts:{partition}"

    def review(self, model: str) -> str:
        return f"{self.base}review:{model}"

    @property
    def labels(self) -> str:
        return f"{self.base}labels"

    @property
    def partitions(self) -> str:
        return f"{self.base}partitions"

    @property
    def users(self) -> str:
        return f"{self.base}users"
