"""Confluent Schema Registry framing for the protobuf values sentiflow produces.

Off by default: values are bare protobuf, as they have always been. With a registry
URL set (``SENTIFLOW_SCHEMA_REGISTRY__URL``), each value is framed the Confluent way:
magic byte 0, the 4-byte big-endian schema id, the message indexes (zigzag varints
naming the message inside its .proto file), then the protobuf bytes, and its
``content-type`` says so (``application/vnd.confluent.protobuf``). Confluent's
deserializers in Java, Go, Kafka Connect and ksqlDB read such records without any
sentiflow descriptor. The schemas are registered (topic-name strategy,
``<topic>-value``) by confluent-kafka's own ``ProtobufSerializer``, once per topic and
type; the frame it writes before an empty message is that pair's prefix, so a record
costs a concatenation, not a second serialization.

Consumers accept both forms whatever the setting: a framed value is told from a bare
one by its first byte, because a protobuf message cannot start with 0 (that would be
field number 0, which protobuf forbids), and ``unframe`` needs no registry, since a
sentiflow consumer knows which message its topic carries. The serializer and its
dependencies (``sentiflow[schema-registry]``) are imported only when a URL is set.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from sentiflow.config import SchemaRegistrySettings
from sentiflow.wire import CONFLUENT_PROTOBUF_MEDIA_TYPE, protobuf_content_type

MAGIC_BYTE = 0
_HEADER_BYTES = 5  # magic byte and schema id


class FramingError(DecodeError, ValueError):
    """A value that starts with the magic byte but is no Confluent frame (a DecodeError,
    so every reader that rejects undecodable values rejects it too)."""


@dataclass
class _State:
    client: Any = None
    conf: dict[str, Any] = field(default_factory=dict)
    prefixes: dict[tuple[str, str], bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_state = _State()


# -- pure framing ----------------------------------------------------------------------


def is_framed(value: bytes | None) -> bool:
    """Whether ``value`` is a Confluent frame rather than bare protobuf."""
    return value is not None and len(value) > 0 and value[0] == MAGIC_BYTE


def _varint(data: bytes, at: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if at >= len(data):
            raise FramingError("frame ends inside its message indexes")
        byte = data[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), at  # zigzag
        shift += 7
        if shift > 63:
            raise FramingError("message index too long")


def unframe(value: bytes) -> tuple[int, list[int], bytes]:
    """A frame's schema id, message indexes and protobuf payload.

    One index 0 (the first message of its file) is written as a single 0, the
    count alone: the shortcut Confluent's serializers take.
    """
    if len(value) < _HEADER_BYTES + 1 or value[0] != MAGIC_BYTE:
        raise FramingError("not a Confluent protobuf frame")
    schema_id = int.from_bytes(value[1:_HEADER_BYTES], "big")
    count, at = _varint(value, _HEADER_BYTES)
    if count < 0 or count > len(value):
        raise FramingError(f"bad message index count {count}")
    indexes: list[int] = []
    for _ in range(count):
        index, at = _varint(value, at)
        indexes.append(index)
    return schema_id, indexes or [0], value[at:]


def payload(value: bytes) -> bytes:
    """The protobuf bytes of a value, framed or bare."""
    return unframe(value)[2] if is_framed(value) else value


M = TypeVar("M", bound=Message)


def parse(message_type: type[M], value: bytes | None) -> M:
    """``value`` as a ``message_type``, framed or bare: how every reader reads a record.

    Raises DecodeError (a bad frame included) when it is neither.
    """
    msg = message_type()
    msg.ParseFromString(payload(value or b""))
    return msg


def framed_content_type(message: type[Message] | Message) -> str:
    return f"{CONFLUENT_PROTOBUF_MEDIA_TYPE}; messageType={message.DESCRIPTOR.full_name}"


def content_type(message: type[Message] | Message) -> str:
    """The ``content-type`` of ``message``'s values as produced now (framed or bare)."""
    return framed_content_type(message) if enabled() else protobuf_content_type(message)


# -- the registry ------------------------------------------------------------------------


def configure(settings: SchemaRegistrySettings) -> bool:
    """Frame produced values from now on when a URL is set; return whether one is.

    A ``mock://`` URL is confluent-kafka's in-process registry (tests and demos).
    """
    if settings.url is None:
        shutdown()
        return False
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient
    except ImportError as exc:  # the extra is not installed
        raise RuntimeError(
            "SENTIFLOW_SCHEMA_REGISTRY__URL is set but the registry client is not "
            "installed: pip install 'sentiflow[schema-registry]'"
        ) from exc
    conf: dict[str, Any] = {"url": settings.url}
    if settings.basic_auth_user_info is not None:
        conf["basic.auth.user.info"] = settings.basic_auth_user_info.get_secret_value()
    with _state.lock:
        _state.client = SchemaRegistryClient.new_client(conf)
        _state.conf = {
            "use.deprecated.format": False,
            "auto.register.schemas": settings.auto_register,
            "use.latest.version": not settings.auto_register,
        }
        _state.prefixes = {}
    return True


def enabled() -> bool:
    return _state.client is not None


def shutdown() -> None:
    with _state.lock:
        _state.client = None
        _state.prefixes = {}


def registry_client() -> Any:
    """The client in use (None when off): what a test asks about registered schemas."""
    return _state.client


def _prefix(topic: str, message: Message) -> bytes:
    """The frame before ``message``'s payload on ``topic``, registering its schema the
    first time."""
    key = (topic, message.DESCRIPTOR.full_name)
    found = _state.prefixes.get(key)
    if found is not None:
        return found
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    with _state.lock:
        serializer = ProtobufSerializer(type(message), _state.client, dict(_state.conf))
        empty = type(message)()
        prefix: bytes = serializer(empty, SerializationContext(topic, MessageField.VALUE))
        _state.prefixes[key] = prefix
    return prefix


def frame(topic: str, message: Message) -> bytes:
    """``message`` framed for ``topic`` (bare protobuf when the registry is off)."""
    if _state.client is None:
        return message.SerializeToString()
    return _prefix(topic, message) + message.SerializeToString()


def frame_bytes(topic: str, message_type: type[Message], value: bytes) -> bytes:
    """Already serialized ``value`` of ``message_type`` framed for ``topic``."""
    if _state.client is None:
        return value
    return _prefix(topic, message_type()) + value
