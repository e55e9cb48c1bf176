"""Local commands and hooks: child processes the daemon runs for its own user.

:mod:`jarvis.exec.runner` runs programs (time-limited, cancellable, each in its own process
group, output bounded); :mod:`jarvis.exec.hooks` binds programs to the node's events;
:mod:`jarvis.exec.api` declares their local API methods.  See docs/exec.md.
"""
