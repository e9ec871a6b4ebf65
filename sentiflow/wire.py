"""What a record says about its own bytes: the ``content-type`` header, and the
headers a dead letter keeps for its way back.

Every record sentiflow produces names its value's format in a ``content-type``
header, ``application/x-protobuf; messageType=sentiflow.v1.Document``: the media type
protobuf-aware tools recognise, with the fully qualified message name as a parameter,
so a Kafka UI, Kafka Connect, or a Java or Go consumer can pick the message from the
published descriptor set without knowing which topic carries what. A producer outside
sentiflow may send ``application/json`` Documents to docs.raw instead.

A dead letter carries the rejected record's headers, so that redriving sends the
record back as it first came; the dead letter's own headers (its content type, why
and by whom it was rejected) are told apart by name and left behind.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

CONTENT_TYPE_HEADER = "content-type"
PROTOBUF_MEDIA_TYPE = "application/x-protobuf"
JSON_MEDIA_TYPE = "application/json"
# Other spellings of a protobuf binary payload: the registered type and its aliases.
# Protobuf in a Confluent Schema Registry frame (``sentiflow.schemaregistry``); read
# as protobuf, since decoding tells a frame from bare bytes by its first byte.
CONFLUENT_PROTOBUF_MEDIA_TYPE = "application/vnd.confluent.protobuf"
PROTOBUF_MEDIA_TYPES = frozenset(
    [
        PROTOBUF_MEDIA_TYPE,
        "application/protobuf",
        "application/x-protobuffer",
        CONFLUENT_PROTOBUF_MEDIA_TYPE,
    ]
)
MESSAGE_TYPE_PARAMETER = "messagetype"  # parameter names are case-insensitive

# A dead letter's own headers: everything named with this prefix, plus its content type.
DLQ_HEADER_PREFIX = "sentiflow-dlq-"
DLQ_REASON_HEADER = f"{DLQ_HEADER_PREFIX}reason"
DLQ_SERVICE_HEADER = f"{DLQ_HEADER_PREFIX}service"
# The rejected record's content type, kept under another name: the dead letter's own
# ``content-type`` describes the Rejected message around it.
DLQ_ORIGINAL_CONTENT_TYPE_HEADER = f"{DLQ_HEADER_PREFIX}original-content-type"

HeaderList = list[tuple[str, bytes]]


def protobuf_content_type(message: type[Message] | Message | Descriptor) -> str:
    """``application/x-protobuf; messageType=<package>.<Message>`` for a message type."""
    descriptor = message if isinstance(message, Descriptor) else message.DESCRIPTOR
    return f"{PROTOBUF_MEDIA_TYPE}; messageType={descriptor.full_name}"


def header(headers: Sequence[tuple[str, bytes]], name: str) -> bytes | None:
    """The last value of header ``name`` (names compared without case), or None."""
    wanted = name.lower()
    found = None
    for key, value in headers:
        if key.lower() == wanted:
            found = value
    return found


def with_content_type(headers: Sequence[tuple[str, bytes]] | None, content_type: str) -> HeaderList:
    """``headers`` with a ``content-type``, unless they already name one."""
    kept = list(headers or ())
    if header(kept, CONTENT_TYPE_HEADER) is None:
        kept.append((CONTENT_TYPE_HEADER, content_type.encode()))
    return kept


class MediaType:
    """A parsed ``content-type`` value: the type (lowercased) and its parameters."""

    __slots__ = ("parameters", "type")

    def __init__(self, value: str) -> None:
        kind, *params = value.split(";")
        self.type = kind.strip().lower()
        self.parameters: dict[str, str] = {}
        for param in params:
            name, sep, raw = param.partition("=")
            if sep:
                self.parameters[name.strip().lower()] = raw.strip().strip('"')

    @property
    def message_type(self) -> str | None:
        return self.parameters.get(MESSAGE_TYPE_PARAMETER)

    @property
    def charset(self) -> str | None:
        return self.parameters.get("charset")


def dead_letter_headers(
    original: Sequence[tuple[str, bytes]], *, reason: str, service: str
) -> HeaderList:
    """A dead letter's headers: the rejected record's own (its content type renamed),
    then why and by whom it was rejected. The dead letter's content type is added
    when it is produced."""
    out: HeaderList = []
    for key, value in original:
        if key.lower() == CONTENT_TYPE_HEADER:
            out.append((DLQ_ORIGINAL_CONTENT_TYPE_HEADER, value))
        elif not key.lower().startswith(DLQ_HEADER_PREFIX):
            out.append((key, value))
    out.append((DLQ_REASON_HEADER, reason.encode()))
    out.append((DLQ_SERVICE_HEADER, service.encode()))
    return out


def original_headers(dead_letter: Sequence[tuple[str, bytes]]) -> HeaderList:
    """The rejected record's headers, as ``dead_letter_headers`` kept them."""
    out: HeaderList = []
    for key, value in dead_letter:
        name = key.lower()
        if name == DLQ_ORIGINAL_CONTENT_TYPE_HEADER:
            out.append((CONTENT_TYPE_HEADER, value))
        elif name != CONTENT_TYPE_HEADER and not name.startswith(DLQ_HEADER_PREFIX):
            out.append((key, value))
    return out
