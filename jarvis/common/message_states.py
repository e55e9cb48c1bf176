"""The message states and the one rule over them: a message's state only moves forward.

An outgoing message goes ``queued -> sent -> delivered -> read``, an incoming one
``received -> read``.  The store's UPDATEs (:func:`jarvis.store.queries.advance_states`,
``deliver_through``, ``mark_read``), its outbox (the outgoing states before ``delivered``), the
UI's model (a late report of an earlier state never takes a message back) and ``jarvis send
--wait`` all ask this module.  It holds no I/O and imports nothing but :mod:`jarvis.common.errors`,
so
every layer may use it.
"""

from __future__ import annotations

from jarvis.common.errors import InvalidInput

#: The states of an outgoing message, in the only order they may advance.
OUTGOING_STATES: tuple[str, ...] = ("queued", "sent", "delivered", "read")
#: The states of an incoming message, in the only order they may advance.
INCOMING_STATES: tuple[str, ...] = ("received", "read")
#: Every state a message may be in, either direction.
MESSAGE_STATES: tuple[str, ...] = ("queued", "sent", "delivered", "read", "received")

_ORDERS = {"out": OUTGOING_STATES, "in": INCOMING_STATES}


def states_for(direction: str) -> tuple[str, ...]:
    """Return the states a message of *direction* may take, in the order they advance.

    :param direction: ``"in"`` or ``"out"``.
    :returns: :data:`INCOMING_STATES` or :data:`OUTGOING_STATES`.
    :raises InvalidInput: if *direction* is neither.
    """
    order = _ORDERS.get(direction)
    if order is None:
        raise InvalidInput(f"a message direction is 'in' or 'out', not {direction!r}")
    return order


def states_before(direction: str, state: str) -> tuple[str, ...]:
    """Return the states from which a message of *direction* may advance to *state*.

    :returns: the earlier states, in order; empty when *state* is the first of *direction* or
        not one of its states.
    :raises InvalidInput: if *direction* is neither ``"in"`` nor ``"out"``.
    """
    order = states_for(direction)
    return order[: order.index(state)] if state in order else ()


def states_from(direction: str, state: str) -> tuple[str, ...]:
    """Return *state* and the states after it for a message of *direction*: the states of a
    message that has reached *state* (empty when *state* is not one of its states).

    :raises InvalidInput: if *direction* is neither ``"in"`` nor ``"out"``.
    """
    order = states_for(direction)
    return order[order.index(state) :] if state in order else ()


def may_advance(direction: str, old: str, new: str) -> bool:
    """Whether a message of *direction* in state *old* may take state *new*: *new* is one of
    its states and not earlier than *old* (the same state again is allowed: a repeated report).

    Never raises: an unknown *direction* or *new* state is refused, an unknown *old* state
    may be replaced.
    """
    order = _ORDERS.get(direction)
    if order is None or new not in order:
        return False
    return old not in order or order.index(new) >= order.index(old)
