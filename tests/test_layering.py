"""The layering rule: protocol, core and crypto never import the reactor, Protocols or urwid."""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.daemons import REPO

PURE_PACKAGES = ("jarvis/protocol", "jarvis/core", "jarvis/crypto")
FORBIDDEN_MODULES = ("twisted.internet.reactor", "twisted.internet.protocol", "urwid")
FORBIDDEN_NAMES = {("twisted.internet", "reactor"), ("twisted.internet", "protocol")}


def forbidden_imports(source: str) -> list[str]:
    """Return the forbidden imports found in Python *source*."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(FORBIDDEN_MODULES):
                    found.append(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(FORBIDDEN_MODULES):
                found.append(node.module)
            for alias in node.names:
                if (node.module, alias.name) in FORBIDDEN_NAMES:
                    found.append(f"{node.module}.{alias.name}")
    return found


class LayeringTests(SynchronousTestCase):
    def test_detector_catches_reactor_import(self) -> None:
        """When source imports the reactor or urwid, then the detector reports each import."""
        self.assertEqual(
            forbidden_imports(
                "from twisted.internet import reactor\nimport urwid.widget\n"
                "from twisted.internet.protocol import Protocol\n"
            ),
            ["twisted.internet.reactor", "urwid.widget", "twisted.internet.protocol"],
        )
        self.assertEqual(forbidden_imports("from twisted.internet import defer\n"), [])

    def test_pure_layers_are_clean(self) -> None:
        """When the pure layers are scanned, then none imports the reactor, Protocols or urwid."""
        scanned = 0
        problems = []
        for package in PURE_PACKAGES:
            for root, _dirs, files in os.walk(os.path.join(REPO, package)):
                for name in files:
                    if name.endswith(".py"):
                        path = os.path.join(root, name)
                        with open(path, encoding="utf-8") as f:
                            for imp in forbidden_imports(f.read()):
                                problems.append(f"{os.path.relpath(path, REPO)}: {imp}")
                        scanned += 1
        self.assertGreater(scanned, 5)
        self.assertEqual(problems, [])
