"""What the inference service accepts, as pure checks that raise InvalidInputError.

Each error carries the dead-letter reason for the Kafka path; gRPC answers any of them
with INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Sequence

from sentiflow_client.v1 import events_pb2

from sentiflow.errors import InvalidInputError
from sentiflow.text import clean_for_model, has_nul


def model_text(text: str, max_chars: int) -> str:
    """The text the model will read, or InvalidInputError saying why there is none."""
    if has_nul(text):
        raise InvalidInputError("text contains a NUL character")
    if len(text) > max_chars:
        raise InvalidInputError(
            f"text has {len(text)} code points; the limit is {max_chars}",
            reason=events_pb2.REJECT_REASON_TOO_LARGE,
        )
    cleaned = clean_for_model(text)
    if not cleaned:
        raise InvalidInputError(
            "text is empty or whitespace only", reason=events_pb2.REJECT_REASON_EMPTY_TEXT
        )
    return cleaned


def batch_texts(texts: Sequence[str], max_items: int, max_chars: int) -> list[str]:
    if not texts:
        raise InvalidInputError("batch is empty", reason=events_pb2.REJECT_REASON_MISSING_FIELD)
    if len(texts) > max_items:
        raise InvalidInputError(
            f"batch has {len(texts)} texts; the limit is {max_items}",
            reason=events_pb2.REJECT_REASON_TOO_LARGE,
        )
    out = []
    for i, text in enumerate(texts):
        try:
            out.append(model_text(text, max_chars))
        except InvalidInputError as exc:
            raise InvalidInputError(f"texts[{i}]: {exc.detail}", reason=exc.reason) from None
    return out
