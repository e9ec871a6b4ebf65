"""The values a document's fields may take, checked the same way on every path.

A channel's record (ingest) and a JSON Document on docs.raw (inference) name their
fields differently, but a title, an id or a time is acceptable, or refused with the
same reason, whichever way it arrived.
"""

from __future__ import annotations

import math

from sentiflow_client.v1 import events_pb2

from sentiflow.dlq import RejectError
from sentiflow.normalize import check_encodable

R = events_pb2
MAX_ID_CHARS = 512
MAX_SHORT_FIELD_CHARS = 4096  # url, title, lang, attribute values
MAX_SOURCE_CHARS = 256
MAX_LANG_CHARS = 35


def short_string(value: object, name: str, *, limit: int = MAX_SHORT_FIELD_CHARS) -> str:
    if value is None:
        return ""
    if type(value) is str and len(value) <= limit and value.isascii() and "\x00" not in value:
        return value  # the common case, checked at C speed
    if not isinstance(value, str):
        raise RejectError(
            R.REJECT_REASON_INVALID_FIELD, f"{name} must be a string, got {type(value).__name__}"
        )
    if len(value) > limit:
        raise RejectError(R.REJECT_REASON_INVALID_FIELD, f"{name} longer than {limit} characters")
    if "\x00" in value:
        raise RejectError(R.REJECT_REASON_INVALID_FIELD, f"{name} contains NUL")
    check_encodable(value, name)
    return value


def id_string(value: object, name: str) -> str:
    # Integers are common ids (tweet ids); floats and booleans are not ids.
    if type(value) is int:
        return str(value)
    return short_string(value, name, limit=MAX_ID_CHARS).strip()


def scalar_string(value: object, name: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    return short_string(value, name)


def time_value(value: object, name: str) -> object:
    if type(value) in _TIME_TYPES:
        return value  # the common case, without isinstance's subclass checks
    if value is None or (isinstance(value, str | int | float) and not isinstance(value, bool)):
        return value
    raise RejectError(
        R.REJECT_REASON_INVALID_FIELD,
        f"{name} must be a string or a number, got {type(value).__name__}",
    )


_TIME_TYPES = frozenset([int, str, float])
