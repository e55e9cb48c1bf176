"""The ``jarvis`` command line: daemon control and one-shot commands through the local API.

Every command except ``daemon start``/``stop`` is one or two calls to the running daemon
(:mod:`jarvis.ipc.client`); nothing here touches keys or the database.  Output is plain text, or
one JSON document with ``--json``.  Errors are one line on stderr and exit status 1; usage errors
exit 2; a password refused unchecked after too many wrong ones exits 75; Ctrl+C cancels the call
in the daemon too and exits 130 (``watch`` exits 0); a closed stdout (``| head -1``) exits 141
quietly.  (:mod:`jarvis.app.exitstatus`.)

Passwords come from ``--password-file FILE`` (its first line; ``-`` reads stdin) or from a
``getpass`` prompt on a terminal; they are read before the reactor starts, sent only to the
daemon and never printed or logged.

With no command, ``jarvis`` starts the terminal UI (``jarvis.ui.app.run(options)``) when it is
installed, else prints help.  This module must not import ``jarvis.core``: it only talks to the
daemon through the API.  It is on the UI's start-up path, so what only some commands need
(prompts, child processes, threads, the IPC client) is imported where it is used, and the
commands themselves live in :mod:`jarvis.app.commands`.
"""

from __future__ import annotations

import getopt
import importlib
import json
import os
import sys
from typing import Any, NoReturn

from twisted.internet import task
from twisted.python import usage

import jarvis
from jarvis.app.exitstatus import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED
from jarvis.app.passwordfile import read_password_file
from jarvis.common import errors

__all__ = ["EXIT_INTERRUPTED", "Options", "main", "read_password_file"]
#: How many messages ``history`` shows without --limit or --all.
DEFAULT_HISTORY = 20


class UsageProblem(Exception):
    """The command line is incomplete in a way the option parser cannot see (e.g. no terminal
    to prompt for a password): fix the command line; ``jarvis COMMAND --help`` shows it."""


# Options ---------------------------------------------------------------------------------------


JSON_FLAG: list[Any] = ["json", "j", "Print one JSON document instead of text."]


class CommandOptions(usage.Options):
    """Base of every command's options: each accepts ``--json`` after the command too."""

    optFlags = [JSON_FLAG]

    def __init__(self) -> None:
        super().__init__()
        self.longdesc = " ".join((type(self).__doc__ or "").split())

    def opt_version(self) -> NoReturn:
        """Print the Jarvis version and exit."""
        print(f"jarvis {jarvis.__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse *options*, allowing options after the positional arguments (GNU style).

        ``usage.Options`` stops at the first positional argument; commands without
        subcommands put their options first, then ``--``, then the positional arguments.
        """
        if options is None or getattr(self, "subCommands", None) or "--" in options:
            return super().parseOptions(options)
        try:
            pairs, args = getopt.gnu_getopt(options, self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e)) from None
        flat = [part for opt, value in pairs for part in ((opt, value) if value else (opt,))]
        return super().parseOptions([*flat, "--", *args])


class _PasswordOptions(CommandOptions):
    #: the daemon checks this password (back-off after wrong ones): say so in --help
    checks_password = False

    def __init__(self) -> None:
        super().__init__()
        if self.checks_password:
            self.longdesc += (
                " After several wrong passwords the daemon refuses attempts unchecked for a "
                "while: the command then says how many seconds to wait and exits 75."
            )

    optParameters = [
        [
            "password-file",
            "p",
            None,
            "Read the password from the first line of FILE ('-' reads stdin); "
            "without it, prompt on the terminal.",
        ]
    ]


class InitOptions(_PasswordOptions):
    """Create the identity (starts a daemon first when none runs)."""

    synopsis = "--name NAME [--password-file FILE|-]"
    optParameters = [
        ["name", "n", None, "Your display name."],
    ]

    def postOptions(self) -> None:
        if not self["name"]:
            raise usage.UsageError("init needs --name NAME")


class DaemonStartOptions(CommandOptions):
    """Start the daemon in the background. Options not given are those the data directory's
    last daemon was started with (recorded in daemon.json), else the defaults."""

    synopsis = "[--listen ENDPOINT] [--advertise HOST:PORT]... [--password-file FILE]"
    optParameters = [
        ["listen", "l", None, "Peer-to-peer listening endpoint (e.g. tcp:7770)."],
        [
            "password-file",
            None,
            None,
            "Unlock at start with the first line of FILE (unattended use; keep it 0600).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["advertise"] = []

    def opt_advertise(self, address: str) -> None:
        """Address (HOST:PORT) to publish in link codes; may be repeated."""
        self["advertise"].append(address)


class DaemonStopOptions(CommandOptions):
    """Stop the daemon and wait until it has exited."""


class DaemonStatusOptions(CommandOptions):
    """Say whether the daemon runs, with its pid and API endpoint."""


class DaemonInstallUnitOptions(CommandOptions):
    """Write a systemd user unit (jarvis.service in $XDG_CONFIG_HOME/systemd/user, else
    ~/.config/systemd/user) that runs the daemon of the data directory in the foreground under
    systemd, restarts it when it fails and stops it cleanly; it uses the options the daemon was
    last started with unless --listen/--advertise say otherwise. The daemon starts locked: unlock
    it in the UI or with 'jarvis unlock'. Then run: systemctl --user daemon-reload && systemctl
    --user enable --now jarvis"""

    synopsis = "[--force] [--print] [--listen ENDPOINT] [--advertise HOST:PORT]..."
    optFlags = [
        ["force", "f", "Replace an existing unit file."],
        ["print", None, "Print the unit on stdout and write nothing."],
    ]
    optParameters = [
        ["listen", "l", None, "Peer-to-peer listening endpoint (e.g. tcp:7770)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["advertise"] = []

    def opt_advertise(self, address: str) -> None:
        """Address (HOST:PORT) to publish in link codes; may be repeated."""
        self["advertise"].append(address)


class DaemonCommandOptions(CommandOptions):
    """Control the background daemon."""

    synopsis = "start|stop|status|install-unit"
    subCommands = [
        ["start", None, DaemonStartOptions, "Start the daemon in the background."],
        ["stop", None, DaemonStopOptions, "Stop the daemon."],
        ["status", None, DaemonStatusOptions, "Is the daemon running?"],
        [
            "install-unit",
            None,
            DaemonInstallUnitOptions,
            "Write a systemd user unit that runs the daemon.",
        ],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("daemon needs start, stop, status or install-unit")


class UnlockOptions(_PasswordOptions):
    """Unlock the identity with the master password."""

    checks_password = True

    synopsis = "[--password-file FILE|-]"


class LockOptions(CommandOptions):
    """Lock every client out until the password is given again.

    Peer sessions stay up and messages keep arriving; with --wipe the daemon also forgets the
    keys and closes every session until the next unlock.
    """

    optFlags = [["wipe", None, "Also drop the keys from memory and close peer sessions."]]


class ExportOptions(_PasswordOptions):
    """Export identity, contacts and history to one password-sealed file."""

    synopsis = "FILE.jexport [--password-file FILE|-]"

    def parseArgs(self, path: str) -> None:  # type: ignore[override]
        self["path"] = os.path.abspath(path)


class ImportOptions(_PasswordOptions):
    """Restore an export into an empty data directory (starts a daemon when none runs)."""

    synopsis = "FILE.jexport [--export-password-file FILE|-] [--password-file FILE|-]"
    optParameters = [
        [
            "export-password-file",
            None,
            None,
            "Read the export's password from FILE ('-' reads stdin); else prompt.",
        ]
    ]

    def parseArgs(self, path: str) -> None:  # type: ignore[override]
        self["path"] = os.path.abspath(path)


class DeleteAccountOptions(_PasswordOptions):
    """Delete the identity and every file of the data directory (asks for the password)."""

    checks_password = True


class WhoamiOptions(CommandOptions):
    """Show your name, uid, fingerprint and link code."""

    optParameters = [["card", None, None, "Also write your contact card (.jcard) to FILE."]]


class AddOptions(CommandOptions):
    """Add a contact from a jarvis:// link code or a .jcard file."""

    synopsis = "LINK_OR_CARD_FILE [--name ALIAS] [--verified]"
    optParameters = [["name", "n", None, "A local alias for the contact."]]
    optFlags = [["verified", None, "You compared the fingerprint with the contact."]]

    def parseArgs(self, link_or_card: str) -> None:  # type: ignore[override]
        self["link_or_card"] = link_or_card


class ContactsOptions(CommandOptions):
    """List your contacts."""


class SendOptions(CommandOptions):
    """Send a message; prints the message id. Without TEXT, or with TEXT '-', the message is
    read from stdin (to its end): prefer that, because TEXT on the command line is visible to
    every local user in the process list."""

    synopsis = "CONTACT [TEXT|-] [--wait sent|delivered] [--timeout S]"
    optParameters = [
        ["wait", "w", None, "Wait until the message is 'sent' or 'delivered'."],
        ["timeout", "t", 30.0, "Seconds to wait with --wait.", float],
    ]

    def parseArgs(self, contact: str, text: str = "-") -> None:  # type: ignore[override]
        self["contact"] = contact
        self["text"] = text

    def postOptions(self) -> None:
        if self["wait"] not in (None, "sent", "delivered"):
            raise usage.UsageError("--wait must be 'sent' or 'delivered'")
        if self["timeout"] <= 0:
            raise usage.UsageError("--timeout must be positive")


class HistoryOptions(CommandOptions):
    """Show a conversation, oldest message first: its last N messages (default 20), or all of
    them, or those before or after a message id. Scripts page with --json: pass the first
    message's id as --before for older ones, the last one's as --after for newer ones."""

    synopsis = "CONTACT [--limit N | --all] [--before MESSAGE_ID] [--after MESSAGE_ID]"
    optFlags = [["all", "a", "Every message (fetched from the daemon 200 at a time)."]]
    optParameters = [
        ["limit", "n", None, f"How many messages, any N >= 1 (default {DEFAULT_HISTORY}).", int],
        ["before", "b", None, "Only messages older than MESSAGE_ID: the N just before it."],
        [
            "after",
            None,
            None,
            "Only messages newer than MESSAGE_ID: the N just after it (with --before too: "
            "those between the two).",
        ],
    ]

    def parseArgs(self, contact: str) -> None:  # type: ignore[override]
        self["contact"] = contact

    def postOptions(self) -> None:
        if self["all"] and self["limit"] is not None:
            raise usage.UsageError("give --limit N or --all, not both")
        if self["limit"] is not None and self["limit"] < 1:
            raise usage.UsageError("--limit must be at least 1")
        if not self["all"] and self["limit"] is None:
            self["limit"] = DEFAULT_HISTORY
        if self["all"]:
            self["limit"] = None


class _ContactOptions(CommandOptions):
    synopsis = "CONTACT"

    def parseArgs(self, contact: str) -> None:  # type: ignore[override]
        self["contact"] = contact


class VerifyOptions(_ContactOptions):
    """Show your fingerprint, the contact's and your shared safety code, ask on the terminal
    whether the contact read you the same safety code (in person or over a channel you trust),
    and if so mark the contact verified. With --json, --yes is required."""

    synopsis = "CONTACT [--yes]"
    optFlags = [["yes", "y", "Do not ask: you already compared the safety code (scripts)."]]


class RemoveOptions(_ContactOptions):
    """Remove a contact; its conversation is kept unless --with-history is given."""

    synopsis = "CONTACT [--with-history]"
    optFlags = [["with-history", None, "Also delete the conversation with the contact."]]


class RenameOptions(CommandOptions):
    """Give a contact a local alias (what you see; the contact's own name is kept)."""

    synopsis = "CONTACT NAME"

    def parseArgs(self, contact: str, name: str) -> None:  # type: ignore[override]
        self["contact"] = contact
        self["name"] = name


class PasswdOptions(_PasswordOptions):
    """Change the master password. Both passwords are asked on the terminal (the new one
    twice), or read from files; when both files are '-', stdin's first line is the current
    password and its second line the new one."""

    checks_password = True

    synopsis = "[--password-file FILE|-] [--new-password-file FILE|-]"
    optParameters = [
        [
            "new-password-file",
            None,
            None,
            "Read the new password from the first line of FILE ('-' reads stdin); without "
            "it, prompt twice on the terminal.",
        ]
    ]


class SettingsOptions(CommandOptions):
    """List the settings, show one (KEY) or change one (KEY VALUE). On/off settings take
    on/off, true/false, yes/no or 1/0. Settings: notifications, previews, bell, lan_discovery
    (announce to and find contacts on the local network; off stops it at once)."""

    synopsis = "[KEY [VALUE]]"

    def parseArgs(self, key: str | None = None, value: str | None = None) -> None:  # type: ignore[override]
        self["key"] = key
        self["value"] = value


class PeersOptions(CommandOptions):
    """Show every contact's connection: online or offline and since when, traffic, sessions
    dialled and accepted, failed dials and the last error; the path of a live session
    (direct) and the addresses where LAN discovery found a contact. Counters run from the
    daemon's unlock."""


class WatchOptions(CommandOptions):
    """Print daemon events as JSON lines until interrupted: every event, or only the EVENTs
    named (see docs/ipc.md, Events)."""

    synopsis = "[EVENT ...]"

    def parseArgs(self, *events: str) -> None:  # type: ignore[override]
        self["events"] = list(events) or None


class RpcOptions(CommandOptions):
    """Call any API method (see docs/ipc.md) and print its JSON result."""

    synopsis = "METHOD [JSON_PARAMS]"

    def parseArgs(self, method: str, params: str | None = None) -> None:  # type: ignore[override]
        self["method"] = method
        try:
            value = json.loads(params) if params is not None else {}
        except ValueError as e:
            raise usage.UsageError(f"JSON_PARAMS is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise usage.UsageError("JSON_PARAMS must be a JSON object")
        self["params"] = value


class ExecOptions(CommandOptions):
    """Run a program in the daemon and stream its output here (Ctrl+C cancels it: its whole
    process group is terminated). Put -- before ARGV when it has options of its own. The exit
    status is the program's (128+N after signal N, 124 after the timeout). --list shows the
    programs running and queued, --kill ID terminates one. No shell runs unless --shell is
    given (ARGV is then one command line). Output is shown with control characters made
    visible; --json prints JSON lines instead. See docs/exec.md."""

    synopsis = (
        "[--timeout S] [--pty] [--cwd DIR] [--env NAME=VALUE] [--shell] -- ARGV... "
        "| --list | --kill ID"
    )
    optFlags = [
        JSON_FLAG,
        ["pty", None, "Run on a pseudo-terminal (the program sees a terminal)."],
        ["shell", None, "Run ARGV, one command line, with /bin/sh -c."],
        ["list", None, "List the programs running or queued in the daemon."],
    ]
    optParameters = [
        ["timeout", "t", None, "Seconds before the program is terminated (default 60).", float],
        ["cwd", None, None, "Working directory (default: the current one)."],
        ["kill", None, None, "Terminate the run with this id (see --list).", int],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["env"] = {}

    def opt_env(self, assignment: str) -> None:
        """NAME=VALUE added to the program's environment; may be repeated."""
        name, sep, value = assignment.partition("=")
        if not sep or not name:
            raise usage.UsageError(f"--env wants NAME=VALUE, not {assignment!r}")
        self["env"][name] = value

    def parseArgs(self, *argv: str) -> None:  # type: ignore[override]
        self["argv"] = list(argv)

    def postOptions(self) -> None:
        modes = bool(self["argv"]) + bool(self["list"]) + (self["kill"] is not None)
        if modes != 1:
            raise usage.UsageError("give ARGV to run, or --list, or --kill ID")
        if self["shell"] and len(self["argv"]) != 1:
            raise usage.UsageError("--shell takes one command line: quote it")
        if self["cwd"] is None:
            self["cwd"] = os.getcwd()
        self["cwd"] = os.path.abspath(self["cwd"])


class HookAddOptions(CommandOptions):
    """Bind a program to an event: it runs with the event as JSON on stdin and JARVIS_*
    variables (JARVIS_CONTACT_UID, JARVIS_CONTACT_NAME, JARVIS_MESSAGE_ID, JARVIS_EVENT,
    JARVIS_HOOK); with --reply its standard output is sent back to the contact. Put -- before
    ARGV. See docs/exec.md."""

    synopsis = (
        "NAME [--event E] [--contact C] [--pattern RE] [--reply] [--timeout S] [--rate N] "
        "-- ARGV..."
    )
    optFlags = [
        JSON_FLAG,
        ["reply", None, "Send the program's output (exit 0, not blank) back to the contact."],
    ]
    optParameters = [
        [
            "event",
            "e",
            "message.received",
            "message.received, peer.statusChanged or contact.changed.",
        ],
        ["contact", "c", None, "Only this contact (default: every contact)."],
        ["pattern", "p", None, "Only message bodies matching this regular expression."],
        ["timeout", "t", 10.0, "Seconds per run.", float],
        ["rate", "r", 10, "Runs per minute per contact; more are dropped.", int],
    ]

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Options may come before or after NAME; everything after ``--`` is ARGV."""
        if options is not None and "--" in options:
            split = options.index("--")
            try:
                pairs, args = getopt.gnu_getopt(options[:split], self.shortOpt, self.longOpt)
            except getopt.error as e:
                raise usage.UsageError(str(e)) from None
            flat = [p for opt, value in pairs for p in ((opt, value) if value else (opt,))]
            options = [*flat, "--", *args, *options[split + 1 :]]
            return usage.Options.parseOptions(self, options)
        return super().parseOptions(options)

    def parseArgs(self, name: str, *argv: str) -> None:  # type: ignore[override]
        if not argv:
            raise usage.UsageError("hook add NAME -- PROGRAM [ARGS...]")
        self["name"] = name
        self["argv"] = list(argv)


class HookListOptions(CommandOptions):
    """List the hooks and their figures (runs, failures, replies, dropped events)."""


class HookRemoveOptions(CommandOptions):
    """Remove a hook."""

    synopsis = "NAME"

    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        self["name"] = name


class HookCommandOptions(CommandOptions):
    """Programs run on events (auto-replies, notifiers); configured only here, locally."""

    synopsis = "add|list|remove"
    subCommands = [
        ["add", None, HookAddOptions, "Bind a program to an event."],
        ["list", None, HookListOptions, "List the hooks."],
        ["remove", None, HookRemoveOptions, "Remove a hook."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("hook needs add, list or remove")


class MailboxUseOptions(CommandOptions):
    """Use the mailbox at LINK (a jarvis-mailbox: link, as its operator's mailbox.link file
    gives it) for offline delivery: the daemon creates one queue per contact there, collects
    them, and tells every contact where to deposit while you are offline. Replaces the mailbox
    used before. See docs/mailbox.md."""

    synopsis = "LINK"

    def parseArgs(self, link: str) -> None:  # type: ignore[override]
        self["link"] = link


class MailboxStatusOptions(CommandOptions):
    """Show the mailbox in use: reachable or not, queues held, contacts you can deposit for,
    the last collection, deposits and collections since unlock."""


class MailboxDropOptions(CommandOptions):
    """Stop using the mailbox: delete your queues there and tell your contacts."""


class MailboxCommandOptions(CommandOptions):
    """Offline delivery through a mailbox (a store-and-forward server that sees only
    ciphertext): use one, show its status, or drop it."""

    synopsis = "use LINK|status|drop"
    subCommands = [
        ["use", None, MailboxUseOptions, "Use the mailbox at LINK."],
        ["status", None, MailboxStatusOptions, "Show the mailbox in use."],
        ["drop", None, MailboxDropOptions, "Stop using the mailbox."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("mailbox needs use, status or drop")


# groups (issue 17) -----------------------------------------------------------------------------


class GroupCreateOptions(CommandOptions):
    """Found a private group with you as founder and only member; prints its id (docs/groups.md)."""

    synopsis = "NAME [--topic TOPIC]"
    optParameters = [["topic", "t", None, "The group's topic."]]

    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        self["name"] = name


class GroupListOptions(CommandOptions):
    """List your groups: id, name, members, unread count."""


class GroupInviteOptions(CommandOptions):
    """Invite a contact to a group (founder and admins). The invitation reaches the contact's
    daemon, where 'jarvis group invites' lists it."""

    synopsis = "GROUP CONTACT"

    def parseArgs(self, group: str, contact: str) -> None:  # type: ignore[override]
        self["group"], self["contact"] = group, contact


class GroupInvitesOptions(CommandOptions):
    """List the invitations you received, with the id to give 'jarvis group join'."""


class GroupJoinOptions(CommandOptions):
    """Join the group of an invitation (INVITE_ID from 'jarvis group invites')."""

    synopsis = "INVITE_ID"

    def parseArgs(self, invite: str) -> None:  # type: ignore[override]
        self["invite"] = invite


class GroupDeclineOptions(CommandOptions):
    """Forget an invitation."""

    synopsis = "INVITE_ID"

    def parseArgs(self, invite: str) -> None:  # type: ignore[override]
        self["invite"] = invite


class GroupSendOptions(CommandOptions):
    """Send TEXT to every member of GROUP (its id or its name)."""

    synopsis = "GROUP TEXT"

    def parseArgs(self, group: str, text: str) -> None:  # type: ignore[override]
        self["group"], self["text"] = group, text


class GroupHistoryOptions(CommandOptions):
    """Show a group's last messages, oldest first, in the order every member shows them. A
    member who is not your contact is shown by the name it chose, marked unverified: ~bob
    (with its short uid when two go by one name). JSON items carry id, author (uid),
    author_name, body and seq."""

    synopsis = "GROUP [--limit N]"
    optParameters = [["limit", "n", DEFAULT_HISTORY, "How many messages (N >= 1).", int]]

    def parseArgs(self, group: str) -> None:  # type: ignore[override]
        self["group"] = group

    def postOptions(self) -> None:
        if self["limit"] < 1:
            raise usage.UsageError("--limit must be at least 1")


class GroupMembersOptions(CommandOptions):
    """List a group's members with their role and whether they are online. A contact is shown
    by your name for it; another member by the name it chose, marked unverified (~bob)."""

    synopsis = "GROUP"

    def parseArgs(self, group: str) -> None:  # type: ignore[override]
        self["group"] = group


class GroupRemoveOptions(CommandOptions):
    """Remove MEMBER (a contact name or a uid) from GROUP (founder and admins): they receive
    nothing sent after, and what they write after is refused by every member."""

    synopsis = "GROUP MEMBER"

    def parseArgs(self, group: str, member: str) -> None:  # type: ignore[override]
        self["group"], self["member"] = group, member


class GroupLeaveOptions(CommandOptions):
    """Leave GROUP. The founder hands the founder role over in the same signed change: to
    MEMBER with --to, else to the longest-standing admin, else to the longest-standing
    member."""

    synopsis = "GROUP [--to MEMBER]"
    optParameters = [
        ["to", None, None, "The founder only: who becomes the founder (a contact name or uid)."]
    ]

    def parseArgs(self, group: str) -> None:  # type: ignore[override]
        self["group"] = group


class GroupRenameOptions(CommandOptions):
    """Rename GROUP to NAME (founder and admins); every member sees the new name."""

    synopsis = "GROUP NAME"

    def parseArgs(self, group: str, name: str) -> None:  # type: ignore[override]
        self["group"], self["name"] = group, name


class GroupTopicOptions(CommandOptions):
    """Set GROUP's topic to TEXT (founder and admins); an empty TEXT clears it."""

    synopsis = "GROUP TEXT"

    def parseArgs(self, group: str, text: str) -> None:  # type: ignore[override]
        self["group"], self["text"] = group, text


class GroupMuteOptions(CommandOptions):
    """No desktop notification for GROUP's messages on this device (unmute: again). The other
    members are not told."""

    synopsis = "GROUP"

    def parseArgs(self, group: str) -> None:  # type: ignore[override]
        self["group"] = group


class GroupRoleOptions(CommandOptions):
    """Make MEMBER (a contact name or a uid) an admin or a plain member of GROUP (the founder
    only). Admins may rename, set the topic, invite and remove plain members."""

    synopsis = "GROUP MEMBER admin|member"

    def parseArgs(self, group: str, member: str, role: str) -> None:  # type: ignore[override]
        if role not in ("admin", "member"):
            raise usage.UsageError("the role is 'admin' or 'member'")
        self["group"], self["member"], self["role"] = group, member, role


class GroupSendFileOptions(CommandOptions):
    """Send a file into GROUP: hashed once, offered to every other member (one transfer each,
    listed by 'jarvis files'); each member accepts it on its own. Prints one line per
    transfer. With --wait, wait until every transfer ended (one progress bar for all of them
    on a terminal); the exit status is 1 unless every one completed. Several PATHs are sent
    one after the other, as with 'jarvis send-file'."""

    synopsis = "GROUP PATH [PATH ...] [--wait]"
    optFlags = [["wait", "w", "Wait until every member's transfer ended."]]

    def parseArgs(self, group: str, *paths: str) -> None:  # type: ignore[override]
        if not paths:
            raise usage.UsageError("group send-file needs GROUP and at least one PATH")
        self["group"] = group
        self["paths"] = [os.path.abspath(os.path.expanduser(p)) for p in paths]


class GroupFetchFileOptions(CommandOptions):
    """Ask for a file shared into GROUP: MESSAGE is the id (8+ hex digits) that 'jarvis group
    history' shows in brackets after 'shared a file: ...'. For a file shared before you
    joined, or one you declined. The member who shared it is asked when it is online; else,
    or when it does not have it, the other members online in turn (those who received it
    serve it), and an author who was offline last. With --from, only that member is asked.
    The transfer is 'requested' until a member's daemon offers that very file (checked
    against the recorded size and hash), then accepted at once into --to; prints the
    transfer id. With --wait, wait until it ended (a progress bar on a terminal); the exit
    status is 1 unless it completed."""

    synopsis = "GROUP MESSAGE [--to DIR] [--from MEMBER] [--wait]"
    optParameters = [
        ["to", "t", None, "Folder to save into (default: ~/Downloads)."],
        ["from", "f", None, "Ask only this member (uid, uid prefix or contact name)."],
    ]
    optFlags = [["wait", "w", "Wait until the transfer is complete, cancelled or failed."]]

    def parseArgs(self, group: str, message: str) -> None:  # type: ignore[override]
        self["group"], self["message"] = group, message

    def postOptions(self) -> None:
        if self["to"] is not None:
            self["to"] = os.path.abspath(os.path.expanduser(self["to"]))


class GroupCommandOptions(CommandOptions):
    """Private groups: every member gets every message once, in the same order; members need
    not be each other's contacts (docs/groups.md). GROUP is a group id or name."""

    synopsis = (
        "create|list|invite|invites|join|decline|send|send-file|fetch-file|history|members|"
        "remove|leave|rename|topic|role|mute|unmute"
    )
    subCommands = [
        ["create", None, GroupCreateOptions, "Found a group; prints its id."],
        ["list", None, GroupListOptions, "List your groups."],
        ["invite", None, GroupInviteOptions, "Invite a contact to a group."],
        ["invites", None, GroupInvitesOptions, "List invitations received."],
        ["join", None, GroupJoinOptions, "Join a group you were invited to."],
        ["decline", None, GroupDeclineOptions, "Forget an invitation."],
        ["send", None, GroupSendOptions, "Send a message to a group."],
        ["send-file", None, GroupSendFileOptions, "Send a file to every member of a group."],
        [
            "fetch-file",
            None,
            GroupFetchFileOptions,
            "Ask a member for a file it shared into a group.",
        ],
        ["history", None, GroupHistoryOptions, "Show a group's messages."],
        ["members", None, GroupMembersOptions, "List a group's members."],
        ["remove", None, GroupRemoveOptions, "Remove a member from a group."],
        ["leave", None, GroupLeaveOptions, "Leave a group."],
        ["rename", None, GroupRenameOptions, "Rename a group."],
        ["topic", None, GroupTopicOptions, "Set a group's topic."],
        ["role", None, GroupRoleOptions, "Make a member an admin or a plain member."],
        ["mute", None, GroupMuteOptions, "No desktop notifications for a group's messages."],
        ["unmute", None, GroupMuteOptions, "Desktop notifications for a group's messages again."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("group needs a subcommand: jarvis group --help")


class SendFileOptions(CommandOptions):
    """Offer a file to a contact; prints the transfer id. The contact accepts it ('jarvis
    accept ID'); the file then streams on a connection of its own, resuming after a restart
    of either side. With --wait, wait until the transfer ended (a progress bar on a terminal);
    the exit status is 1 unless it completed. Several PATHs (e.g. photos/*.jpg) are offered
    one after the other, a line each (a path that cannot be sent is said on stderr and the
    others still go; exit status 1); with --wait, one bar for all, then each one's end. A
    folder is sent whole: each file in it (at most 500) is offered with the folder it is in,
    and the contact receives them in one new folder (photos, or photos (1) if taken); links,
    devices, pipes and sockets in it are left out, said on stderr (--json: left_out,
    left_out_first)."""

    synopsis = "CONTACT PATH [PATH ...] [--wait]"
    optFlags = [
        ["wait", "w", "Wait until the transfers are complete, declined, cancelled or failed."]
    ]

    def parseArgs(self, contact: str, *paths: str) -> None:  # type: ignore[override]
        if not paths:
            raise usage.UsageError("send-file needs CONTACT and at least one PATH")
        self["contact"] = contact
        self["paths"] = [os.path.abspath(os.path.expanduser(p)) for p in paths]


def parse_size(text: str) -> int:
    """``1500``, ``100K``, ``20M``, ``2G``, ``1T`` (binary units) -> bytes."""
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in "KMGT" else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise usage.UsageError(f"{text!r} is not a size (like 500M or 2G)") from None
    if number < 0:
        raise usage.UsageError("a size cannot be negative")
    return int(number * units[unit])


class FilesOptions(CommandOptions):
    """List file transfers, both directions, newest first (id, direction, state, progress,
    name, contact); with --active, only those not ended (offered, accepted, streaming,
    requested). With --max-size, --downloads or --auto-accept: change the receiving
    policy instead and print it; with --policy, print it."""

    optFlags = [
        ["policy", None, "Show the receiving policy."],
        ["active", "a", "Only transfers not ended yet (not complete, cancelled or failed)."],
    ]
    optParameters = [
        ["max-size", None, None, "Refuse offers larger than SIZE (like 2G; default 4G)."],
        ["downloads", None, None, "Default folder for accepted files (default ~/Downloads)."],
        [
            "auto-accept",
            None,
            None,
            "CONTACT=SIZE: accept this contact's files up to SIZE without asking (0: ask).",
        ],
    ]

    def postOptions(self) -> None:
        if self["max-size"] is not None:
            self["max-size"] = parse_size(self["max-size"])
        if self["downloads"] is not None:
            self["downloads"] = os.path.abspath(os.path.expanduser(self["downloads"]))
        if self["auto-accept"] is not None:
            contact, sep, size = self["auto-accept"].rpartition("=")
            if not sep or not contact:
                raise usage.UsageError("--auto-accept takes CONTACT=SIZE")
            self["auto-accept"] = (contact, parse_size(size))


class _IdsOrAllOptions(CommandOptions):
    """One or more transfer ids, or ``--all`` of those the command answers (the option
    named :attr:`contact_option`: one contact's only)."""

    #: The option that keeps ``--all`` to one contact's transfers.
    contact_option = "from"

    def parseArgs(self, *ids: str) -> None:  # type: ignore[override]
        self["ids"] = list(dict.fromkeys(ids))
        self["id"] = ids[0] if ids else None

    def postOptions(self) -> None:
        if self["all"] and self["ids"]:
            raise usage.UsageError("give IDs or --all, not both")
        if not self["all"] and not self["ids"]:
            raise usage.UsageError("give a transfer ID ('jarvis files' lists them), or --all")
        if self[self.contact_option] is not None and not self["all"]:
            raise usage.UsageError(f"--{self.contact_option} goes with --all")


class _OffersOptions(_IdsOrAllOptions):
    """Offers waiting for our answer: one or more ids, or ``--all`` of them (``--from``
    CONTACT's only)."""

    optFlags = [["all", "a", "Every offer waiting for your answer, oldest first."]]
    optParameters = [["from", "f", None, "With --all: only CONTACT's offers."]]


class AcceptOptions(_OffersOptions):
    """Accept offered files (each ID from 'jarvis files', or a unique prefix of 4+
    characters; --all: every offer waiting, --from CONTACT: only theirs). Each file is saved
    under its sanitised name, never overwriting ('name (1).ext'), once verified; until then
    it is a hidden 0600 partial file in the same folder. With several IDs or --all, each is
    answered in turn: one that fails is said on stderr and the others still go (exit status
    1 if any failed). With --wait, wait until the accepted files have arrived (a progress bar
    on a terminal), then print how each ended (exit status 1 unless all complete)."""

    synopsis = "(ID [ID ...] | --all [--from CONTACT]) [--to DIR] [--wait]"
    optFlags = [
        *_OffersOptions.optFlags,
        ["wait", "w", "Wait until the accepted files have arrived (or ended otherwise)."],
    ]
    optParameters = [
        *_OffersOptions.optParameters,
        ["to", "t", None, "Folder to save into (default: ~/Downloads)."],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        if self["to"] is not None:
            self["to"] = os.path.abspath(os.path.expanduser(self["to"]))


class DeclineOptions(_OffersOptions):
    """Decline offered files (each sender is told); several IDs, or --all [--from CONTACT],
    as for accept."""

    synopsis = "ID [ID ...] | --all [--from CONTACT]"


class CancelOptions(_IdsOrAllOptions):
    """Cancel file transfers, sending or receiving (the contact is told; a partial file is
    removed); several IDs as for accept. --all cancels every transfer not ended yet, both
    ways (offers made or waiting for your answer, files streaming or waiting to resume),
    oldest first; --with CONTACT only those with that contact."""

    synopsis = "ID [ID ...] | --all [--with CONTACT]"
    contact_option = "with"
    optFlags = [["all", "a", "Every transfer not ended yet, both ways, oldest first."]]
    optParameters = [["with", "w", None, "With --all: only the transfers with CONTACT."]]


class Options(usage.Options):
    """``jarvis [--data-dir DIR] [--json] [--version] COMMAND``."""

    synopsis = "jarvis [--data-dir DIR] [--json] [--embedded] [--version] [COMMAND [OPTIONS]]"
    longdesc = (
        "Jarvis, a peer-to-peer end-to-end-encrypted messenger. Without COMMAND, the terminal "
        "UI starts. Commands talk to the background daemon of the data directory. Exit "
        "status: 0 done, 1 failed (one line on stderr), 2 usage error, 75 password refused "
        "unchecked after too many wrong ones (retry later), 130 interrupted, 141 stdout closed "
        "early."
    )
    optFlags = [
        JSON_FLAG,
        [
            "embedded",
            None,
            "With no command: run the daemon inside the UI process (it stops when the UI quits).",
        ],
    ]
    optParameters = [
        ["data-dir", "d", None, "Data directory (default: $JARVIS_HOME or the platform's)."]
    ]
    subCommands = [
        ["init", None, InitOptions, "Create your identity."],
        ["daemon", None, DaemonCommandOptions, "Start, stop or check the daemon."],
        ["unlock", None, UnlockOptions, "Unlock the identity."],
        ["lock", None, LockOptions, "Lock the identity."],
        ["whoami", None, WhoamiOptions, "Show your identity and link code."],
        ["add", None, AddOptions, "Add a contact."],
        ["contacts", None, ContactsOptions, "List contacts."],
        ["send", None, SendOptions, "Send a message."],
        ["history", None, HistoryOptions, "Show a conversation."],
        ["verify", None, VerifyOptions, "Compare safety codes and mark a contact verified."],
        ["rename", None, RenameOptions, "Give a contact a local alias."],
        ["remove", None, RemoveOptions, "Remove a contact."],
        ["peers", None, PeersOptions, "Show connection status and figures per contact."],
        ["mailbox", None, MailboxCommandOptions, "Use, show or drop your offline mailbox."],
        ["group", None, GroupCommandOptions, "Private groups: create, invite, send, history."],
        ["settings", None, SettingsOptions, "List, show or change settings."],
        ["passwd", None, PasswdOptions, "Change the master password."],
        ["watch", None, WatchOptions, "Print events as JSON lines."],
        ["rpc", None, RpcOptions, "Call an API method."],
        ["exec", None, ExecOptions, "Run a program in the daemon, streaming its output."],
        ["hook", None, HookCommandOptions, "Add, list or remove hooks (programs run on events)."],
        ["export", None, ExportOptions, "Export the account to a sealed file."],
        ["import", None, ImportOptions, "Import an exported account."],
        ["delete-account", None, DeleteAccountOptions, "Delete the account and its data."],
        ["send-file", None, SendFileOptions, "Offer a file to a contact."],
        ["files", None, FilesOptions, "List file transfers."],
        ["accept", None, AcceptOptions, "Accept an offered file."],
        ["decline", None, DeclineOptions, "Decline an offered file."],
        ["cancel", None, CancelOptions, "Cancel a file transfer."],
    ]

    def opt_version(self) -> NoReturn:
        """Print the Jarvis version and exit."""
        print(f"jarvis {jarvis.__version__}")
        raise SystemExit(0)

    def wants_json(self) -> bool:
        """Whether ``--json`` was given before or after the command."""
        level: Any = self
        while level is not None:
            if level.get("json"):
                return True
            level = getattr(level, "subOptions", None)
        return False

    def data_dir(self) -> str:
        """Return the data directory (absolute)."""
        from jarvis.common import paths

        chosen = self["data-dir"] or paths.default_data_dir()
        return os.path.abspath(os.path.expanduser(chosen))


# Secrets and input, read before the reactor runs -----------------------------------------------


def ask_password(
    options: usage.Options,
    *,
    confirm: bool,
    option: str = "password-file",
    prompt: str = "Password: ",
) -> str:
    """Return the password from the file option *option* or a terminal prompt.

    :raises UsageProblem: without a password file and without a terminal.
    :raises errors.InvalidInput: if the two prompted passwords differ.
    """
    import getpass

    if options[option]:
        return read_password_file(options[option])
    if not sys.stdin.isatty():
        raise UsageProblem(f"no terminal to ask for the password: use --{option} FILE (or -)")
    password = getpass.getpass(prompt)
    if confirm and getpass.getpass("Repeat the password: ") != password:
        raise errors.InvalidInput("the passwords differ; nothing was changed")
    return password


def ask_new_password(options: usage.Options) -> str:
    """Return ``passwd``'s new password: ``--new-password-file`` or two terminal prompts."""
    return ask_password(options, confirm=True, option="new-password-file", prompt="New password: ")


def prepare(options: Options) -> dict[str, Any]:
    """Read what the command needs from files, stdin and prompts, before the reactor starts.

    :returns: the inputs by name (``password``, ``text``, ``card``/``link``).
    """
    command, sub = options.subCommand, options.subOptions
    inputs: dict[str, Any] = {}
    if command == "init":
        inputs["password"] = ask_password(sub, confirm=True)
    elif command in ("unlock", "delete-account"):
        inputs["password"] = ask_password(sub, confirm=False)
    elif command == "export":
        inputs["password"] = ask_password(sub, confirm=True)
    elif command == "import":
        if sub["export-password-file"]:
            inputs["export_password"] = read_password_file(sub["export-password-file"])
        elif sys.stdin.isatty():
            import getpass

            inputs["export_password"] = getpass.getpass("Password of the export: ")
        else:
            raise UsageProblem("no terminal to ask for passwords: use --export-password-file")
        inputs["password"] = ask_password(sub, confirm=True)
    elif command == "passwd":
        inputs["password"] = ask_password(sub, confirm=False, prompt="Current password: ")
        inputs["new_password"] = ask_new_password(sub)
    elif command == "verify":
        if options.wants_json() and not sub["yes"]:
            raise UsageProblem(
                "verify --json cannot ask for a confirmation: compare the safety code "
                "('jarvis verify CONTACT' shows it), then run it again with --yes"
            )
        if not sub["yes"] and not sys.stdin.isatty():
            raise UsageProblem(
                "no terminal to ask whether the safety codes match: compare them, then run "
                "'jarvis verify CONTACT --yes'"
            )
    elif command == "send":
        if sub["text"] == "-":
            if sys.stdin.isatty():
                print("Type the message, then Ctrl+D on a line of its own:", file=sys.stderr)
            inputs["text"] = sys.stdin.read().rstrip("\n")
        else:
            inputs["text"] = sub["text"]
    elif command == "add":
        source = sub["link_or_card"]
        if source.startswith("jarvis://"):
            inputs["link"] = source
        elif os.path.isfile(source):
            try:
                with open(source, encoding="utf-8") as f:
                    inputs["card"] = f.read()
            except (OSError, UnicodeDecodeError) as e:
                raise errors.InvalidInput(f"cannot read the card file {source}: {e}")
        else:
            raise errors.InvalidInput(
                f"{source!r} is neither a jarvis:// link code nor a .jcard file"
            )
    return inputs


def _start_ui(options: Options) -> int | None:
    try:
        app = importlib.import_module("jarvis.ui.app")
    except ModuleNotFoundError as e:
        if e.name not in ("jarvis.ui.app", "jarvis.ui"):
            raise
        return None
    embedded_service = None
    if options["embedded"]:
        # the composition root wires: the UI is handed the daemon's service builder
        from jarvis.app.daemon import make_embedded_service

        embedded_service = make_embedded_service
    status = app.run(options.data_dir(), embedded_service=embedded_service)
    return int(status or 0)


def main(argv: list[str] | None = None) -> NoReturn:
    """The ``jarvis`` console script.

    Output to a closed pipe (``jarvis --help | head -1``) ends the command quietly with
    :data:`~jarvis.app.exitstatus.EXIT_BROKEN_PIPE` (141), with no traceback.

    :param argv: the arguments (default ``sys.argv[1:]``).
    """
    try:
        _main(argv)
    except SystemExit as exit_:
        status = exit_.code
        try:
            sys.stdout.flush()  # here, not at exit, where a failure could not be handled
        except BrokenPipeError:
            status = _broken_pipe()
        raise SystemExit(status) from None
    except BrokenPipeError:
        raise SystemExit(_broken_pipe()) from None
    raise SystemExit(0)


def _broken_pipe() -> int:
    from jarvis.app.commands import quiet_stdout

    quiet_stdout()
    return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None) -> None:
    """:func:`main` without its closed-pipe handling (raises ``SystemExit`` with the status)."""
    args = sys.argv[1:] if argv is None else argv
    options = Options()
    try:
        options.parseOptions(args)
    except usage.UsageError as e:
        print(f"jarvis: {e}", file=sys.stderr)
        print("Try 'jarvis --help' (or 'jarvis COMMAND --help').", file=sys.stderr)
        raise SystemExit(2)
    if options.subCommand is None:
        status = _start_ui(options)
        if status is None:
            print(str(options), end="")
            status = 0
        raise SystemExit(status)
    try:
        inputs = prepare(options)
    except UsageProblem as e:
        print(f"jarvis: {e}", file=sys.stderr)
        raise SystemExit(2)
    except errors.JarvisError as e:
        print(f"jarvis: {e}", file=sys.stderr)
        raise SystemExit(1)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED)
    from jarvis.app.commands import run
    from jarvis.runtime import reactor as jarvis_reactor

    reactor = jarvis_reactor.install()
    task.react(run, (options, inputs), _reactor=reactor)
    raise SystemExit(0)  # task.react exits itself; this line is for type checkers
