"""TLS and mTLS on the shared gRPC server builder, checked with real handshakes.

The health service answers on the same port as the APIs, so a health check over the
secure channel is what a client, the console or a probe would see.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from sentiflow.config import GrpcClientTlsSettings, GrpcTlsSettings, Settings
from sentiflow.grpcserver import create_server, set_serving
from services.console.corrections import SERVICE as FEEDBACK
from services.console.corrections import FeedbackGateway
from tests.support.certs import SERVER_NAME, Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _serve(tls: GrpcTlsSettings | None) -> Iterator[str]:
    server, port, health = create_server("127.0.0.1:0", [], ["test.Service"], tls=tls)
    server.start()
    set_serving(health, ["test.Service"], True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[str]:
    yield from _serve(GrpcTlsSettings(cert_file=pki.server.cert, key_file=pki.server.key))


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[str]:
    yield from _serve(
        GrpcTlsSettings(cert_file=pki.server.cert, key_file=pki.server.key, client_ca_file=pki.ca)
    )


def _check(channel: grpc.Channel) -> int:
    stub: Any = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service="test.Service"), timeout=5)
    return int(reply.status)


def _secure(
    address: str, ca: Path, pair: tuple[Path, Path] | None = None, name: str | None = None
) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=pair[1].read_bytes() if pair else None,
        certificate_chain=pair[0].read_bytes() if pair else None,
    )
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(address, creds, options=options)


def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert isinstance(error, grpc.Call)
    return error.code()


SERVING = health_pb2.HealthCheckResponse.SERVING


def test_plaintext_stays_the_default() -> None:
    assert not Settings().grpc_tls.enabled
    for address in _serve(None):
        with grpc.insecure_channel(address) as channel:
            assert _check(channel) == SERVING


def test_tls_server_answers_over_tls_only(tls_server: str, pki: Pki) -> None:
    with _secure(tls_server, pki.ca) as channel:
        assert _check(channel) == SERVING
    with _secure(tls_server, pki.ca, name=SERVER_NAME) as channel:
        assert _check(channel) == SERVING, "the certificate's DNS name, by override"
    with grpc.insecure_channel(tls_server) as channel:
        assert _code(lambda: _check(channel)) == grpc.StatusCode.UNAVAILABLE
    with _secure(tls_server, pki.stranger_ca) as channel:
        assert _code(lambda: _check(channel)) == grpc.StatusCode.UNAVAILABLE, "untrusted CA"
    with _secure(tls_server, pki.ca, name="elsewhere.test") as channel:
        assert _code(lambda: _check(channel)) == grpc.StatusCode.UNAVAILABLE, "wrong name"


def test_mtls_server_requires_a_client_certificate_from_its_ca(mtls_server: str, pki: Pki) -> None:
    with _secure(mtls_server, pki.ca, (pki.client.cert, pki.client.key)) as channel:
        assert _check(channel) == SERVING
    with _secure(mtls_server, pki.ca) as channel:
        assert _code(lambda: _check(channel)) == grpc.StatusCode.UNAVAILABLE, "no certificate"
    with _secure(mtls_server, pki.ca, (pki.stranger.cert, pki.stranger.key)) as channel:
        assert _code(lambda: _check(channel)) == grpc.StatusCode.UNAVAILABLE, "foreign CA"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    monkeypatch.setenv("SENTIFLOW_GRPC_TLS__CERT_FILE", str(pki.server.cert))
    monkeypatch.setenv("SENTIFLOW_GRPC_TLS__KEY_FILE", str(pki.server.key))
    monkeypatch.setenv("SENTIFLOW_GRPC_TLS__CLIENT_CA_FILE", str(pki.ca))
    tls = Settings().grpc_tls
    assert tls.enabled
    assert (tls.cert_file, tls.key_file, tls.client_ca_file) == (
        pki.server.cert,
        pki.server.key,
        pki.ca,
    )


def test_incomplete_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="both cert_file and key_file"):
        GrpcTlsSettings(cert_file=tmp_path / "server.crt")
    with pytest.raises(ValidationError, match="client_ca_file"):
        GrpcTlsSettings(client_ca_file=tmp_path / "ca.crt")


def test_a_missing_certificate_fails_at_start(tmp_path: Path) -> None:
    tls = GrpcTlsSettings(cert_file=tmp_path / "none.crt", key_file=tmp_path / "none.key")
    with pytest.raises(FileNotFoundError):
        create_server("127.0.0.1:0", [], ["test.Service"], tls=tls)


def test_the_console_reaches_feedback_over_mtls(pki: Pki) -> None:
    """The console's readiness dials the feedback service's health check: with TLS on
    there it must dial TLS too, with its client certificate when mTLS is required."""
    tls = GrpcTlsSettings(cert_file=pki.server.cert, key_file=pki.server.key, client_ca_file=pki.ca)
    server, port, health = create_server("127.0.0.1:0", [], [FEEDBACK], tls=tls)
    server.start()
    set_serving(health, [FEEDBACK], True)
    address = f"127.0.0.1:{port}"

    def reachable(client_tls: GrpcClientTlsSettings) -> bool:
        gateway = FeedbackGateway(address, None, forward_api_key=False, timeout_s=5, tls=client_tls)
        try:
            return gateway.reachable()
        finally:
            gateway.close()

    try:
        assert reachable(
            GrpcClientTlsSettings(
                enabled=True,
                ca_file=pki.ca,
                cert_file=pki.client.cert,
                key_file=pki.client.key,
                server_name=SERVER_NAME,
            )
        )
        assert not reachable(GrpcClientTlsSettings(enabled=True, ca_file=pki.ca))
        assert not reachable(GrpcClientTlsSettings())
    finally:
        server.stop(grace=None)


def test_client_tls_settings_are_checked(pki: Pki) -> None:
    with pytest.raises(ValidationError, match="enabled is false"):
        GrpcClientTlsSettings(ca_file=pki.ca)
    with pytest.raises(ValidationError, match="needs its key"):
        GrpcClientTlsSettings(enabled=True, cert_file=pki.client.cert)
