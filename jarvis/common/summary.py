"""The connection summary rule: one colour for "how many of my contacts are online".

The daemon computes it for ``peers.status`` and the ``connection.summary`` event; the UI shows it
(and adds grey on its own, for "daemon unreachable").  This is the only place the rule is written:
a pure function with no imports, so every layer (core, net, ui, the fakes) may call it.
"""

from __future__ import annotations

#: Every contact online (also with no contacts: nothing is down).
GREEN = "green"
#: Some contacts online, not all.
AMBER = "amber"
#: No contact online (and at least one contact).
RED = "red"
#: The daemon does not answer (the UI's own level; :func:`summary_level` never returns it).
GREY = "grey"


def summary_level(online: int, total: int) -> str:
    """Return the summary's level for *online* of *total* contacts.

    :returns: :data:`GREEN` if every contact is online (also when there are none),
        :data:`AMBER` if some are, else :data:`RED`.
    """
    if online >= total:
        return GREEN
    return AMBER if online > 0 else RED
