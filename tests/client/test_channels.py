"""Channel settings of the light client: the retry service config, TLS options, deadlines.

The retry policy is checked twice: as the JSON gRPC is given, and in effect, against
a real gRPC server whose GetModel fails a scripted number of times first. Deadlines
and the API key are checked on every method of every client, as a real server sees
them (``time_remaining`` and the metadata of each call).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from sentiflow_client import (
    RETRY_OVERLOAD,
    AsyncClassifierClient,
    AsyncFeedbackClient,
    ClassifierClient,
    FeedbackClient,
    RetryPolicy,
    Tls,
    signal_request,
)
from sentiflow_client.channels import CLASSIFIER_SERVICE, ChannelSettings
from sentiflow_client.v1 import classifier_pb2, events_pb2


def test_default_policy_retries_unavailable_with_backoff_and_throttling() -> None:
    config = RetryPolicy().service_config([CLASSIFIER_SERVICE])
    assert config == {
        "methodConfig": [
            {
                "name": [{"service": "sentiflow.v1.Classifier"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2.0s",
                    "backoffMultiplier": 2.0,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }
    overload = RETRY_OVERLOAD.service_config(["x.Y"])["methodConfig"][0]["retryPolicy"]
    assert overload["retryableStatusCodes"] == ["RESOURCE_EXHAUSTED", "UNAVAILABLE"]


def test_channel_options_carry_the_policy_and_the_name_override() -> None:
    options = dict(
        ChannelSettings(tls=Tls(server_name="inference.prod"), options=(("a", 1),)).channel_options(
            CLASSIFIER_SERVICE
        )
    )
    assert options["grpc.enable_retries"] == 1
    assert json.loads(options["grpc.service_config"]) == RetryPolicy().service_config(
        [CLASSIFIER_SERVICE]
    )
    assert options["grpc.ssl_target_name_override"] == "inference.prod"
    assert options["a"] == 1
    assert ChannelSettings(retry=None).channel_options(CLASSIFIER_SERVICE) == []


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="between 2 and 5"):
        RetryPolicy(max_attempts=9)
    with pytest.raises(ValueError, match="subset"):
        RetryPolicy(codes=frozenset({"INTERNAL"}))
    with pytest.raises(ValueError, match="needs its key"):
        Tls(cert_file=tmp_path / "client.crt")
    with pytest.raises(ValueError, match="positive"):
        ClassifierClient("127.0.0.1:1", timeout_s=0)
    with pytest.raises(FileNotFoundError):
        ClassifierClient("127.0.0.1:1", tls=Tls(ca_file=tmp_path / "missing.crt"))
    with ClassifierClient("127.0.0.1:1") as client, pytest.raises(ValueError, match="positive"):
        client.classify("x", timeout_s=-1)


class Flaky:
    """A Classifier whose GetModel fails with ``code`` for the first ``failures`` calls."""

    def __init__(self, code: grpc.StatusCode, failures: int) -> None:
        self.code = code
        self.failures = failures
        self.calls = 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            CLASSIFIER_SERVICE,
            {
                "GetModel": grpc.unary_unary_rpc_method_handler(
                    self._get_model,
                    request_deserializer=classifier_pb2.GetModelRequest.FromString,
                    response_serializer=classifier_pb2.GetModelResponse.SerializeToString,
                )
            },
        )
        self.server.add_generic_rpc_handlers([handler])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _get_model(
        self, _request: classifier_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> classifier_pb2.GetModelResponse:
        with self._lock:
            self.calls += 1
            failing = self.calls <= self.failures
        if failing:
            context.abort(self.code, "scripted failure")
        return classifier_pb2.GetModelResponse(
            versions=[events_pb2.ModelVersion(model="sentiment", version="v1")]
        )


@pytest.fixture
def flaky(request: pytest.FixtureRequest) -> Iterator[Flaky]:
    code, failures = request.param
    server = Flaky(code, failures)
    yield server
    server.server.stop(grace=None)


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("flaky", [(UNAVAILABLE, 2)], indirect=True)
def test_unavailable_is_retried_by_default(flaky: Flaky) -> None:
    with ClassifierClient(f"127.0.0.1:{flaky.port}") as client:
        assert [v.version for v in client.get_model()] == ["v1"]
    assert flaky.calls == 3


@pytest.mark.parametrize("flaky", [(UNAVAILABLE, 2)], indirect=True)
def test_async_client_retries_the_same_way(flaky: Flaky) -> None:
    async def main() -> list[str]:
        async with AsyncClassifierClient(f"127.0.0.1:{flaky.port}") as client:
            return [v.version for v in await client.get_model()]

    assert asyncio.run(main()) == ["v1"]
    assert flaky.calls == 3


@pytest.mark.parametrize("flaky", [(UNAVAILABLE, 1)], indirect=True)
def test_no_retry_policy_means_one_attempt(flaky: Flaky) -> None:
    with (
        ClassifierClient(f"127.0.0.1:{flaky.port}", retry=None) as client,
        pytest.raises(grpc.RpcError) as caught,
    ):
        client.get_model()
    assert isinstance(caught.value, grpc.Call)
    assert caught.value.code() == UNAVAILABLE
    assert flaky.calls == 1


@pytest.mark.parametrize("flaky", [(EXHAUSTED, 1)], indirect=True)
def test_resource_exhausted_is_retried_only_when_asked(flaky: Flaky) -> None:
    with ClassifierClient(f"127.0.0.1:{flaky.port}") as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.get_model()
        assert isinstance(caught.value, grpc.Call)
        assert caught.value.code() == EXHAUSTED
    assert flaky.calls == 1
    with ClassifierClient(f"127.0.0.1:{flaky.port}", retry=RETRY_OVERLOAD) as client:
        assert [v.version for v in client.get_model()] == ["v1"]
    assert flaky.calls == 2


@pytest.mark.parametrize("flaky", [(UNAVAILABLE, 100)], indirect=True)
def test_retries_give_up_after_max_attempts(flaky: Flaky) -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
    with (
        ClassifierClient(f"127.0.0.1:{flaky.port}", retry=policy) as client,
        pytest.raises(grpc.RpcError) as caught,
    ):
        client.get_model()
    assert isinstance(caught.value, grpc.Call)
    assert caught.value.code() == UNAVAILABLE
    assert flaky.calls == 3


class Recorder(grpc.GenericRpcHandler):
    """Answers any method by recording its deadline and API key, then refusing it."""

    def __init__(self) -> None:
        self.calls: dict[str, tuple[float | None, str | None]] = {}
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers([self])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _record(self, method: str, context: grpc.ServicerContext) -> None:
        key = dict(context.invocation_metadata()).get("x-api-key")
        self.calls[method.rsplit("/", 1)[1]] = (
            context.time_remaining(),
            key if isinstance(key, str) else None,
        )
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "recorded")

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method: str = handler_call_details.method

        def unary(_request: bytes, context: grpc.ServicerContext) -> bytes:
            self._record(method, context)
            return b""

        def stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            # Read the client's half first: ending the call while the client is still
            # sending would race its last write, which then fails as INTERNAL.
            for _ in requests:
                pass
            self._record(method, context)
            yield b""

        if method.endswith("/ClassifyStream"):
            return grpc.stream_stream_rpc_method_handler(stream)
        return grpc.unary_unary_rpc_method_handler(unary)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.server.stop(grace=None)


def _failed(call: Callable[[], object]) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert isinstance(caught.value, grpc.Call)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# The deadlines the tests set, far enough apart that the time a call takes to arrive
# never makes one look like another.
TIMEOUTS = (5.0, 20.0, 40.0)


def _deadlines(recorder: Recorder) -> dict[str, tuple[float, str | None]]:
    """Each method's deadline (which of TIMEOUTS it was) and the key it carried."""
    out = {}
    for method, (remaining, key) in recorder.calls.items():
        assert remaining is not None, f"{method} was sent without a deadline"
        out[method] = (min(TIMEOUTS, key=lambda t: abs(t - remaining)), key)
    return out


def test_every_sync_call_carries_a_deadline_and_the_key(recorder: Recorder) -> None:
    address = f"127.0.0.1:{recorder.port}"
    with ClassifierClient(address, api_key="k", timeout_s=20) as c:
        _failed(lambda: c.classify("x"))
        _failed(lambda: c.classify_batch(["x"]))
        _failed(lambda: list(c.classify_stream(["x"])))
        _failed(lambda: c.get_model(timeout_s=5))
    with FeedbackClient(address, api_key="f", timeout_s=40) as f:
        _failed(lambda: f.submit("d", "negative"))
        _failed(lambda: f.submit_batch([signal_request("d", "negative")], timeout_s=5))
        _failed(lambda: f.get_document("d"))
        _failed(lambda: f.stats())
        _failed(lambda: f.review(timeout_s=5))
    assert _deadlines(recorder) == {
        "Classify": (20.0, "k"),
        "ClassifyBatch": (20.0, "k"),
        "ClassifyStream": (20.0, "k"),
        "GetModel": (5.0, "k"),
        "Submit": (40.0, "f"),
        "SubmitBatch": (5.0, "f"),
        "GetDocument": (40.0, "f"),
        "Stats": (40.0, "f"),
        "ListReview": (5.0, "f"),
    }


def test_every_async_call_carries_a_deadline_and_the_key(recorder: Recorder) -> None:
    address = f"127.0.0.1:{recorder.port}"

    async def refused(call: Awaitable[object]) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    async def drain(stream: AsyncIterator[object]) -> None:
        async for _ in stream:
            pass

    async def main() -> None:
        async with AsyncClassifierClient(address, api_key="k", timeout_s=20) as c:
            await refused(c.classify("x"))
            await refused(c.classify_batch(["x"], timeout_s=5))
            await refused(drain(c.classify_stream(["x"], timeout_s=5)))
            await refused(c.get_model())
        async with AsyncFeedbackClient(address, api_key="f", timeout_s=40) as f:
            await refused(f.confirm("d", timeout_s=5))
            await refused(f.submit_batch([signal_request("d", "negative")]))
            await refused(f.get_document("d", timeout_s=5))
            await refused(f.stats(timeout_s=5))
            await refused(f.review())

    asyncio.run(main())
    assert _deadlines(recorder) == {
        "Classify": (20.0, "k"),
        "ClassifyBatch": (5.0, "k"),
        "ClassifyStream": (5.0, "k"),
        "GetModel": (20.0, "k"),
        "Submit": (5.0, "f"),
        "SubmitBatch": (40.0, "f"),
        "GetDocument": (5.0, "f"),
        "Stats": (5.0, "f"),
        "ListReview": (40.0, "f"),
    }
