"""The local API's ``groups.*`` methods (issue 17; declared here, listed by
:func:`jarvis.ipc.methods.method_specs`).

Handlers only translate params into :class:`jarvis.core.groups.Groups` calls (the node's
``groups``).  This module must not import the reactor and never logs params or results.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from jarvis.common import errors
from jarvis.ipc.registry import Invocation, MethodSpec, Param
from jarvis.protocol.group_message import MAX_BODY_BYTES


def node_groups(inv: Invocation) -> Any:
    """The node's groups (:class:`~jarvis.core.groups.Groups`), or the error a daemon without
    them gives."""
    groups = getattr(inv.ctx.node, "groups", None)
    if groups is None:
        raise errors.InvalidInput("this daemon has no groups")
    return groups


def _limit(value: int) -> str | None:
    return None if 1 <= value <= 100000 else "must be between 1 and 100000"


def groups_create(inv: Invocation) -> Any:
    p = inv.params
    return defer.maybeDeferred(node_groups(inv).create, p["name"], p.get("topic") or "")


def groups_list(inv: Invocation) -> Any:
    return {"groups": node_groups(inv).list_groups()}


def groups_invite(inv: Invocation) -> Any:
    return defer.maybeDeferred(node_groups(inv).invite, inv.params["group"], inv.params["contact"])


def groups_invites(inv: Invocation) -> Any:
    return {"invites": node_groups(inv).invites()}


def groups_join(inv: Invocation) -> Any:
    return defer.maybeDeferred(node_groups(inv).join, inv.params["invite"])


def groups_decline(inv: Invocation) -> Any:
    return defer.maybeDeferred(node_groups(inv).decline, inv.params["invite"])


def groups_send(inv: Invocation) -> Any:
    return defer.maybeDeferred(node_groups(inv).send, inv.params["group"], inv.params["text"])


def groups_history(inv: Invocation) -> Any:
    limit = inv.params.get("limit") or 50
    return node_groups(inv).history(inv.params["group"], limit=limit)


def groups_members(inv: Invocation) -> Any:
    return node_groups(inv).members(inv.params["group"])


def groups_remove(inv: Invocation) -> Any:
    return defer.maybeDeferred(node_groups(inv).remove, inv.params["group"], inv.params["member"])


def groups_leave(inv: Invocation) -> Any:
    return defer.maybeDeferred(node_groups(inv).leave, inv.params["group"], inv.params.get("to"))


def groups_mark_read(inv: Invocation) -> Any:
    return defer.maybeDeferred(node_groups(inv).mark_read, inv.params["group"])


def groups_set_muted(inv: Invocation) -> Any:
    return defer.maybeDeferred(node_groups(inv).set_muted, inv.params["group"], inv.params["muted"])


def groups_rename(inv: Invocation) -> Any:
    return defer.maybeDeferred(
        node_groups(inv).rename, inv.params["group"], name=inv.params["name"]
    )


def groups_set_topic(inv: Invocation) -> Any:
    return defer.maybeDeferred(
        node_groups(inv).rename, inv.params["group"], topic=inv.params["topic"]
    )


def groups_set_role(inv: Invocation) -> Any:
    p = inv.params
    return defer.maybeDeferred(node_groups(inv).set_role, p["group"], p["member"], p["role"])


def _role(value: str) -> str | None:
    return None if value in ("admin", "member") else "must be 'admin' or 'member'"


_GROUP = Param("group", str, True, "the group: its id (or 4+ hex digits of it) or its name")
_INVITE = Param("invite", str, True, "the invitation's id, from groups.invites")
_VIEW = (
    "{id, name, topic, version, members (count), role ('founder'|'admin'|'member'|null), "
    "unread, messages (count), left, muted}"
)
_MESSAGE = (
    "{id, group, author (uid), author_name, body, file, seq, created, index, delivered, "
    "members} (delivered: how many of the members the message was written to have stored it; "
    "both null on other authors' messages; file: {name, size, media_type, hash} when the "
    "message records a file its author shared into the group (body then says so in words: "
    "'shared a file: NAME (SIZE)'; ask for it with groups.fetchFile), else null)"
)


def group_specs() -> tuple[MethodSpec, ...]:
    """The ``groups.*`` method declarations."""
    return (
        MethodSpec(
            "groups.create",
            groups_create,
            (
                Param("name", str, True, "the group's name"),
                Param("topic", str, False, "its topic", nullable=True),
            ),
            result=_VIEW,
            doc="Found a private group with you as its founder and only member (docs/groups.md).",
        ),
        MethodSpec(
            "groups.list",
            groups_list,
            result=f"{{groups: [{_VIEW}]}}",
            doc="List the groups you are (or were) a member of, by name.",
        ),
        MethodSpec(
            "groups.invite",
            groups_invite,
            (_GROUP, Param("contact", str, True, "the contact to invite (name, alias, uid)")),
            result="{group, invited (uid), version}",
            doc="Add a contact to the group (founder and admins): a new signed state goes to "
            "every member, and the contact's daemon lists the invitation (event group.invited).",
        ),
        MethodSpec(
            "groups.invites",
            groups_invites,
            result="{invites: [{id, group, name, topic, from (uid), from_name, members}]}",
            doc="List the invitations received and not yet joined or declined.",
        ),
        MethodSpec(
            "groups.join",
            groups_join,
            (_INVITE,),
            result=_VIEW,
            doc="Join the group of an invitation; its history arrives from the other members.",
        ),
        MethodSpec(
            "groups.decline",
            groups_decline,
            (_INVITE,),
            result="{declined}",
            doc="Forget an invitation (you stay in the group's state until an admin removes "
            "you; nothing is sent to you meanwhile that you keep).",
        ),
        MethodSpec(
            "groups.send",
            groups_send,
            (_GROUP, Param("text", str, True, f"the text (at most {MAX_BODY_BYTES} bytes)")),
            result=_MESSAGE,
            doc="Write a message to the group: signed, stored, then one durable entry per "
            "other member over the 1:1 sessions (or the mailbox).",
            deadline=60.0,
        ),
        MethodSpec(
            "groups.history",
            groups_history,
            (
                _GROUP,
                Param("limit", int, False, "the last N messages (default 50)", validator=_limit),
            ),
            result=f"{{group, messages: [{_MESSAGE}]}}",
            doc="The group's last messages, oldest first, in the order every member shows "
            "(per author in sequence, causes before effects, ties by hash).",
        ),
        MethodSpec(
            "groups.members",
            groups_members,
            (_GROUP,),
            result="{group, members: [{uid, name, display_name, role, contact, me, online}]}",
            doc="The group's members, their role, whether they are your contacts and whether "
            "a session with them is up. `name` is how to show them: your name for a contact, "
            "else `~` and the name the member chose (`display_name`, unverified; with the "
            "short uid when two go by one name), else a uid prefix.",
        ),
        MethodSpec(
            "groups.remove",
            groups_remove,
            (_GROUP, Param("member", str, True, "a contact name or a member's uid (prefix)")),
            result="{group, removed (uid), version}",
            doc="Remove a member (founder and admins): nobody sends them anything from now on "
            "and every member refuses what they write after.",
        ),
        MethodSpec(
            "groups.leave",
            groups_leave,
            (
                _GROUP,
                Param(
                    "to",
                    str,
                    False,
                    "the founder only: the member who becomes the founder (contact name or uid)",
                    nullable=True,
                ),
            ),
            result="{group, left: true, version, founder (uid)}",
            doc="Leave the group: the members are told, and stop sending to you. The founder "
            "hands the founder role over in the same signed state: to `to`, else to the "
            "longest-standing admin, else to the longest-standing member.",
        ),
        MethodSpec(
            "groups.markRead",
            groups_mark_read,
            (_GROUP,),
            result="{group, unread: 0}",
            doc="Reset the group's unread count.",
        ),
        MethodSpec(
            "groups.setMuted",
            groups_set_muted,
            (_GROUP, Param("muted", bool, True, "true: no desktop notification for its messages")),
            result=_VIEW,
            doc="Mute or unmute a group on this device: a muted group's messages raise no "
            "desktop notification. The other members are not told (event group.changed here).",
        ),
        MethodSpec(
            "groups.rename",
            groups_rename,
            (_GROUP, Param("name", str, True, "the new name")),
            result=_VIEW,
            doc="Rename the group (founder and admins): a new signed state goes to every "
            "member (event group.changed on each).",
        ),
        MethodSpec(
            "groups.setTopic",
            groups_set_topic,
            (_GROUP, Param("topic", str, True, "the new topic ('' clears it)")),
            result=_VIEW,
            doc="Set the group's topic (founder and admins): a new signed state goes to every "
            "member (event group.changed on each).",
        ),
        MethodSpec(
            "groups.setRole",
            groups_set_role,
            (
                _GROUP,
                Param("member", str, True, "a contact name or a member's uid (prefix)"),
                Param("role", str, True, "'admin' or 'member'", validator=_role),
            ),
            result="{group, member (uid), role, version}",
            doc="Make a member an admin or a plain member again (the founder only; the "
            "founder's own role cannot change). Admins may rename, set the topic, invite and "
            "remove plain members.",
        ),
    )
