"""The programs: the composition roots that wire the layers (the ``jarvis`` command, the
daemon's service tree, the twistd plugin's options) and what only they use."""
