"""The limits of the core, one constant per rule: message size, history page, send window.

Every layer that checks one of these rules (the API's declarations, the CLI's paging, the
store's page reads) imports it from here instead of writing the number again.  This module
must not import anything of Jarvis: it is the bottom of the tree.
"""

from __future__ import annotations

#: Largest message text accepted, in bytes of UTF-8.
MAX_TEXT_BYTES = 64 * 1024
#: The largest page of a conversation one ``messages.history`` call returns.
MAX_HISTORY_PAGE = 200
#: Most messages written to a session and not yet acknowledged (the send window).  The outbox
#: streams through this window: the next page is read from the store as acks free it.
WINDOW_MESSAGES = 256
#: Most bytes of message bodies written to a session and not yet acknowledged.
WINDOW_BYTES = 4 * 1024 * 1024
#: Seconds without any ack, while messages are unacknowledged on a live session, before they
#: are written again (the receiver may have failed to store them, for instance on a full disk).
RETRANSMIT_INITIAL = 5.0
#: The retransmission delay doubles after each retransmission without progress, up to this.
RETRANSMIT_MAX = 60.0
#: Seconds a session must stay up after read receipts were written to it before they stop
#: being owed: more than the 90 s after which a silent session is dropped, so receipts
#: written into a session that was already dead (the peer gone, its close not yet seen) go
#: again at the next session instead of being lost.
RECEIPTS_SETTLE = 100.0
