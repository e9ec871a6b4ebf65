"""The light Classifier clients against a real inference server: plaintext and mTLS,
blocking and asyncio, API keys and deadlines."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial

import grpc
import pytest
from sentiflow_client import AsyncClassifierClient, ClassifierClient, Tls
from sentiflow_client.v1 import events_pb2

from tests.client.conftest import INFERENCE_KEY
from tests.support.certs import SERVER_NAME, Pki

DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
LABELS = {"negative", "neutral", "positive"}


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert isinstance(error, grpc.Call)
    return error.code()


def _mtls(pki: Pki, **extra: object) -> Tls:
    return Tls(ca_file=pki.ca, cert_file=pki.client.cert, key_file=pki.client.key, **extra)  # type: ignore[arg-type]


def _held_open(first: str, release: threading.Event) -> Iterator[str]:
    """One text, then a stream that stays open until released (or 30 s pass)."""
    yield first
    release.wait(30)


def test_every_method_over_plaintext(inference: str) -> None:
    with ClassifierClient(inference, api_key=INFERENCE_KEY) as client:
        (prediction,) = client.classify("stocks rally on strong earnings")
        assert prediction.label in LABELS
        assert prediction.model == "sentiment"
        batch = client.classify_batch(["stocks rally", "bank loss"])
        assert [len(b) for b in batch] == [1, 1]
        streamed = list(client.classify_stream(["a b", "oil slump", "gold"]))
        assert [r.request_id for r in streamed] == ["0", "1", "2"]
        assert streamed[1].predictions[0].label == client.classify("oil slump")[0].label
        (version,) = client.get_model("sentiment")
        assert version.stage == events_pb2.MODEL_STAGE_PRODUCTION


def test_the_api_key_is_required_and_sent(inference: str) -> None:
    with ClassifierClient(inference) as anonymous:
        assert _code(lambda: anonymous.classify("stocks")) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: list(anonymous.classify_stream(["x"]))) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    with ClassifierClient(inference, api_key="not-a-key") as stranger:
        assert _code(stranger.get_model) == grpc.StatusCode.UNAUTHENTICATED


def test_deadlines_bound_unary_and_streaming_calls(inference: str) -> None:
    with ClassifierClient(inference, api_key=INFERENCE_KEY, timeout_s=0.5) as client:
        # A stream the caller never closes ends at the client's deadline, not never.
        release = threading.Event()
        try:
            responses = client.classify_stream(_held_open("stocks rally", release))
            assert next(responses).request_id == "0"
            assert _code(lambda: next(responses)) == DEADLINE
        finally:
            release.set()
        # A per-call deadline overrides the client's (test_channels checks every method).
        release = threading.Event()
        try:
            responses = client.classify_stream(_held_open("stocks rally", release), timeout_s=30)
            assert next(responses).request_id == "0"
            release.set()
            assert list(responses) == [], "the stream ends when the caller closes it"
        finally:
            release.set()


def test_asyncio_client(inference: str) -> None:
    async def texts() -> AsyncIterator[str]:
        for text in ["stocks rally", "bank loss"]:
            yield text

    async def held_open(release: asyncio.Event) -> AsyncIterator[str]:
        yield "stocks rally"
        await asyncio.wait_for(release.wait(), 30)

    async def main() -> None:
        async with AsyncClassifierClient(inference, api_key=INFERENCE_KEY) as client:
            (prediction,) = await client.classify("stocks rally")
            assert prediction.label in LABELS
            assert len(await client.classify_batch(["a", "b", "c"])) == 3
            streamed = [r async for r in client.classify_stream(texts())]
            assert [r.request_id for r in streamed] == ["0", "1"]
            from_list = [r async for r in client.classify_stream(["x y"])]
            assert [r.request_id for r in from_list] == ["0"]
            (version,) = await client.get_model()
            assert version.model == "sentiment"
            release = asyncio.Event()
            stream = client.classify_stream(held_open(release), timeout_s=0.5)
            assert (await anext(stream)).request_id == "0"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await anext(stream)
            assert caught.value.code() == DEADLINE
            release.set()
        async with AsyncClassifierClient(inference) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await anonymous.get_model()
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(main())


def test_mtls_with_a_client_certificate(inference_mtls: str, pki: Pki) -> None:
    with ClassifierClient(inference_mtls, api_key=INFERENCE_KEY, tls=_mtls(pki)) as client:
        assert client.classify("stocks rally")[0].label in LABELS
        assert [r.request_id for r in client.classify_stream(["a", "b"])] == ["0", "1"]
    named = _mtls(pki, server_name=SERVER_NAME)
    with ClassifierClient(inference_mtls, api_key=INFERENCE_KEY, tls=named) as client:
        assert client.get_model()[0].model == "sentiment"

    async def main() -> str:
        async with AsyncClassifierClient(
            inference_mtls, api_key=INFERENCE_KEY, tls=_mtls(pki)
        ) as client:
            return (await client.classify("stocks rally"))[0].label

    assert asyncio.run(main()) in LABELS


def test_mtls_refuses_clients_without_the_right_certificate(inference_mtls: str, pki: Pki) -> None:
    refused = [
        Tls(ca_file=pki.ca),  # no client certificate
        Tls(ca_file=pki.ca, cert_file=pki.stranger.cert, key_file=pki.stranger.key),
        Tls(ca_file=pki.stranger_ca, cert_file=pki.client.cert, key_file=pki.client.key),
        _mtls(pki, server_name="elsewhere.test"),  # the certificate names someone else
    ]
    for tls in refused:
        with ClassifierClient(inference_mtls, api_key=INFERENCE_KEY, tls=tls, retry=None) as c:
            assert _code(partial(c.classify, "stocks")) == grpc.StatusCode.UNAVAILABLE, tls
    with ClassifierClient(inference_mtls, api_key=INFERENCE_KEY, retry=None) as plaintext:
        assert _code(lambda: plaintext.classify("stocks")) == grpc.StatusCode.UNAVAILABLE
