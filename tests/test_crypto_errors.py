"""Tests for :mod:`jarvis.crypto.errors`: every error explains itself, in one line."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from jarvis.crypto import errors


def all_error_classes() -> list[type[errors.CryptoError]]:
    """Return every exception class defined in :mod:`jarvis.crypto.errors`."""
    return [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.CryptoError)
    ]


class ErrorTests(SynchronousTestCase):
    def test_docstrings(self) -> None:
        """When any error class is inspected, then it has its own docstring of some substance."""
        classes = all_error_classes()
        self.assertGreaterEqual(len(classes), 14)
        for cls in classes:
            self.assertIn("__doc__", vars(cls), cls)
            self.assertGreater(len(cls.__doc__ or ""), 40, cls)

    def test_one_line(self) -> None:
        """When an error is raised with or without a multi-line detail, then str() is one line."""
        for cls in all_error_classes():
            self.assertEqual(str(cls()), cls.message)
            text = str(cls("first line\nsecond  line"))
            self.assertNotIn("\n", text)
            self.assertTrue(text.startswith(cls.message + ": first line second line"), text)

    def test_hierarchy(self) -> None:
        """When link errors are caught, then one except clause is enough."""
        for cls in (
            errors.NotALink,
            errors.DamagedLink,
            errors.UnsupportedVersion,
            errors.AlteredCard,
            errors.MalformedCard,
            errors.MalformedCardFile,
        ):
            self.assertTrue(issubclass(cls, errors.LinkCodeError))
        self.assertTrue(issubclass(errors.AlteredCard, errors.BadSignature))
