"""``python -m jarvis``: the same as the ``jarvis`` console script (:func:`jarvis.cli.main`)."""

from jarvis.cli import main

if __name__ == "__main__":
    main()
