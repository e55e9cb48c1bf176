"""twistd plugin for the Jarvis mailbox server: ``twistd jarvis-mailbox``.

twistd imports every plugin module to list them, so this module stays import-light: the
mailbox's modules are imported only when twistd asks for the options or builds the service.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class MailboxServiceMaker:
    """Builds the Jarvis mailbox's service tree for twistd."""

    tapname = "jarvis-mailbox"
    description = "Jarvis mailbox: keeps encrypted blocks for offline recipients"

    @property
    def options(self) -> Any:
        from jarvis.mailbox.service import MailboxOptions

        return MailboxOptions

    def makeService(self, options: Any) -> IService:
        from jarvis.mailbox.service import make_service

        return make_service(options)


serviceMaker = MailboxServiceMaker()
