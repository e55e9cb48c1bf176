"""The ``jarvis`` command's exit statuses, one constant per meaning.

Shared by the command line (:mod:`jarvis.app.cli`) and the commands (:mod:`jarvis.app.commands`) so
that
the commands never import the CLI.  It must import nothing.
"""

#: The command did what it was asked.
EXIT_OK = 0
#: The command failed; one line on stderr says why.
EXIT_FAILURE = 1
#: The command line is wrong or incomplete.
EXIT_USAGE = 2
#: A password command (``unlock``, ``passwd``, ``delete-account``) was refused unchecked: too many
#: wrong passwords, retry after the seconds named on stderr (``EX_TEMPFAIL`` of sysexits.h).
EXIT_TOO_MANY_ATTEMPTS = 75
#: Exit status after Ctrl+C (128 + SIGINT).
EXIT_INTERRUPTED = 130
#: Standard output was closed before everything was printed (``jarvis ... | head -1``): the
#: status a shell reports for a command killed by SIGPIPE (128 + 13); nothing more is printed.
EXIT_BROKEN_PIPE = 141
