"""JSON-RPC 2.0 framing for the local API: one UTF-8 JSON object per line, error codes, helpers.

Everything here is pure: functions turn bytes into request values and values into bytes, and
map Jarvis's exceptions to documented error codes.  This module must not do I/O, import a
reactor or import Twisted, so that the asyncio client (:mod:`jarvis.client`) can use it too.

Framing rules (the server and both clients follow them):

- a message is one JSON object encoded as UTF-8 and terminated by ``\\n``; a line holds no raw
  newline because JSON escapes them inside strings;
- a request line is at most :data:`MAX_LINE` bytes (1 MiB); responses and notifications may be
  longer (up to :data:`MAX_INCOMING_LINE`, for a page of long messages), so clients accept more;
- a batch (a JSON array of requests, on one line) is answered by one line holding the array of
  the responses to its elements that have an id, in any order, once every element has finished;
  an all-notification batch is answered by nothing, an empty array by one ``-32600`` error (not
  an array), and an array of more than :data:`MAX_BATCH` elements likewise;
- ``"jsonrpc": "2.0"`` is sent on every message; on requests it may be left out, but any other
  value is refused with ``-32600``;
- numbers are JSON numbers (no ``NaN``) and integers fit in 64 bits; a longer one is read as a
  float (refused where an integer is expected) and is never written;
- params are by name (an object) or absent; positional params (an array) are refused with
  ``-32602``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from jarvis.common import errors as jarvis_errors
from jarvis.crypto import errors as crypto_errors

#: The longest request line the server accepts, in bytes, without the newline.
MAX_LINE = 1024 * 1024

#: The longest response or notification line the clients accept, in bytes.
MAX_INCOMING_LINE = 16 * 1024 * 1024

#: The most elements a batch may hold (a larger one gets a single ``-32600`` error): at most
#: this many responses come back for one line, however small its elements.
MAX_BATCH = 1000

# Standard JSON-RPC 2.0 codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# From the Language Server Protocol: the request was cancelled by the client.
REQUEST_CANCELLED = -32800

# Application codes.
LOCKED = -32001
WRONG_PASSWORD = -32002
NOT_FOUND = -32003
TIMED_OUT = -32004
TOO_LARGE = -32005
AMBIGUOUS = -32006
NO_IDENTITY = -32007
IDENTITY_EXISTS = -32008
INVALID_LINK = -32009
WEAK_PASSWORD = -32010
UNAUTHORIZED = -32011
DATA_DIR = -32012
ALREADY_RUNNING = -32013
NOT_RUNNING = -32014
TOO_MANY_ATTEMPTS = -32015
STORAGE = -32020


@dataclass(frozen=True)
class ErrorCode:
    """One documented error code.

    :param code: the JSON-RPC ``error.code``.
    :param kind: the stable name sent as ``error.data.kind`` (the ``kind`` of the Jarvis error).
    :param meaning: one sentence for the documentation.
    """

    code: int
    kind: str
    meaning: str


#: Every error code the API sends, in documentation order.
ERROR_CODES: tuple[ErrorCode, ...] = (
    ErrorCode(PARSE_ERROR, "parse_error", "The line is not valid UTF-8 JSON."),
    ErrorCode(
        INVALID_REQUEST,
        "invalid_request",
        "The JSON is not a request object (a number, a missing or non-string `method`, a bad "
        "`id`, a duplicate `id` on the connection), or is an empty or too large batch.",
    ),
    ErrorCode(METHOD_NOT_FOUND, "method_not_found", "No method of that name exists."),
    ErrorCode(
        INVALID_PARAMS,
        "invalid",
        "A parameter is missing, unknown or of the wrong type or value; the message names it.",
    ),
    ErrorCode(INTERNAL_ERROR, "internal", "A bug in the daemon; its log has the details."),
    ErrorCode(REQUEST_CANCELLED, "cancelled", "The request was cancelled by `$/cancelRequest`."),
    ErrorCode(LOCKED, "locked", "The identity is locked: call `identity.unlock` first."),
    ErrorCode(WRONG_PASSWORD, "wrong_password", "The password does not open the key file."),
    ErrorCode(NOT_FOUND, "not_found", "The contact or message named does not exist."),
    ErrorCode(TIMED_OUT, "timed_out", "The method did not finish within its deadline."),
    ErrorCode(TOO_LARGE, "too_large", "The input is larger than Jarvis accepts."),
    ErrorCode(AMBIGUOUS, "ambiguous", "The name or uid prefix matches several contacts."),
    ErrorCode(NO_IDENTITY, "no_identity", "No identity exists yet: call `identity.create`."),
    ErrorCode(IDENTITY_EXISTS, "identity_exists", "An identity already exists in this data dir."),
    ErrorCode(INVALID_LINK, "invalid_link", "The link code or contact card is not valid."),
    ErrorCode(WEAK_PASSWORD, "weak_password", "The new password is refused (e.g. empty)."),
    ErrorCode(
        UNAUTHORIZED,
        "unauthorized",
        "TCP connections must send `auth` with the right token first; the server then closes.",
    ),
    ErrorCode(DATA_DIR, "data_dir", "The data directory cannot be used as it is."),
    ErrorCode(ALREADY_RUNNING, "already_running", "Another daemon already uses this data dir."),
    ErrorCode(NOT_RUNNING, "not_running", "The daemon is not running (or is stopping)."),
    ErrorCode(
        TOO_MANY_ATTEMPTS,
        "too_many_attempts",
        "Too many wrong passwords: the attempt was refused at once, unchecked; `data.retry_after`"
        " is the whole seconds to wait. Shared by every method that checks the master password "
        "and kept across daemon restarts.",
    ),
    ErrorCode(
        STORAGE,
        "storage",
        "The daemon's disk is full: nothing was written; free space and retry.",
    ),
)

_BY_KIND = {entry.kind: entry for entry in ERROR_CODES}
_BY_CODE = {entry.code: entry for entry in ERROR_CODES}


def code_for_kind(kind: str) -> int:
    """Return the error code for an error *kind*, :data:`INTERNAL_ERROR` for unknown kinds."""
    entry = _BY_KIND.get(kind)
    return entry.code if entry is not None else INTERNAL_ERROR


def kind_for_code(code: int) -> str:
    """Return the kind of an error *code* (``"error"`` for codes this version does not know)."""
    entry = _BY_CODE.get(code)
    return entry.kind if entry is not None else "error"


class RpcError(Exception):
    """A JSON-RPC error: raised by methods to answer with a given code, and sent as ``error``.

    :param code: the JSON-RPC error code (see :data:`ERROR_CODES`).
    :param message: one line for a human.
    :param data: extra JSON-able fields; ``kind`` is always added.
    """

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data: dict[str, Any] = dict(data or {})
        self.data.setdefault("kind", kind_for_code(code))

    @property
    def kind(self) -> str:
        """The stable machine-readable name of the error (``error.data.kind``)."""
        return str(self.data.get("kind", kind_for_code(self.code)))

    def to_json(self) -> dict[str, Any]:
        """Return the ``error`` member of a response."""
        return {"code": self.code, "message": self.message, "data": self.data}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.message!r}, {self.data!r})"


class RemoteError(RpcError):
    """The daemon answered a request with an error; ``str()`` is its one-line message.

    ``code`` is the JSON-RPC code, ``kind`` the stable name (``locked``, ``not_found``, ...),
    ``data`` any extra fields.  The message says what went wrong and usually how to fix it.
    """


def invalid_params(field_name: str, problem: str) -> RpcError:
    """Return the ``-32602`` error for one bad parameter, naming it in message and data."""
    message = f"invalid params: {field_name}: {problem}"
    return RpcError(INVALID_PARAMS, message, {"field": field_name})


def error_from_exception(exc: BaseException) -> RpcError:
    """Map an exception raised by a method to the :class:`RpcError` the client receives.

    Jarvis and crypto errors keep their one-line message and map by their ``kind`` (a ``data``
    dict on the exception adds fields to ``error.data``, e.g. ``retry_after``); anything
    else (and a crypto error of kind ``internal``) is an internal error whose message names only
    the exception type (details may hold secrets and go to the daemon log instead).

    :param exc: the exception.
    :returns: the error to send.
    """
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, jarvis_errors.JarvisError | crypto_errors.CryptoError) and (
        exc.kind != "internal"
    ):
        kind = exc.kind
        message = str(exc) or _first_line(type(exc).__doc__) or kind
        extra = getattr(exc, "data", None)
        data = dict(extra) if isinstance(extra, dict) else {}
        data["kind"] = kind
        return RpcError(code_for_kind(kind), message, data)
    return RpcError(INTERNAL_ERROR, f"internal error ({type(exc).__name__}): see the daemon log")


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


# Encoding ------------------------------------------------------------------------------------


# orjson writes compact UTF-8 directly (no str -> bytes copy) and refuses what is not JSON:
# NaN and infinities become null, integers beyond 64 bits, lone surrogates and nesting deeper
# than 254 raise ``orjson.JSONEncodeError`` (a TypeError).  Keys that are not strings (a count
# keyed by an int, say) are written as strings, as the standard library does.
_ENCODE_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS

#: What encoding a value that is not JSON may raise.
ENCODE_ERRORS = (TypeError, ValueError, RecursionError)


def encode(message: dict[str, Any]) -> bytes:
    """Encode one message as a compact UTF-8 JSON line ending in ``\\n``.

    :raises TypeError: (or another of :data:`ENCODE_ERRORS`) if *message* is not JSON-able.
    """
    return orjson.dumps(message, option=_ENCODE_OPTIONS)


def widen_events(
    requested: frozenset[str] | None, wanted: frozenset[str] | None
) -> frozenset[str] | None:
    """Return the events a connection must ask for once a handler wants *wanted* as well as
    what it *requested* so far (``None``: every event)."""
    return None if requested is None or wanted is None else requested | wanted


def subscribe_params(events: frozenset[str] | None) -> dict[str, Any]:
    """Return the params of ``events.subscribe`` for *events* (``None``: every event)."""
    return {} if events is None else {"events": sorted(events)}


def request(request_id: int | str, method: str, params: dict[str, Any] | None = None) -> bytes:
    """Encode a request line."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return encode(message)


def notification(method: str, params: dict[str, Any] | None = None) -> bytes:
    """Encode a notification line (a request without ``id``: nobody answers it)."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return encode(message)


def result_response(request_id: int | str | None, result: Any) -> bytes:
    """Encode a success response line."""
    return encode({"jsonrpc": "2.0", "id": request_id, "result": result})


def error_response(request_id: int | str | None, error: RpcError) -> bytes:
    """Encode an error response line."""
    return encode({"jsonrpc": "2.0", "id": request_id, "error": error.to_json()})


# Parsing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One parsed request or notification.

    :param method: the method name.
    :param params: the named params (an empty dict when absent).
    :param id: the request id; ``None`` with ``is_notification`` for notifications.
    :param is_notification: whether the message had no ``id`` member (nobody waits for an answer).
    """

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    id: int | str | None = None
    is_notification: bool = False


class InvalidMessage(RpcError):
    """A line that is not a valid request; ``request_id`` is its id when one could be read."""

    def __init__(self, code: int, message: str, request_id: int | str | None = None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


def _load(line: bytes) -> Any:
    # orjson checks the UTF-8 itself and refuses NaN, Infinity and integers beyond 64 bits.
    try:
        return orjson.loads(line)
    except ValueError as e:
        raise InvalidMessage(PARSE_ERROR, f"parse error: {type(e).__name__}") from None


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, int | str) and not isinstance(value, bool))


def parse_request(line: bytes) -> Request:
    """Parse one request line (without its newline) that must hold a single request.

    :param line: the raw bytes of the line.
    :returns: the request.
    :raises InvalidMessage: ``-32700`` for bad UTF-8 or JSON, ``-32600`` for anything but a
        request object (a batch included: see :func:`parse_line`), ``-32602`` for positional
        params.
    """
    value = _load(line)
    if isinstance(value, list):
        raise InvalidMessage(INVALID_REQUEST, "invalid request: a batch is not a single request")
    return request_of(value)


@dataclass(frozen=True)
class Batch:
    """A batch request: its elements in order, each a request or the error it gets.

    :param elements: :class:`Request` for a valid element, :class:`InvalidMessage` (with the id
        when one could be read) for an invalid one.
    """

    elements: tuple[Request | InvalidMessage, ...]


def parse_line(line: bytes) -> Request | Batch:
    """Parse one line a client sent (without its newline): a single request or a batch.

    :param line: the raw bytes of the line.
    :returns: the request, or the :class:`Batch` whose invalid elements carry their errors.
    :raises InvalidMessage: ``-32700`` for bad UTF-8 or JSON (a batch included: one error),
        ``-32600`` for an empty batch, a batch of more than :data:`MAX_BATCH` elements or a
        single value that is not a request, ``-32602`` for positional params.
    """
    value = _load(line)
    if not isinstance(value, list):
        return request_of(value)
    if not value:
        raise InvalidMessage(INVALID_REQUEST, "invalid request: empty batch")
    if len(value) > MAX_BATCH:
        error = InvalidMessage(
            INVALID_REQUEST, f"invalid request: a batch holds at most {MAX_BATCH} requests"
        )
        error.data["kind"] = "too_large"
        raise error
    elements: list[Request | InvalidMessage] = []
    for element in value:
        try:
            elements.append(request_of(element))
        except InvalidMessage as e:
            elements.append(e)
    return Batch(tuple(elements))


def request_of(value: Any) -> Request:
    """Return the request a decoded JSON value holds.

    :raises InvalidMessage: ``-32600`` if it is not a request object, ``-32602`` for
        positional params (with the id when one could be read).
    """
    if not isinstance(value, dict):
        raise InvalidMessage(INVALID_REQUEST, "invalid request: a request must be a JSON object")
    request_id = value.get("id")
    if not _valid_id(request_id):
        raise InvalidMessage(INVALID_REQUEST, "invalid request: id must be a string or integer")
    if value.get("jsonrpc", "2.0") != "2.0":
        raise InvalidMessage(INVALID_REQUEST, 'invalid request: jsonrpc must be "2.0"', request_id)
    method = value.get("method")
    if not isinstance(method, str) or not method:
        raise InvalidMessage(
            INVALID_REQUEST, "invalid request: method must be a non-empty string", request_id
        )
    params = value.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidMessage(
            INVALID_PARAMS, "invalid params: params must be an object (by name)", request_id
        )
    return Request(method, params, request_id, "id" not in value)


def batch_response(lines: list[bytes]) -> bytes:
    """Join encoded response lines (each ending in ``\\n``) into one batch response line."""
    return b"[" + b",".join(line[:-1] for line in lines) + b"]\n"


@dataclass(frozen=True)
class Incoming:
    """One message received by a client: a response or a notification.

    A response has ``id`` and either ``result`` or ``error``; a notification has ``method`` and
    ``params``.
    """

    id: int | str | None = None
    result: Any = None
    error: RemoteError | None = None
    method: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def is_notification(self) -> bool:
        """Whether this is a notification (an event or ``$/progress``)."""
        return self.method is not None


def parse_incoming(line: bytes) -> Incoming:
    """Parse one line received by a client.

    Unknown members are ignored, as clients must.

    :raises InvalidMessage: if the line is not JSON or neither a response nor a notification.
    """
    return parse_value(_load(line))


def load_line(line: bytes) -> Any:
    """Decode one line (without its newline) as JSON.

    :raises InvalidMessage: ``-32700`` for bad UTF-8 or JSON.
    """
    return _load(line)


def parse_value(value: Any) -> Incoming:
    """Return the :class:`Incoming` of a decoded line (see :func:`parse_incoming`).

    :raises InvalidMessage: if *value* is neither a response nor a notification.
    """
    if not isinstance(value, dict):
        raise InvalidMessage(INVALID_REQUEST, "the daemon sent something that is not an object")
    method = value.get("method")
    if isinstance(method, str):
        params = value.get("params")
        return Incoming(method=method, params=params if isinstance(params, dict) else {})
    if "id" not in value:
        raise InvalidMessage(INVALID_REQUEST, "the daemon sent neither a response nor an event")
    if "error" in value:
        err = value["error"] if isinstance(value["error"], dict) else {}
        data = err.get("data") if isinstance(err.get("data"), dict) else None
        raw_code = err.get("code")
        code = raw_code if isinstance(raw_code, int) else INTERNAL_ERROR
        error = RemoteError(code, str(err.get("message", "error")), data)
        return Incoming(id=value["id"], error=error)
    return Incoming(id=value["id"], result=value.get("result"))


def too_many_attempts_text(data: Any) -> str:
    """The line for error ``too_many_attempts`` (-32015), from its ``data.retry_after``.

    :param data: the error's ``data`` (``retry_after``: whole seconds to wait).
    """
    wait = data.get("retry_after") if isinstance(data, dict) else None
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait >= 0:
        return f"Too many wrong passwords: retry in {math.ceil(wait)} s"
    return "Too many wrong passwords: retry later"
