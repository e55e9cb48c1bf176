"""Run ``twistd`` with a hostile group member's extra API methods (test code only).

A :class:`tests.daemons.DaemonProcess` whose ``launcher`` is :data:`LAUNCHER` starts the real
daemon (``twistd -n jarvis ...``: real TLS, real SQLite, the real group code) through this
script, which first adds ``hostile.*`` methods to the daemon's local API.  Each one makes the
node misbehave once, on request, with the node's own identity key and through its own durable
outbox, so what it sends travels exactly like honest group traffic:

``hostile.forge`` ``{group, name?, invite?, concurrent?}``
    signs the next version of the group's state (or, with ``concurrent``, another version with
    the number of the one held) renaming the group and/or adding the contact *invite*, without
    the rules' consent (a plain member may do neither), and sends it to every other member (and
    the whole chain, as an invitation, to *invite*).  The node itself keeps its honest state.
``hostile.replay`` ``{group}``
    sends every state older than the one held to every other member.
``hostile.withhold`` ``{group, member}``
    from now on, never sends our next group message to *member* (uid): neither in the fan-out
    nor when *member*'s summary asks for it.  Each time it is held back, the daemon logs
    ``hostile: withheld``.
``hostile.write`` ``{group, version, text, to}``
    writes a group message signed by us (seq 1) into group *group* (hex id), claiming state
    *version*, and sends it to *to* (a contact): what a non-member who learnt a group id does.
    The result also carries the group ``payload`` (hex), for ``hostile.relay``.
``hostile.flood`` ``{group, count}``
    signs *count* states of versions beyond the next one (2 to *count* + 1 ahead of the one
    held, on no real history) and sends them all to every other member: a member trying to
    fill the others' memory with states they keep until the versions before them come.
``hostile.relay`` ``{payload, to}``
    sends a group payload (hex) as it is to each uid of the list *to*: a member passing on
    what someone else signed.

Every method returns the entries it queued as ``{"entries": [{"to": uid, "id": entry id}]}``:
the caller waits for their ``message.stateChanged`` ``delivered`` events, which the receiving
daemon sends once it handled (stored, or refused) the payload.  None of this is in ``jarvis/``.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from jarvis.ipc import methods
from jarvis.ipc.registry import Invocation, MethodSpec, Param, Registry
from jarvis.protocol.group_fanout import (
    KIND_INVITE,
    KIND_MESSAGE,
    KIND_STATE,
    encode_chain,
    encode_payload,
    parse_payload,
)
from jarvis.protocol.group_message import NO_HASH, encode_message, parse_message, write_message
from jarvis.protocol.group_state import (
    GroupState,
    Member,
    Role,
    _sign,
    encode_state,
    state_hash,
)
from jarvis.store.records import new_message_id

#: The argv prefix that runs this script instead of twistd (see ``DaemonProcess.launcher``).
LAUNCHER = [sys.executable, "-c", "from tests.hostile_twistd import main; main()"]

log = Logger(namespace="hostile")


def _node(inv: Invocation) -> Any:
    return inv.ctx.node


def _queue(inv: Invocation, sends: list[tuple[str, bytes]]) -> defer.Deferred[Any]:
    """Queue each ``(uid, payload)`` as one durable group entry; fire with the entries."""
    node = _node(inv)
    entries = []
    queued = []
    for uid, payload in sends:
        entry_id = new_message_id(inv.ctx.clock.seconds())
        entries.append({"to": uid, "id": entry_id})
        queued.append(node.courier.queue_group_entry(uid, entry_id, payload))
    return defer.gatherResults(queued).addCallback(lambda _: {"entries": entries})


def _others(groups: Any, state: GroupState) -> list[str]:
    own = groups._identity.public_bytes
    return [m.uid for m in state.members if m.public_key != own]


def forge(inv: Invocation) -> defer.Deferred[Any]:
    groups = _node(inv).groups
    group = groups.resolve(inv.params["group"])
    identity = groups._identity
    concurrent = bool(inv.params.get("concurrent"))
    base = group.states[-2] if concurrent else group.state
    members = list(base.members)
    invitee = None
    if inv.params.get("invite"):
        invitee = groups._contacts.resolve(inv.params["invite"])
        members.append(Member(bytes(invitee.public_key), Role.MEMBER, b""))
    forged = _sign(
        replace(
            base,
            version=base.version + 1,
            prev_hash=state_hash(base),
            name=inv.params.get("name") or base.name,
            members=tuple(sorted(members, key=lambda m: m.public_key)),
            departed=(),
        ),
        identity,
    )
    log.info("hostile: forged state version {v}", v=forged.version)
    sends = [
        (uid, encode_payload(KIND_STATE, encode_state(forged)))
        for uid in _others(groups, group.state)
    ]
    if invitee is not None:
        chain = [*group.states[: base.version], forged]
        sends.append((invitee.uid, encode_payload(KIND_INVITE, encode_chain(chain))))
    return _queue(inv, sends)


def replay(inv: Invocation) -> defer.Deferred[Any]:
    groups = _node(inv).groups
    group = groups.resolve(inv.params["group"])
    old = [s for s in group.states if s.version < group.state.version]
    log.info("hostile: replaying {n} old states", n=len(old))
    return _queue(
        inv,
        [
            (uid, encode_payload(KIND_STATE, encode_state(s)))
            for uid in _others(groups, group.state)
            for s in old
        ],
    )


def withhold(inv: Invocation) -> dict[str, Any]:
    groups = _node(inv).groups
    group = groups.resolve(inv.params["group"])
    target = inv.params["member"]
    own = groups._identity.public_bytes
    head = group.log.head(own)
    seq = (head.seq if head else 0) + 1
    honest_send = groups._send

    def send(uid: str, entry_id: bytes | None, payload: bytes) -> defer.Deferred[Any]:
        kind, record = parse_payload(payload)
        if uid == target and kind == KIND_MESSAGE:
            message = parse_message(record)
            if message.group_id == group.group_id and message.author == own and message.seq == seq:
                log.info("hostile: withheld message {seq}", seq=seq)
                return defer.succeed(None)
        return honest_send(uid, entry_id, payload)

    groups._send = send
    return {"seq": seq}


def write(inv: Invocation) -> defer.Deferred[Any]:
    groups = _node(inv).groups
    message = write_message(
        groups._identity,
        bytes.fromhex(inv.params["group"]),
        seq=1,
        prev_hash=NO_HASH,
        state_version=inv.params["version"],
        created=int(inv.ctx.clock.seconds() * 1000),
        body=inv.params["text"].encode("utf-8"),
    )
    to = groups._contacts.resolve(inv.params["to"]).uid
    payload = encode_payload(KIND_MESSAGE, encode_message(message))
    return _queue(inv, [(to, payload)]).addCallback(lambda r: {**r, "payload": payload.hex()})


def flood(inv: Invocation) -> defer.Deferred[Any]:
    groups = _node(inv).groups
    group = groups.resolve(inv.params["group"])
    held = group.state
    states = [
        _sign(
            replace(held, version=held.version + 1 + i, prev_hash=bytes([i % 256]) * 32),
            groups._identity,
        )
        for i in range(1, inv.params["count"] + 1)
    ]
    log.info("hostile: flooding {n} states ahead", n=len(states))
    return _queue(
        inv,
        [
            (uid, encode_payload(KIND_STATE, encode_state(s)))
            for uid in _others(groups, held)
            for s in states
        ],
    )


def relay(inv: Invocation) -> defer.Deferred[Any]:
    payload = bytes.fromhex(inv.params["payload"])
    return _queue(inv, [(uid, payload) for uid in inv.params["to"]])


GROUP = Param("group", str, True, "the group (id or name)")
HOSTILE_SPECS = (
    MethodSpec(
        "hostile.forge",
        forge,
        (
            GROUP,
            Param("name", str),
            Param("invite", str),
            Param("concurrent", bool),
        ),
    ),
    MethodSpec("hostile.replay", replay, (GROUP,)),
    MethodSpec("hostile.withhold", withhold, (GROUP, Param("member", str, True))),
    MethodSpec(
        "hostile.write",
        write,
        (GROUP, Param("version", int, True), Param("text", str, True), Param("to", str, True)),
    ),
    MethodSpec("hostile.relay", relay, (Param("payload", str, True), Param("to", list, True))),
    MethodSpec("hostile.flood", flood, (GROUP, Param("count", int, True))),
)


_honest_registry = methods.build_registry


def build_registry() -> Registry:
    """The daemon's own registry, with the hostile methods added."""
    registry = _honest_registry()
    for spec in HOSTILE_SPECS:
        registry.methods[spec.name] = spec
    return registry


def main() -> None:
    methods.build_registry = build_registry
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
