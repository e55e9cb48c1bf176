"""Tests for jarvis.ipc.jsonrpc: framing, parsing and the error-code mapping."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jarvis.common import errors
from jarvis.crypto import errors as crypto_errors
from jarvis.ipc import jsonrpc

#: The integers the local API carries (JSON numbers that every client reads exactly).
_INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)


class EncodeTests(SynchronousTestCase):
    """Encoding messages as lines."""

    def test_one_line(self) -> None:
        """When a result holds newlines and non-ASCII text, then the line has one newline, at
        the end, and is UTF-8."""
        line = jsonrpc.result_response(7, {"body": "a\nb ü"})
        self.assertEqual(line.count(b"\n"), 1)
        self.assertTrue(line.endswith(b"\n"))
        self.assertIn("ü".encode(), line)
        self.assertEqual(
            json.loads(line), {"jsonrpc": "2.0", "id": 7, "result": {"body": "a\nb ü"}}
        )

    def test_compact(self) -> None:
        """When a message is encoded, then it has no spaces between members, byte for byte."""
        self.assertEqual(
            jsonrpc.result_response(1, {"a": [1, None, True], "b": "x y"}),
            b'{"jsonrpc":"2.0","id":1,"result":{"a":[1,null,true],"b":"x y"}}\n',
        )

    def test_not_json(self) -> None:
        """When a result is not JSON-able or refers to itself, then encoding raises one of
        ENCODE_ERRORS (the server answers with an internal error instead)."""
        cycle: list[object] = []
        cycle.append(cycle)
        for bad in (object(), cycle, {"inner": [cycle]}):
            with self.assertRaises(jsonrpc.ENCODE_ERRORS):
                jsonrpc.result_response(1, bad)

    def test_error_response(self) -> None:
        """When an error is encoded, then code, message and data.kind are present."""
        line = jsonrpc.error_response(3, jsonrpc.RpcError(jsonrpc.LOCKED, "locked"))
        self.assertEqual(
            json.loads(line)["error"],
            {"code": -32001, "message": "locked", "data": {"kind": "locked"}},
        )

    def test_integers_beyond_64_bits(self) -> None:
        """When a result holds an integer beyond 64 bits, then encoding raises one of
        ENCODE_ERRORS instead of writing a number other clients would round."""
        with self.assertRaises(jsonrpc.ENCODE_ERRORS):
            jsonrpc.result_response(1, {"n": 2**64})
        self.assertIn(b'"n":-9223372036854775808', jsonrpc.result_response(1, {"n": -(2**63)}))

    @given(
        st.one_of(_INT64, st.text(max_size=20)),
        st.text(min_size=1, max_size=30),
        st.dictionaries(st.text(max_size=10), st.one_of(_INT64, st.text(), st.booleans())),
    )
    def test_request_round_trip(self, request_id: int | str, method: str, params: dict) -> None:
        """When any request is encoded and parsed, then the same request comes back."""
        parsed = jsonrpc.parse_request(jsonrpc.request(request_id, method, params)[:-1])
        self.assertEqual(parsed, jsonrpc.Request(method, params, request_id, False))


class ParseRequestTests(SynchronousTestCase):
    """Parsing request lines."""

    def assert_code(self, line: bytes, code: int) -> jsonrpc.InvalidMessage:
        error = self.assertRaises(jsonrpc.InvalidMessage, jsonrpc.parse_request, line)
        self.assertEqual(error.code, code)
        return error

    def test_garbage(self) -> None:
        """When the line is not JSON or not UTF-8, then it is a parse error."""
        self.assert_code(b"{nope", jsonrpc.PARSE_ERROR)
        self.assert_code(b"\xff\xfe", jsonrpc.PARSE_ERROR)
        self.assert_code(b'{"id":1,"method":"a"} x', jsonrpc.PARSE_ERROR)
        self.assert_code(b'{"id":1,"method":"a","params":{"n":NaN}}', jsonrpc.PARSE_ERROR)

    def test_id_beyond_64_bits(self) -> None:
        """When a request id is an integer beyond 64 bits, then it is an invalid request (it
        would not come back exactly in the answer)."""
        self.assert_code(b'{"id":%d,"method":"a"}' % 2**70, jsonrpc.INVALID_REQUEST)

    def test_not_an_object(self) -> None:
        """When the JSON is a number or a string, then it is an invalid request."""
        self.assert_code(b"42", jsonrpc.INVALID_REQUEST)
        self.assert_code(b'"x"', jsonrpc.INVALID_REQUEST)

    def test_batch(self) -> None:
        """When the JSON is an array (a batch), then parse_request (one request) refuses it."""
        error = self.assert_code(b'[{"id":1,"method":"a"}]', jsonrpc.INVALID_REQUEST)
        self.assertIn("batch", error.message)

    def test_bad_members(self) -> None:
        """When method, id, jsonrpc or params are of the wrong kind, then the right code comes
        with the id when it was readable."""
        self.assert_code(b'{"id":1}', jsonrpc.INVALID_REQUEST)
        self.assert_code(b'{"id":true,"method":"a"}', jsonrpc.INVALID_REQUEST)
        error = self.assert_code(b'{"id":5,"jsonrpc":"1.0","method":"a"}', jsonrpc.INVALID_REQUEST)
        self.assertEqual(error.request_id, 5)
        error = self.assert_code(b'{"id":6,"method":"a","params":[1]}', jsonrpc.INVALID_PARAMS)
        self.assertEqual(error.request_id, 6)

    def test_notification(self) -> None:
        """When the request has no id member, then it is a notification with empty params."""
        req = jsonrpc.parse_request(b'{"method":"$/cancelRequest"}')
        self.assertTrue(req.is_notification)
        self.assertEqual(req.params, {})


class ParseBatchTests(SynchronousTestCase):
    """Batches, with the examples of section 7 of the JSON-RPC 2.0 specification."""

    def test_rpc_call_batch(self) -> None:
        """When a batch mixes calls, a notification and an invalid element, then each element
        comes back in order, the invalid one as its -32600 error."""
        batch = jsonrpc.parse_line(
            b'[{"jsonrpc":"2.0","method":"sum","params":{"a":1},"id":"1"},'
            b'{"jsonrpc":"2.0","method":"notify_hello","params":{"n":7}},'
            b'{"foo":"boo"},'
            b'{"jsonrpc":"2.0","method":"get_data","id":"9"}]'
        )
        assert isinstance(batch, jsonrpc.Batch)
        first, hello, foo, data = batch.elements
        self.assertEqual(first, jsonrpc.Request("sum", {"a": 1}, "1", False))
        self.assertEqual(hello, jsonrpc.Request("notify_hello", {"n": 7}, None, True))
        assert isinstance(foo, jsonrpc.InvalidMessage)
        self.assertEqual((foo.code, foo.request_id), (jsonrpc.INVALID_REQUEST, None))
        self.assertEqual(data, jsonrpc.Request("get_data", {}, "9", False))

    def test_invalid_json_batch(self) -> None:
        """When a batch is not valid JSON, then the whole line is one parse error."""
        error = self.assertRaises(
            jsonrpc.InvalidMessage,
            jsonrpc.parse_line,
            b'[{"jsonrpc":"2.0","method":"sum","params":[1,2,4],"id":"1"},{"jsonrpc":"2.0","method"]',
        )
        self.assertEqual(error.code, jsonrpc.PARSE_ERROR)

    def test_empty_and_too_large(self) -> None:
        """When the array is empty or longer than MAX_BATCH, then the whole line is one
        -32600 error (not an array of errors)."""
        error = self.assertRaises(jsonrpc.InvalidMessage, jsonrpc.parse_line, b"[]")
        self.assertEqual((error.code, error.request_id), (jsonrpc.INVALID_REQUEST, None))
        line = b"[" + b",".join([b"1"] * (jsonrpc.MAX_BATCH + 1)) + b"]"
        error = self.assertRaises(jsonrpc.InvalidMessage, jsonrpc.parse_line, line)
        self.assertEqual((error.code, error.kind), (jsonrpc.INVALID_REQUEST, "too_large"))

    def test_invalid_elements(self) -> None:
        """When the elements are not requests ([1], [1,2,3]), then each is its own -32600."""
        for line, count in ((b"[1]", 1), (b"[1,2,3]", 3)):
            batch = jsonrpc.parse_line(line)
            assert isinstance(batch, jsonrpc.Batch)
            self.assertEqual(len(batch.elements), count)
            for element in batch.elements:
                assert isinstance(element, jsonrpc.InvalidMessage)
                self.assertEqual(element.code, jsonrpc.INVALID_REQUEST)

    def test_single_request_unchanged(self) -> None:
        """When the line holds one object, then parse_line returns the same as parse_request."""
        line = b'{"id":3,"method":"a","params":{"x":1}}'
        self.assertEqual(jsonrpc.parse_line(line), jsonrpc.parse_request(line))

    def test_batch_response(self) -> None:
        """When response lines are joined, then the result is one line holding their array."""
        line = jsonrpc.batch_response(
            [jsonrpc.result_response(1, "a"), jsonrpc.result_response("x\ny", None)]
        )
        self.assertEqual(line.count(b"\n"), 1)
        self.assertEqual(
            json.loads(line),
            [
                {"jsonrpc": "2.0", "id": 1, "result": "a"},
                {"jsonrpc": "2.0", "id": "x\ny", "result": None},
            ],
        )


class ParseIncomingTests(SynchronousTestCase):
    """Parsing what clients receive."""

    def test_error(self) -> None:
        """When an error response arrives, then it becomes a RemoteError with its kind."""
        incoming = jsonrpc.parse_incoming(
            b'{"jsonrpc":"2.0","id":2,"error":{"code":-32003,"message":"no such contact"}}'
        )
        assert incoming.error is not None
        self.assertEqual(
            (incoming.id, incoming.error.code, incoming.error.kind, str(incoming.error)),
            (2, -32003, "not_found", "no such contact"),
        )

    def test_notification_ignores_unknown_fields(self) -> None:
        """When a notification has unknown members, then they are ignored."""
        incoming = jsonrpc.parse_incoming(b'{"method":"x.y","params":{"a":1},"extra":true}')
        self.assertTrue(incoming.is_notification)
        self.assertEqual((incoming.method, incoming.params), ("x.y", {"a": 1}))


class ErrorMappingTests(SynchronousTestCase):
    """Mapping exceptions to error codes."""

    def test_jarvis_errors(self) -> None:
        """When a Jarvis error is mapped, then its kind picks the documented code."""
        cases = {
            errors.Locked("l"): jsonrpc.LOCKED,
            errors.NotFound("n"): jsonrpc.NOT_FOUND,
            errors.Ambiguous("a"): jsonrpc.AMBIGUOUS,
            errors.TooLarge("t"): jsonrpc.TOO_LARGE,
            errors.NoIdentity("x"): jsonrpc.NO_IDENTITY,
            errors.IdentityExists("x"): jsonrpc.IDENTITY_EXISTS,
            errors.InvalidInput("x"): jsonrpc.INVALID_PARAMS,
            crypto_errors.WrongPassword(): jsonrpc.WRONG_PASSWORD,
            crypto_errors.WeakPassword(): jsonrpc.WEAK_PASSWORD,
            crypto_errors.DamagedLink(): jsonrpc.INVALID_LINK,
        }
        for exc, code in cases.items():
            self.assertEqual(jsonrpc.error_from_exception(exc).code, code, exc)
        self.assertEqual(jsonrpc.error_from_exception(errors.NotFound("who?")).message, "who?")

    def test_damaged_files_are_not_internal(self) -> None:
        """When a damaged export or key file is mapped, then the client gets a clear error of
        its own kind with the one-line reason (not an internal error), while a crypto error no
        input can cause stays internal."""
        export = jsonrpc.error_from_exception(crypto_errors.CorruptExport("truncated"))
        self.assertEqual((export.code, export.data), (jsonrpc.INVALID_PARAMS, {"kind": "invalid"}))
        self.assertIn("truncated", export.message)
        keyfile = jsonrpc.error_from_exception(crypto_errors.CorruptKeyFile("no uid"))
        self.assertEqual((keyfile.code, keyfile.data), (jsonrpc.DATA_DIR, {"kind": "data_dir"}))
        wiped = jsonrpc.error_from_exception(crypto_errors.KeyWiped())
        self.assertEqual(wiped.code, jsonrpc.INTERNAL_ERROR)

    def test_unexpected(self) -> None:
        """When an unexpected exception is mapped, then it is internal and hides its text."""
        error = jsonrpc.error_from_exception(KeyError("secret-password"))
        self.assertEqual(error.code, jsonrpc.INTERNAL_ERROR)
        self.assertNotIn("secret", error.message)

    def test_codes_unique(self) -> None:
        """When the code table is read, then codes and kinds are unique."""
        codes = [e.code for e in jsonrpc.ERROR_CODES]
        kinds = [e.kind for e in jsonrpc.ERROR_CODES]
        self.assertEqual(len(codes), len(set(codes)))
        self.assertEqual(len(kinds), len(set(kinds)))
