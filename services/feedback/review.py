"""The review queue: documents the model is least sure of, so users are asked those first.

A Redis sorted set per model (``review:<model>``), scored by the margin between the
two highest label scores of the latest prediction. A sorted set rather than a topic
because the console needs "the least confident documents right now": it reads the
lowest scores in one call, a document appears once however often it is re-scored,
and a document leaves the queue when its label settles (the aggregation removes it)
or when it expires from the store (removed on read). Only documents with a margin of
at most ``review_max_margin`` enter, and the set keeps the ``review_capacity`` least
confident ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import redis
from sentiflow_client.v1 import events_pb2, feedback_pb2

from sentiflow.errors import InvalidInputError
from sentiflow.text import has_nul
from services.feedback import votes
from services.feedback.keys import Keys
from services.feedback.signals import MAX_LABEL_CHARS

DEFAULT_LIST_ITEMS = 50
MAX_LIST_ITEMS = 1000


def list_query(request: feedback_pb2.ListReviewRequest, default_model: str) -> tuple[str, int]:
    """The (model, limit) a ListReview asks for, or InvalidInputError saying what is wrong.

    The limit is bounded because every item costs a read of its document.
    """
    if len(request.model) > MAX_LABEL_CHARS or has_nul(request.model):
        raise InvalidInputError(f"model is not a model name (over {MAX_LABEL_CHARS} or NUL)")
    if request.limit > MAX_LIST_ITEMS:
        raise InvalidInputError(
            f"limit must be 1 to {MAX_LIST_ITEMS} (or 0 for {DEFAULT_LIST_ITEMS}), "
            f"not {request.limit}"
        )
    return request.model or default_model, request.limit or DEFAULT_LIST_ITEMS


def margin(prediction: events_pb2.ModelPrediction) -> float | None:
    """Top score minus runner-up; None when there are fewer than two scores."""
    scores = sorted((s.score for s in prediction.scores), reverse=True)
    if len(scores) < 2:
        return None
    return float(scores[0] - scores[1])


class ReviewQueue:
    def __init__(self, client: redis.Redis, keys: Keys, max_margin: float, capacity: int) -> None:
        self._client = client
        self._keys = keys
        self._max_margin = max_margin
        self._capacity = capacity

    def offer(self, predictions: Sequence[events_pb2.Prediction]) -> int:
        """Queue every production answer close enough to call; return how many."""
        pipe = self._client.pipeline(transaction=False)
        models: set[str] = set()
        queued = 0
        for prediction in predictions:
            for answer in prediction.predictions:
                m = margin(answer)
                if m is not None and m <= self._max_margin:
                    pipe.zadd(self._keys.review(answer.model), {prediction.document.id: m})
                    models.add(answer.model)
                    queued += 1
        for model in models:
            # Keep the least confident: drop everything ranked past the capacity.
            pipe.zremrangebyrank(self._keys.review(model), self._capacity, -1)
        if queued:
            pipe.execute()
        return queued

    def next(self, model: str, count: int) -> list[tuple[str, float]]:
        """Up to ``count`` (doc id, margin), least confident first, still worth asking.

        Entries whose document expired from the store or whose label has settled since
        (a replayed docs.scored record can bring one back) are removed on the way.
        """
        key = self._keys.review(model)
        out: list[tuple[str, float]] = []
        start = 0
        while len(out) < count:
            # The client types ZRANGE's reply loosely: (member, score) pairs here.
            reply: list[tuple[bytes, float]] = cast(
                "list[tuple[bytes, float]]",
                self._client.zrange(key, start, start + 2 * count - 1, withscores=True),
            )
            batch = [(doc.decode(), float(score)) for doc, score in reply]
            if not batch:
                break
            stale = self._stale(model, [doc for doc, _ in batch])
            if stale:
                self._client.zrem(key, *stale)
            out += [(doc, score) for doc, score in batch if doc not in stale]
            start += len(batch) - len(stale)
        return out[:count]

    def _stale(self, model: str, doc_ids: Sequence[str]) -> set[str]:
        pipe = self._client.pipeline(transaction=False)
        for doc_id in doc_ids:
            pipe.exists(self._keys.doc(doc_id))
            pipe.get(self._keys.agg(doc_id))
        replies = pipe.execute()
        stale: set[str] = set()
        for i, doc_id in enumerate(doc_ids):
            exists, raw = replies[2 * i], replies[2 * i + 1]
            if not exists:
                stale.add(doc_id)
            elif raw is not None:
                state = votes.decode(raw, doc_id).models.get(model)
                if state is not None and state.settled is not None:
                    stale.add(doc_id)
        return stale
