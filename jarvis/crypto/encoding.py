"""Strict text encodings shared by Jarvis's file formats: unpadded base64url and JSON objects.

The key file and the ``.jcard`` contact card are JSON with binary fields in base64url.  Both are
read from untrusted places, so the decoders here are strict: they accept exactly one spelling of
each value (canonical base64url without padding, JSON without duplicate keys) and raise
:class:`ValueError` with a one-line reason otherwise; the callers turn that into their own error.

Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


def b64url_encode(data: bytes) -> str:
    """Encode *data* as base64url without ``=`` padding (RFC 4648 section 5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, length: int | None = None) -> bytes:
    """Decode unpadded base64url, refusing every non-canonical spelling.

    :param length: if given, the exact number of bytes expected.
    :raises ValueError: on a wrong type, a character outside the alphabet, padding, non-zero
        trailing bits or a wrong length.
    """
    if not isinstance(text, str):
        raise ValueError("expected a base64url string")
    try:
        raw = text.encode("ascii")
        data = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError("not valid base64url") from None
    if b64url_encode(data) != text:  # rejects '=', '+', '/', stray bits and whitespace
        raise ValueError("not canonical base64url")
    if length is not None and len(data) != length:
        raise ValueError(f"expected {length} bytes, got {len(data)}")
    return data


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def loads_object(content: bytes | str, *, max_bytes: int) -> dict[str, Any]:
    """Parse a JSON object from UTF-8 *content* of at most *max_bytes*.

    :raises ValueError: if the content is too large, not UTF-8, not JSON, has a duplicate key or
        is not an object.
    """
    if isinstance(content, str):
        content = content.encode("utf-8", "surrogatepass")
    if len(content) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    try:
        text = content.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_reject_duplicates)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def get_field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """Return ``obj[name]`` if present and of type *kind* (``bool`` never counts as ``int``).

    :raises ValueError: naming the field otherwise.
    """
    if name not in obj:
        raise ValueError(f"missing field {name!r}")
    value = obj[name]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ValueError(f"field {name!r} has the wrong type")
    if not isinstance(value, kind):
        raise ValueError(f"field {name!r} has the wrong type")
    return value
