"""The review queue as the page shows it: least confident documents first.

The feedback service keeps the queue in Redis (:mod:`services.feedback.review`) and
exposes it through no RPC, so the console reads it with the same class, from the same
Redis, and the document text and answer from the same store.
"""

from __future__ import annotations

from typing import Any

import redis

from sentiflow.config import RedisSettings
from services.console.corrections import ConsoleError
from services.feedback.keys import Keys
from services.feedback.review import ReviewQueue
from services.feedback.store import DocumentStore


class ReviewReader:
    def __init__(self, settings: RedisSettings) -> None:
        self._client = redis.Redis.from_url(settings.url, socket_timeout=5)
        keys = Keys.of(settings)
        # Margin and capacity only matter to the writer; reading uses neither.
        self._queue = ReviewQueue(self._client, keys, max_margin=1.0, capacity=1)
        self._store = DocumentStore(self._client, keys, retention_s=1)

    def next(self, model: str, limit: int) -> list[dict[str, Any]]:
        try:
            queued = self._queue.next(model, limit)
            stored = self._store.get_many([doc_id for doc_id, _ in queued])
        except redis.RedisError as exc:
            raise ConsoleError(503, f"the review queue is unavailable ({exc})") from exc
        out = []
        for (doc_id, margin), found in zip(queued, stored, strict=True):
            if found is None:
                continue
            answer = found.prediction(model)
            out.append(
                {
                    "id": doc_id,
                    "margin": round(margin, 4),
                    "text": found.document.text,
                    "source": found.document.source,
                    "entities": [e.id for e in found.document.entities],
                    "model": model,
                    "version": answer.version if answer else "",
                    "label": answer.label if answer else "",
                    "scores": {s.label: round(s.score, 4) for s in answer.scores} if answer else {},
                }
            )
        return out

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._client.close()
