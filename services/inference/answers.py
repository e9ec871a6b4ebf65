"""One answer per (document, model version), whatever happens to the stream.

Dynamic int8 quantization scales activations per batch, so the same text can score a
hair differently beside different neighbours; a record replayed after a crash lands in
a different batch. To keep "the same document always gets the same prediction from
the same model version" true, the first answer for a (model, version, document id)
is stored in Redis with SET NX and every later one, from any instance, is replaced by
it.

If Redis fails, the store raises :class:`TransientError` and the Kafka loop waits
(reporting not-ready) until it answers again. Publishing a fresh answer instead would
break the promise exactly when it matters: an earlier answer may sit in Redis, unread,
and a fresh one the store never kept could be contradicted by the next replay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis
from prometheus_client import Counter

from sentiflow.config import RedisSettings
from sentiflow.errors import TransientError
from sentiflow.redisclient import key

LOOKUPS = Counter("sentiflow_inference_answer_cache", "answer cache outcomes", ["outcome"])


def _unavailable(exc: redis.RedisError, documents: int) -> TransientError:
    """Any Redis failure, a refused command included, says nothing about the documents:
    it is one to wait out (the loop logs it), never a reason to dead-letter them."""
    LOOKUPS.labels("unavailable").inc(documents)
    return TransientError(f"answer store unavailable: {exc}")


class AnswerStore:
    def __init__(self, client: redis.Redis, settings: RedisSettings, ttl_s: int) -> None:
        self._client = client
        self._settings = settings
        self._ttl_s = ttl_s

    def _key(self, model: str, version: str, doc_id: str) -> str:
        return key(self._settings, "answer", model, version, doc_id)

    def get(self, model: str, version: str, doc_ids: Sequence[str]) -> dict[str, bytes]:
        """Stored answers for these documents (those with none are left out)."""
        if not doc_ids:
            return {}
        try:
            values = self._client.mget([self._key(model, version, d) for d in doc_ids])
        except redis.RedisError as exc:
            raise _unavailable(exc, len(doc_ids)) from exc
        # The client is built without decode_responses, so values are bytes.
        found = {d: v for d, v in zip(doc_ids, values, strict=True) if isinstance(v, bytes)}
        LOOKUPS.labels("hit").inc(len(found))
        return found

    def settle(self, model: str, version: str, answers: Mapping[str, bytes]) -> dict[str, bytes]:
        """Store answers unless one exists; return the answer that stands for each."""
        if not answers:
            return {}
        ids = list(answers)
        try:
            pipe = self._client.pipeline(transaction=False)
            for doc_id in ids:
                pipe.set(
                    self._key(model, version, doc_id), answers[doc_id], nx=True, ex=self._ttl_s
                )
            for doc_id in ids:
                pipe.get(self._key(model, version, doc_id))
            replies = pipe.execute()
        except redis.RedisError as exc:
            raise _unavailable(exc, len(ids)) from exc
        stood = {
            d: bytes(v) if v is not None else answers[d]
            for d, v in zip(ids, replies[len(ids) :], strict=True)
        }
        LOOKUPS.labels("stored").inc(sum(1 for r in replies[: len(ids)] if r))
        return stood
