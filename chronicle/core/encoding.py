"""Wire encodings: strict base64url, ATOM timestamps, PHP-identical pretty JSON, intervals.

Spec: protocol.md "Encodings". Every hash, key and signature travels as base64url *with*
``=`` padding; we accept only the canonical form (the one we would produce ourselves), so
one value has one spelling and lookups cannot be fooled by an alternative encoding.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from chronicle.core.errors import EncodingError

_B64U_RE = re.compile(r"\A[A-Za-z0-9_-]*={0,2}\Z")


_TO_STD = bytes.maketrans(b"-_", b"+/")
_TO_URL = bytes.maketrans(b"+/", b"-_")
_FIELD_CHARS = {32: 44, 64: 88}


def b64u_encode(raw: bytes) -> str:
    """base64url with padding, as PHP's ``Base64UrlSafe::encode`` (binascii: this runs
    three times per entry in every export and verification)."""
    return binascii.b2a_base64(raw, newline=False).translate(_TO_URL).decode("ascii")


def decode_b64_field(value: Any, length: int) -> bytes | None:
    """A wire field (a 32-byte hash or key, a 64-byte signature) in canonical padded
    base64url, else None: the non-raising form of :func:`b64u_decode` for hot loops."""
    if not isinstance(value, str) or len(value) != _FIELD_CHARS[length]:
        return None
    try:
        text = value.encode("ascii")
        raw = binascii.a2b_base64(text.translate(_TO_STD))
    except (UnicodeEncodeError, binascii.Error):
        return None
    if len(raw) != length or binascii.b2a_base64(raw, newline=False).translate(_TO_URL) != text:
        return None
    return raw


def b64u_decode(text: str | bytes, length: int | None = None, *, what: str = "value") -> bytes:
    """Decode canonical padded base64url; raise :class:`EncodingError` on anything else.

    ``length`` (bytes) is enforced when given. Non-canonical spellings (missing padding,
    non-zero trailing bits, standard-alphabet ``+/``) are refused.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise EncodingError(f"Invalid {what}: not base64url") from None
    if len(text) % 4 != 0 or not _B64U_RE.match(text):
        raise EncodingError(f"Invalid {what}: not base64url")
    try:
        raw = base64.urlsafe_b64decode(text)
    except (binascii.Error, ValueError):
        raise EncodingError(f"Invalid {what}: not base64url") from None
    if base64.urlsafe_b64encode(raw).decode("ascii") != text:
        raise EncodingError(f"Invalid {what}: non-canonical base64url")
    if length is not None and len(raw) != length:
        raise EncodingError(f"Invalid {what}: expected {length} bytes, got {len(raw)}")
    return raw


_last_atom: tuple[datetime | None, str] = (None, "")


def atom(moment: datetime) -> str:
    """PHP ``DateTime::ATOM`` (``2006-01-02T15:04:05+00:00``), second precision, UTC.

    The last second's text is kept: every answer and batch asks for the current one. The
    key is the UTC second itself (a float timestamp can round up; a local time can repeat
    across a DST change or an offset can hold fractions of a second)."""
    global _last_atom
    second = moment.astimezone(UTC).replace(microsecond=0)
    last = _last_atom
    if last[0] == second:
        return last[1]
    text = second.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    _last_atom = (second, text)
    return text


def utcnow() -> datetime:
    return datetime.now(UTC)


_TS_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%dT%H:%M:%S.%f%z",
    "%Y-%m-%d %H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M:%S.%f",
)


def parse_timestamp(text: str) -> datetime:
    """Parse the timestamp forms clients send (ATOM/RFC 3339, ``Z`` or offsets, naive = UTC)."""
    if not isinstance(text, str) or not text or len(text) > 64:
        raise EncodingError("Invalid timestamp")
    candidate = text.strip()
    if candidate.endswith(("Z", "z")):
        candidate = candidate[:-1] + "+00:00"
    for fmt in _TS_FORMATS:
        try:
            moment = datetime.strptime(candidate, fmt)
        except ValueError:
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment
    raise EncodingError("Invalid timestamp")


_INTERVAL_RE = re.compile(r"\s*(\d+)\s*([a-zA-Z]+)\s*")
_UNITS = {
    "sec": 1, "secs": 1, "second": 1, "seconds": 1, "s": 1,
    "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "hour": 3600, "hours": 3600, "h": 3600,
    "day": 86400, "days": 86400, "d": 86400,
    "week": 604800, "weeks": 604800,
}


def parse_interval(text: str) -> timedelta:
    """Parse Chronicle's interval settings ("10 minutes", "7 days", "1 hour 30 minutes")."""
    pos, total = 0, 0
    if not text.strip():
        raise EncodingError(f"Invalid interval: {text!r}")
    while pos < len(text):
        match = _INTERVAL_RE.match(text, pos)
        if not match or match.group(2).lower() not in _UNITS:
            raise EncodingError(f"Invalid interval: {text!r}")
        total += int(match.group(1)) * _UNITS[match.group(2).lower()]
        pos = match.end()
    return timedelta(seconds=total)


# Python's ASCII-only encoder writes DEL (0x7f) as \u007f; PHP leaves the byte raw. Only an
# escape preceded by an even run of backslashes is one (``\\u007f`` is an escaped
# backslash followed by text).
_DEL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u007f")


def _php_escapes(encoded: str) -> str:
    """Turn ``json.dumps(..., ensure_ascii=True)`` output into PHP's escaping.

    PHP (``json_encode``, no flags but pretty-printing) escapes ``/`` as ``\\/`` and leaves
    DEL raw; the rest (``\\b \\t \\n \\f \\r``, ``\\u00xx`` below 0x20, lowercase
    ``\\uXXXX`` above 0x7f with surrogate pairs) is what Python already writes. The ``/``
    replacement is safe: outside strings JSON never contains a slash.
    """
    encoded = encoded.replace("/", "\\/")
    if "\\u007f" in encoded:
        encoded = _DEL_ESCAPE.sub("\\1\x7f", encoded)
    return encoded


_encode_str = json.encoder.encode_basestring_ascii  # the C encoder json.dumps uses


class _Unusual(Exception):
    """A value :func:`_pretty` leaves to ``json.dumps`` (floats, non-string keys...)."""


def _pretty(value: Any, pad: str) -> str:
    """What ``json.dumps(value, indent=4, ensure_ascii=True)`` writes at indent ``pad``.

    With ``indent`` set, ``json.dumps`` runs its pure-Python encoder; answers (a receipt,
    a proof) are small and many, and this walk costs a third of it. Anything but
    dicts with string keys, lists, tuples, strings, integers, booleans and None raises
    :class:`_Unusual` (the caller falls back to ``json.dumps``).
    """
    if isinstance(value, str):
        return _encode_str(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    inner = pad + "    "
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Unusual
            items.append(f"{inner}{_encode_str(key)}: {_pretty(item, inner)}")
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(inner + _pretty(item, inner) for item in value) + "\n" \
            + pad + "]"
    raise _Unusual


def php_json(value: Any) -> str:
    """``json_encode($value, JSON_PRETTY_PRINT)`` byte for byte: 4-space indent, ``": "``
    after keys, no trailing newline, escapes as :func:`_php_escapes` says."""
    try:
        encoded = _pretty(value, "")
    except _Unusual:
        encoded = json.dumps(value, indent=4, ensure_ascii=True)
    return _php_escapes(encoded)


def php_json_string(text: str) -> str:
    """One JSON string literal exactly as PHP writes it (for streamed documents)."""
    return _php_escapes(json.dumps(text, ensure_ascii=True))
