"""Channels to a sentiflow gRPC server: transport security, API keys, retries.

Everything a client needs to reach a server is decided here once, for the sync and the
asyncio clients alike:

* **TLS**: :class:`Tls` names the CA to trust (or the system roots), an optional client
  certificate and key (servers that require mTLS refuse a client without one) and an
  optional name to check the server certificate against instead of the address's host.
* **API key**: sent as ``x-api-key`` metadata on every call, which is where the servers
  look first (``authorization: Bearer <key>`` works too). Call credentials would be
  the gRPC way, but gRPC sends those only over TLS and the embedded stack is
  plaintext, so one mechanism serves both.
* **Retries**: a :class:`RetryPolicy` becomes the channel's service config, so gRPC
  itself retries with exponential backoff, within the call's deadline, and stops
  retrying (throttling) when most calls to a server fail.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

ChannelOption = tuple[str, Any]
Metadata = tuple[tuple[str, str], ...]

DEFAULT_TIMEOUT_S = 10.0

CLASSIFIER_SERVICE = "sentiflow.v1.Classifier"
FEEDBACK_SERVICE = "sentiflow.v1.FeedbackService"


@dataclass(frozen=True)
class Tls:
    """TLS for a channel; ``Tls()`` alone trusts the system's root certificates.

    ``ca_file``: PEM bundle of the CA(s) that signed the server certificate (a private
    CA, cert-manager's ``ca.crt``). ``cert_file`` and ``key_file``: this client's
    certificate chain and private key, for servers that require client certificates.
    ``server_name``: the name the server certificate must carry, when the address is
    not it (an IP, a port-forward, a load balancer).
    """

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs its key: set both cert_file and key_file")

    def credentials(self) -> grpc.ChannelCredentials:
        """Read the files now, so a wrong path fails when the client is made."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )

    def options(self) -> list[ChannelOption]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


# Status codes that the servers return only when nothing was done, or when doing it
# again changes nothing (see RetryPolicy).
RETRYABLE_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})


@dataclass(frozen=True)
class RetryPolicy:
    """Which failed calls gRPC tries again, and how soon.

    By default only ``UNAVAILABLE`` is retried, and it is safe for every method: the
    Classifier's methods only read; on the FeedbackService a Submit or SubmitBatch
    that failed UNAVAILABLE either recorded nothing (the store was down, the
    connection never carried the call) or may have recorded the signal whose
    acknowledgement timed out, and sending the same signal again only replaces that
    user's vote on the document with the same vote.

    ``RESOURCE_EXHAUSTED`` is safe too (the server refused before doing anything: all
    workers busy, the key's request quota or the user's signal budget spent) but is
    not retried unless asked for (:data:`RETRY_OVERLOAD`): a retry spends more of the
    quota it ran out of, and adds load to a server that said it has too much.

    gRPC retries a streaming call only until the first response arrives. Every
    attempt counts against the call's one deadline. ``max_attempts`` includes the
    first; gRPC allows at most 5.
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    backoff_multiplier: float = 2.0
    codes: frozenset[str] = frozenset({"UNAVAILABLE"})
    # gRPC's retryThrottling: each failed call costs a token, each success earns back
    # ``throttle_token_ratio``, and below half of the tokens nothing is retried, so a
    # server that is down or drowning is not hammered with retries.
    throttle_max_tokens: int = 10
    throttle_token_ratio: float = 0.1

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= 5:
            raise ValueError("max_attempts must be between 2 and 5 (gRPC's limit)")
        unknown = set(self.codes) - RETRYABLE_CODES
        if unknown or not self.codes:
            raise ValueError(
                f"retryable codes are a non-empty subset of {sorted(RETRYABLE_CODES)}, "
                f"not {sorted(self.codes)}"
            )
        if self.initial_backoff_s <= 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("backoffs must be positive, max_backoff_s >= initial_backoff_s")
        if self.backoff_multiplier <= 0:
            raise ValueError("backoff_multiplier must be positive")

    def service_config(self, services: Sequence[str]) -> dict[str, Any]:
        """The gRPC service config (``grpc.service_config``) applying this to ``services``."""
        return {
            "methodConfig": [
                {
                    "name": [{"service": name} for name in services],
                    "retryPolicy": {
                        "maxAttempts": self.max_attempts,
                        "initialBackoff": f"{self.initial_backoff_s}s",
                        "maxBackoff": f"{self.max_backoff_s}s",
                        "backoffMultiplier": self.backoff_multiplier,
                        "retryableStatusCodes": sorted(self.codes),
                    },
                }
            ],
            "retryThrottling": {
                "maxTokens": self.throttle_max_tokens,
                "tokenRatio": self.throttle_token_ratio,
            },
        }


RETRY_UNAVAILABLE = RetryPolicy()
RETRY_OVERLOAD = RetryPolicy(codes=RETRYABLE_CODES)


@dataclass(frozen=True)
class ChannelSettings:
    """How a client's channel is made; what the client constructors take, in one place."""

    tls: Tls | None = None
    retry: RetryPolicy | None = RETRY_UNAVAILABLE
    options: Sequence[ChannelOption] = field(default_factory=tuple)

    def channel_options(self, service: str) -> list[ChannelOption]:
        opts: list[ChannelOption] = []
        if self.retry is not None:
            opts.append(("grpc.enable_retries", 1))
            opts.append(("grpc.service_config", json.dumps(self.retry.service_config([service]))))
        # Without a policy gRPC still retries transparently a call that never left
        # this client (always safe), and nothing else.
        if self.tls is not None:
            opts.extend(self.tls.options())
        opts.extend(self.options)
        return opts


def open_channel(address: str, service: str, settings: ChannelSettings) -> grpc.Channel:
    """A blocking channel to ``address`` (``host:port``), plaintext unless ``settings.tls``."""
    options = settings.channel_options(service)
    if settings.tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, settings.tls.credentials(), options=options)


def open_aio_channel(address: str, service: str, settings: ChannelSettings) -> aio.Channel:
    """The asyncio (``grpc.aio``) counterpart of :func:`open_channel`."""
    options = settings.channel_options(service)
    if settings.tls is None:
        return aio.insecure_channel(address, options=options)
    return aio.secure_channel(address, settings.tls.credentials(), options=options)


def api_key_metadata(api_key: str | None) -> Metadata:
    return (("x-api-key", api_key),) if api_key else ()


def check_timeout(timeout_s: float) -> float:
    """Every call has a deadline: without one a call to a stuck server never returns."""
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")
    return timeout_s


class _Calls:
    """What every call carries: the API key and a deadline (the client's or its own)."""

    def __init__(self, api_key: str | None, timeout_s: float) -> None:
        self.metadata = api_key_metadata(api_key)
        self.timeout_s = check_timeout(timeout_s)

    def timeout(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else check_timeout(timeout_s)


class Connection(_Calls):
    """A blocking channel plus what every call on it carries."""

    def __init__(
        self,
        address: str,
        service: str,
        *,
        api_key: str | None,
        timeout_s: float,
        channel: ChannelSettings,
    ) -> None:
        super().__init__(api_key, timeout_s)
        self.channel = open_channel(address, service, channel)

    def close(self) -> None:
        self.channel.close()


class AsyncConnection(_Calls):
    """An asyncio channel plus what every call on it carries.

    Make it in the coroutine that uses it (``async with`` the client): a ``grpc.aio``
    channel belongs to the event loop it was made in.
    """

    def __init__(
        self,
        address: str,
        service: str,
        *,
        api_key: str | None,
        timeout_s: float,
        channel: ChannelSettings,
    ) -> None:
        super().__init__(api_key, timeout_s)
        self.channel = open_aio_channel(address, service, channel)

    async def close(self) -> None:
        await self.channel.close()
