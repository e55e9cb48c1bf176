"""twistd plugin for the Jarvis daemon: ``twistd jarvis``.

twistd imports every plugin module to list them, so this module stays import-light: the daemon's
modules are imported only when twistd asks for the options or builds the service.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class JarvisServiceMaker:
    """Builds the Jarvis daemon's service tree for twistd."""

    tapname = "jarvis"
    description = "Jarvis peer-to-peer encrypted messenger daemon"

    @property
    def options(self) -> Any:
        from jarvis.app.daemon import DaemonOptions

        return DaemonOptions

    def makeService(self, options: Any) -> IService:
        from jarvis.app.daemon import make_service

        return make_service(options)


serviceMaker = JarvisServiceMaker()
