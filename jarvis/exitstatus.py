"""The ``jarvis`` command's exit statuses, one constant per meaning.

Shared by the command line (:mod:`jarvis.cli`) and the commands (:mod:`jarvis.commands`) so that
the commands never import the CLI.  It must import nothing.
"""

#: The command did what it was asked.
EXIT_OK = 0
#: The command failed; one line on stderr says why.
EXIT_FAILURE = 1
#: The command line is wrong or incomplete.
EXIT_USAGE = 2
#: Exit status after Ctrl+C (128 + SIGINT).
EXIT_INTERRUPTED = 130
