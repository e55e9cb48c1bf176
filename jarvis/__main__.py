"""``python -m jarvis``: the same as the ``jarvis`` console script (:func:`jarvis.app.cli.main`)."""

from jarvis.app.cli import main

if __name__ == "__main__":
    main()
