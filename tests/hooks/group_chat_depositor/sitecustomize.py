"""Test hook: makes a real daemon deposit a chat message into a group peer's group queue
(loaded only by tests that put this folder first on a child daemon's ``PYTHONPATH``, see
tests/test_e2e_groups.py ``GroupMailboxTests``).

The first time the daemon deposits a group entry for a member who is not its contact (into
that member's group queue, read from the group state), it also deposits there a chat message,
sealed and signed with its real identity key exactly as a genuine deposit: what a member who
is not a contact would send to pose a chat message as group traffic.  The receiver must
refuse it.
"""

import os

from jarvis.core import postbox
from jarvis.protocol.group_fanout import BODY_MARK

#: The chat text deposited (the test looks for it nowhere on the receiver's side).
CHAT = b"a chat message through the group queue"
_honest = postbox.Postbox.deposit_message
_done: set[str] = set()


def _also_chat(self, uid, message_id, body, created_ms):  # type: ignore[no-untyped-def]
    result = _honest(self, uid, message_id, body, created_ms)
    if uid not in self.peers and body.startswith(BODY_MARK) and uid not in _done:
        _done.add(uid)
        payload = bytes([postbox.KIND_MESSAGE]) + postbox._CREATED.pack(created_ms) + CHAT
        chat = self._deposit(uid, os.urandom(16), payload, body)
        chat.addCallback(lambda _: self.log.info("test hook: chat deposited in a group queue"))
    return result


postbox.Postbox.deposit_message = _also_chat  # type: ignore[method-assign]
