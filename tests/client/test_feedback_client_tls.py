"""The light Feedback clients against a real feedback service behind TLS."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from sentiflow_client import AsyncFeedbackClient, FeedbackClient, Tls

from tests.support.certs import SERVER_NAME, Pki
from tests.support.feedback import Service, publish, scored, wait_for


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert isinstance(error, grpc.Call)
    return error.code()


def test_tls(feedback_tls: Service, pki: Pki) -> None:
    _stored_tls(feedback_tls, pki, "t-1")
    tls = Tls(ca_file=pki.ca, server_name=SERVER_NAME)
    with FeedbackClient(feedback_tls.address, api_key="key-alice", tls=tls) as alice:
        assert alice.correct("t-1", "negative")
        assert alice.get_document("t-1").document.id == "t-1"

    async def main() -> str:
        async with AsyncFeedbackClient(
            feedback_tls.address, api_key="key-bob", tls=Tls(ca_file=pki.ca)
        ) as bob:
            return await bob.confirm("t-1")

    assert asyncio.run(main())
    with FeedbackClient(feedback_tls.address, api_key="key-alice", retry=None) as plaintext:
        assert _code(plaintext.stats) == grpc.StatusCode.UNAVAILABLE
    untrusted = Tls(ca_file=pki.stranger_ca)
    with FeedbackClient(
        feedback_tls.address, api_key="key-alice", tls=untrusted, retry=None
    ) as client:
        assert _code(client.stats) == grpc.StatusCode.UNAVAILABLE


def _stored_tls(service: Service, pki: Pki, *doc_ids: str) -> None:
    topics = service.settings.topics
    publish(
        service.settings.kafka,
        topics.full(topics.docs_scored),
        [scored(d, "positive") for d in doc_ids],
    )
    with FeedbackClient(service.address, api_key="key-alice", tls=Tls(ca_file=pki.ca)) as c:

        def known() -> bool | None:
            try:
                return all(c.get_document(d).document.id == d for d in doc_ids) or None
            except grpc.RpcError:
                return None

        wait_for(known, f"{doc_ids} in the feedback store")
