"""The light Feedback clients against a real feedback service: plaintext and TLS,
blocking and asyncio, API keys and deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from sentiflow_client import AsyncFeedbackClient, FeedbackClient, signal_request
from sentiflow_client.feedback import CONFIRM

from tests.support.feedback import Service, publish, scored, wait_for


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert isinstance(error, grpc.Call)
    return error.code()


def _stored(service: Service, *doc_ids: str) -> None:
    """Publish the documents to docs.scored and wait until the store answers for them."""
    topics = service.settings.topics
    publish(
        service.settings.kafka,
        topics.full(topics.docs_scored),
        [scored(d, "positive") for d in doc_ids],
    )
    with FeedbackClient(service.address, api_key="key-alice") as client:

        def known() -> bool | None:
            try:
                return all(client.get_document(d).document.id == d for d in doc_ids) or None
            except grpc.RpcError:
                return None

        wait_for(known, f"{doc_ids} in the feedback store")


def test_every_method_over_plaintext(feedback: Service) -> None:
    _stored(feedback, "c-1", "c-2", "c-3")
    with FeedbackClient(feedback.address, api_key="key-alice") as alice:
        assert alice.correct("c-1", "negative")
        assert alice.confirm("c-2")
        assert alice.submit("c-3", kind=CONFIRM)
        results = alice.submit_batch(
            [signal_request("c-1", "neutral"), signal_request("missing", "negative")]
        )
        assert results[0].event_id
        assert not results[0].error
        assert results[1].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        document = alice.get_document("c-1")
        assert document.document.id == "c-1"
        assert [p.label for p in document.predictions] == ["positive"]
        assert alice.stats("sentiment") is not None
        assert alice.review(limit=5) is not None
        assert _code(lambda: alice.get_document("missing")) == grpc.StatusCode.NOT_FOUND


def test_the_api_key_is_required_and_sent(feedback: Service) -> None:
    with FeedbackClient(feedback.address) as anonymous:
        assert _code(anonymous.stats) == grpc.StatusCode.UNAUTHENTICATED
    with FeedbackClient(feedback.address, api_key="who-knows") as stranger:
        assert _code(lambda: stranger.confirm("c-1")) == grpc.StatusCode.UNAUTHENTICATED
    with FeedbackClient(feedback.address, api_key="key-bob") as bob:
        assert bob.stats() is not None


def test_a_tiny_deadline_ends_the_call(feedback: Service) -> None:
    """Submit waits for Kafka's acknowledgement; a deadline far shorter than that ends
    the call with DEADLINE_EXCEEDED instead of waiting for it."""
    _stored(feedback, "d-1")
    with FeedbackClient(feedback.address, api_key="key-alice", timeout_s=1e-4) as client:
        assert _code(lambda: client.correct("d-1", "negative")) == (
            grpc.StatusCode.DEADLINE_EXCEEDED
        )


def test_asyncio_client(feedback: Service) -> None:
    _stored(feedback, "a-1")

    async def main() -> None:
        async with AsyncFeedbackClient(feedback.address, api_key="key-bob") as bob:
            assert await bob.correct("a-1", "negative")
            assert await bob.confirm("a-1")
            (result,) = await bob.submit_batch([signal_request("a-1", "neutral")])
            assert result.event_id
            assert (await bob.get_document("a-1")).document.id == "a-1"
            assert await bob.stats() is not None
            assert await bob.review() is not None
        async with AsyncFeedbackClient(feedback.address) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await anonymous.stats()
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(main())
