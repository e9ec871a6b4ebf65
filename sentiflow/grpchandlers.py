"""Hand-registered gRPC handlers: decoding and error mapping done once for every service.

Services register handlers over raw bytes instead of the generated servicer so that a
request that fails to deserialize (for example invalid UTF-8 in a string field)
becomes INVALID_ARGUMENT with a message, not an opaque INTERNAL, and every exception
a handler raises reaches the caller as the status :func:`sentiflow.errors.grpc_status`
picks for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from sentiflow.errors import InvalidInputError, grpc_status

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
OnCode = Callable[[grpc.StatusCode], None]


def parse_request(message_type: type[M], data: bytes) -> M:
    """Decode a request or raise InvalidInputError saying what was wrong with it."""
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise InvalidInputError(
            f"request is not a valid {message_type.DESCRIPTOR.name} "
            f"(invalid UTF-8 in a string field?): {exc}"
        ) from exc
    return msg


def abort(context: grpc.ServicerContext, exc: Exception, on_code: OnCode | None = None) -> NoReturn:
    """End the call with the status mapped from ``exc``; unexpected errors are logged."""
    code = grpc_status(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("unexpected error in a gRPC handler")
    if on_code is not None:
        on_code(code)
    context.abort(code, str(exc) or type(exc).__name__)


def unary_handler(
    request_type: type[M],
    fn: Callable[[Any, grpc.ServicerContext], Message],
    *,
    observe: Callable[[float], None] | None = None,
    on_code: OnCode | None = None,
) -> grpc.RpcMethodHandler[bytes, bytes]:
    """A unary-unary handler over bytes: parse, call ``fn``, map errors, time the call.

    ``observe`` receives the seconds each call took; ``on_code`` the status of each
    failed call (for error metrics).
    """

    def run(data: bytes, context: grpc.ServicerContext) -> bytes:
        started = time.monotonic()
        try:
            return fn(parse_request(request_type, data), context).SerializeToString()
        except Exception as exc:
            abort(context, exc, on_code)
        finally:
            if observe is not None:
                observe(time.monotonic() - started)

    return grpc.unary_unary_rpc_method_handler(run)
