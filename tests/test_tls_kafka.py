"""Kafka TLS and mTLS settings: what librdkafka and Faust (aiokafka) are given.

The embedded broker speaks plaintext only, so the real handshakes here are against a
local TLS endpoint that requires a client certificate from the test CA: it proves that
the librdkafka configuration and the Faust SSL context both trust the CA and present
the client certificate (an encrypted key included), which is all TLS adds to a broker
connection.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr, ValidationError

from sentiflow.config import KafkaSettings, Settings
from sentiflow.faustworker import credentials, ssl_context
from sentiflow.kafka import consumer_config, producer_config
from tests.support.certs import Pki, make_pki

PASSWORD = "s3cret"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), key_password=PASSWORD.encode())


def _mtls(pki: Pki, bootstrap: str = "kafka:9093", **extra: object) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=bootstrap,
        security_protocol="SSL",
        ssl_ca_file=pki.ca,
        ssl_cert_file=pki.client.cert,
        ssl_key_file=pki.client.key,
        ssl_key_password=SecretStr(PASSWORD),
        **extra,  # type: ignore[arg-type]
    )


def common_name(cert: Any) -> str:
    """The subject CN of a certificate as ``ssl`` decodes it."""
    for rdn in cert["subject"]:
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    raise AssertionError(f"no common name in {cert}")


class TlsEndpoint:
    """Accepts TLS connections that present a client certificate from the test CA,
    records the client's common name and hangs up (it speaks no Kafka)."""

    def __init__(self, pki: Pki) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(pki.server.cert, pki.server.key)
        self._context.load_verify_locations(pki.ca)
        self._context.verify_mode = ssl.CERT_REQUIRED
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.clients: list[str] = []
        self.handshake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with self._context.wrap_socket(conn, server_side=True) as tls:
                    self.clients.append(common_name(tls.getpeercert()))
                    self.handshake.set()
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def endpoint(pki: Pki) -> Iterator[TlsEndpoint]:
    server = TlsEndpoint(pki)
    yield server
    server.close()


def test_settings_map_to_librdkafka_properties(pki: Pki) -> None:
    kafka = _mtls(pki, extra_config={"ssl.endpoint.identification.algorithm": "none"})
    assert kafka.client_config() == {
        "bootstrap.servers": "kafka:9093",
        "security.protocol": "SSL",
        "ssl.ca.location": str(pki.ca),
        "ssl.certificate.location": str(pki.client.cert),
        "ssl.key.location": str(pki.client.key),
        "ssl.key.password": PASSWORD,
        "ssl.endpoint.identification.algorithm": "none",
    }
    for conf in (producer_config(kafka), consumer_config(kafka, "g")):
        assert conf["ssl.ca.location"] == str(pki.ca)
        assert conf["ssl.certificate.location"] == str(pki.client.cert)


def test_plaintext_and_system_roots_add_nothing() -> None:
    assert KafkaSettings().client_config() == {
        "bootstrap.servers": "127.0.0.1:19092",
        "security.protocol": "PLAINTEXT",
    }
    assert KafkaSettings(security_protocol="SSL").client_config() == {
        "bootstrap.servers": "127.0.0.1:19092",
        "security.protocol": "SSL",
    }
    assert credentials(KafkaSettings()) is None


def test_inconsistent_settings_are_refused(pki: Pki) -> None:
    with pytest.raises(ValidationError, match="use SSL or SASL_SSL"):
        KafkaSettings(ssl_ca_file=pki.ca)
    with pytest.raises(ValidationError, match="needs its key"):
        KafkaSettings(security_protocol="SSL", ssl_cert_file=pki.client.cert)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    monkeypatch.setenv("SENTIFLOW_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SENTIFLOW_KAFKA__SSL_CA_FILE", str(pki.ca))
    monkeypatch.setenv("SENTIFLOW_KAFKA__EXTRA_CONFIG", '{"ssl.cipher.suites": "HIGH"}')
    conf = Settings().kafka.client_config()
    assert conf["ssl.ca.location"] == str(pki.ca)
    assert conf["ssl.cipher.suites"] == "HIGH"


def test_faust_context_trusts_the_ca_and_presents_the_client_certificate(
    pki: Pki, endpoint: TlsEndpoint
) -> None:
    context = ssl_context(_mtls(pki))
    assert [common_name(c) for c in context.get_ca_certs()] == ["sentiflow test CA"], (
        "the configured CA replaces the system roots"
    )
    with (
        socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() is not None
        tls.recv(1)  # the endpoint hangs up once it has seen the certificate
    assert endpoint.handshake.wait(10)
    assert endpoint.clients == ["client"]


def test_faust_credentials_carry_the_context(pki: Pki) -> None:
    ssl_creds = credentials(_mtls(pki))
    assert isinstance(ssl_creds, faust.SSLCredentials)
    assert ssl_creds.context.get_ca_certs()
    sasl = _mtls(pki).model_copy(
        update={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "svc",
            "sasl_password": SecretStr("pw"),
        }
    )
    sasl_creds = credentials(sasl)
    assert isinstance(sasl_creds, faust.SASLCredentials)
    assert sasl_creds.ssl_context is not None
    assert sasl_creds.ssl_context.get_ca_certs()


def test_an_untrusted_server_is_refused(pki: Pki, endpoint: TlsEndpoint) -> None:
    kafka = _mtls(pki).model_copy(update={"ssl_ca_file": pki.stranger_ca})
    with (
        socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ssl_context(kafka).wrap_socket(raw, server_hostname="127.0.0.1")


def test_librdkafka_completes_an_mtls_handshake(pki: Pki, endpoint: TlsEndpoint) -> None:
    """The confluent client with these properties verifies the server (CA, and the
    IP in its certificate) and presents the client certificate, decrypting its key."""
    kafka = _mtls(pki, bootstrap=f"127.0.0.1:{endpoint.port}")
    admin = AdminClient(kafka.client_config())
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=3)  # no Kafka behind the handshake
    assert endpoint.handshake.wait(10)
    assert set(endpoint.clients) == {"client"}


def test_missing_files_fail_loudly(tmp_path: Path, pki: Pki) -> None:
    kafka = _mtls(pki).model_copy(update={"ssl_ca_file": tmp_path / "none.crt"})
    with pytest.raises(FileNotFoundError):
        ssl_context(kafka)
