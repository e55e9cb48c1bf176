"""Local commands and hooks: child processes the daemon runs for its own user.

:mod:`jarvis.exec.runner` runs programs (time-limited, cancellable, each in its own process
group, output bounded); :mod:`jarvis.exec.hooks` binds programs to the node's events;
:mod:`jarvis.ipc.exec_methods` declares their local API methods (this package imports nothing
of :mod:`jarvis.ipc`).  See docs/exec.md.
"""
