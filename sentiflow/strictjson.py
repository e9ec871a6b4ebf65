"""From bytes on the wire to a JSON value, with a reason for every refusal.

Strict JSON, the same for every reader of JSON documents (ingest's channels, JSON
Documents on docs.raw): no NaN or Infinity, no duplicate keys, bounded nesting, UTF-8
unless a charset is declared. Pure functions that raise ``RejectError`` with a reason
from the fixed set (``invalid_utf8``, ``invalid_json``, ``unsupported_encoding``) and
never anything else, whatever the input (the fuzz tests hold them to that).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterable

import msgspec
from sentiflow_client.v1 import events_pb2

from sentiflow.dlq import RejectError

R = events_pb2
MAX_JSON_DEPTH = 64

_UTF8_BOM = codecs.BOM_UTF8
# Longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_OTHER_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


# The first bytes of every byte-order mark, and of empty input.
BOM_LEADS = {b"\xef", b"\xff", b"\xfe", b"\x00", b""}


def foreign_bom(data: bytes) -> str | None:
    """The charset a leading UTF-16/32 byte-order mark announces, if any."""
    for bom, name in _OTHER_BOMS:
        if data.startswith(bom):
            return name
    return None


def decode_bytes(data: bytes, encoding: str = "utf-8") -> str:
    """Bytes to text: a UTF-8 BOM is dropped, anything else undecodable is rejected.

    Python's strict UTF-8 codec already refuses overlong forms, encoded surrogates
    (CESU-8) and truncated sequences. A UTF-16/32 payload is only accepted when that
    charset was declared (``encoding``); undeclared, it is ``unsupported_encoding``.
    """
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    elif encoding.lower().replace("_", "-") in {"utf-8", "utf8"}:
        other = foreign_bom(data)
        if other is not None:
            raise RejectError(
                R.REJECT_REASON_UNSUPPORTED_ENCODING,
                f"{other} byte-order mark, charset not declared",
            )
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        reason = (
            R.REJECT_REASON_INVALID_UTF8
            if codecs.lookup(encoding).name == "utf-8"
            else R.REJECT_REASON_UNSUPPORTED_ENCODING
        )
        raise RejectError(reason, f"not valid {encoding} at byte {exc.start}") from None
    except LookupError:
        raise RejectError(
            R.REJECT_REASON_UNSUPPORTED_ENCODING, f"unknown charset {encoding!r}"
        ) from None


# -- JSON -------------------------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RejectError(R.REJECT_REASON_INVALID_JSON, f"duplicate key {key[:100]!r}")
            seen.add(key)
    return obj


def _no_constants(name: str) -> object:
    raise RejectError(R.REJECT_REASON_INVALID_JSON, f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constants)


def _too_deep(text: str) -> bool:
    """Cheap pre-check so deeply nested input is refused before the parser recurses."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif ch in "]}":
            depth -= 1
    return False


# The C scanner json.loads uses underneath (typeshed does not declare the attribute).
_SCAN: Callable[[str, int], tuple[object, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_JSON_SPACE = " \t\n\r"


def parse_json(text: str) -> object:
    """Strict JSON: no NaN/Infinity, no duplicate keys, bounded nesting and numbers.

    Calls the C scanner directly (what ``json.loads`` does underneath, minus a layer
    of Python per call): this runs once per document.
    """
    if _too_deep(text):
        raise RejectError(R.REJECT_REASON_INVALID_JSON, f"nested deeper than {MAX_JSON_DEPTH}")
    start = 0
    if text[:1] in _JSON_SPACE:
        start = len(text) - len(text.lstrip(_JSON_SPACE))
    try:
        obj, end = _SCAN(text, start)
    except StopIteration as exc:
        raise RejectError(
            R.REJECT_REASON_INVALID_JSON, f"expecting value at char {exc.value}"
        ) from None
    except json.JSONDecodeError as exc:
        raise RejectError(R.REJECT_REASON_INVALID_JSON, f"{exc.msg} at char {exc.pos}") from None
    except (ValueError, RecursionError) as exc:
        # Integers over Python's 4300-digit conversion limit land here.
        raise RejectError(R.REJECT_REASON_INVALID_JSON, str(exc)[:200]) from None
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        raise RejectError(R.REJECT_REASON_INVALID_JSON, f"extra data at char {end}")
    return obj


# Escapes that decode to ":" ("\u003a", "\u003A"), which the colon count cannot see.
_ESCAPED_COLON = b"\\u003"
_FAST_DECODE = msgspec.json.Decoder().decode
_FAST_ENCODE = msgspec.json.Encoder().encode
_UNSURE = object()


def _fast_json(data: bytes) -> object:
    """What ``parse_json`` makes of UTF-8 ``data``, decoded by msgspec; ``_UNSURE``
    wherever msgspec's answer might differ (the strict parser then decides).

    msgspec refuses what the strict parser refuses (NaN and Infinity, invalid UTF-8,
    lone surrogates, integers over the digit limit), and a little more (numbers that
    overflow a float), but it keeps the last of duplicate keys and nests deeper.
    Duplicates show in the colons: outside strings JSON spells exactly one ":" per
    key, and re-encoding spells the decoded keys once each, so the counts differ
    exactly when a key was spelled twice.
    """
    if _ESCAPED_COLON in data:
        return _UNSURE
    try:
        value = _FAST_DECODE(data)
    except (msgspec.DecodeError, RecursionError):
        return _UNSURE  # the strict parser gives the reason
    if data.count(b"{") + data.count(b"[") > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        return _UNSURE
    if _FAST_ENCODE(value).count(b":") != data.count(b":"):
        return _UNSURE
    return value


def _deeper_than(value: object, limit: int) -> bool:
    """Whether containers nest more than ``limit`` deep (a long flat list does not)."""
    children: Iterable[object]
    if type(value) is dict:
        children = value.values()
    elif type(value) is list:
        children = value
    else:
        return False
    return limit <= 0 or any(_deeper_than(child, limit - 1) for child in children)


def parse_json_bytes(data: bytes, encoding: str = "utf-8") -> object:
    """``parse_json(decode_bytes(data, encoding))``: the same value, or the same
    refusal, several times faster for valid UTF-8 JSON, which msgspec decodes
    wherever ``_fast_json`` can vouch for its answer."""
    if encoding == "utf-8" and data[:1] not in BOM_LEADS:
        value = _fast_json(data)
        if value is not _UNSURE:
            return value
    return parse_json(decode_bytes(data, encoding))


def decode_line(line: bytes, encoding: str = "utf-8") -> str:
    """``decode_bytes`` for one record of a line-based input, fast for plain UTF-8.

    A record starting with "{" or a letter cannot start with a byte-order mark, so
    the strict decode alone decides.
    """
    if encoding == "utf-8" and line[:1] not in BOM_LEADS:
        try:
            return line.decode()
        except UnicodeDecodeError as exc:
            raise RejectError(
                R.REJECT_REASON_INVALID_UTF8, f"not valid utf-8 at byte {exc.start}"
            ) from None
    return decode_bytes(line, encoding)
