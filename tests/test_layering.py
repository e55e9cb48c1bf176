"""The layering rules: protocol, core and crypto never import the reactor, Protocols or urwid; the
whole layering table of jarvis's packages holds; no import circle among jarvis's modules, nor
among its packages."""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

from jarvis.app.devdocs import (
    LAYERING_TABLE,
    import_circles,
    import_graph,
    imported_modules,
    layer_graph,
    layering_violations,
)
from tests.daemons import REPO

# The import-graph code and the table live in jarvis.app.devdocs (which also draws
# docs/architecture.md from the graph); this module keeps the assertions.

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


class ImportGraphTests(SynchronousTestCase):
    def test_no_import_circles(self) -> None:
        """When jarvis's import graph is built from every import (lazy ones too), then it has no
        circle."""
        graph = import_graph()
        self.assertIn("jarvis.app.commands", graph)
        self.assertIn("jarvis.ipc.client", graph["jarvis.app.commands"])
        self.assertEqual(import_circles(graph), [])

    def test_no_package_circles(self) -> None:
        """When the import graph is folded into layers (each subpackage of jarvis, or a module at
        its top), then no two layers import each other, directly or round a longer loop: the
        API layer imports the process runner, never the reverse."""
        layers = layer_graph(import_graph())
        self.assertIn("jarvis.exec", layers["jarvis.ipc"])
        self.assertNotIn("jarvis.ipc", layers["jarvis.exec"])
        self.assertEqual(import_circles(layers), [])

    def test_package_circle_detector(self) -> None:
        """When two modules of different packages import each other's package (as
        ``jarvis.exec.api`` and ``jarvis.ipc.methods`` once did), then the layer graph has that
        circle even though the module graph has none."""
        graph = {
            "jarvis.exec.api": {"jarvis.ipc.registry"},
            "jarvis.ipc.registry": set(),
            "jarvis.ipc.methods": {"jarvis.exec.api"},
        }
        self.assertEqual(import_circles(graph), [])
        self.assertEqual(import_circles(layer_graph(graph)), [["jarvis.exec", "jarvis.ipc"]])

    def test_circle_detector(self) -> None:
        """When a graph has a circle of three and a self-import, then both are reported, and an
        acyclic graph reports none."""
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
        self.assertEqual(import_circles(graph), [["a", "b", "c"], ["e"]])
        self.assertEqual(import_circles({"a": {"b"}, "b": set()}), [])

    def test_layering_table_holds(self) -> None:
        """When every jarvis module's imports are checked against the layering table, then none
        is forbidden (the UI imports neither core, store, net nor the daemon; core imports
        neither net nor ipc; libraries never import the CLI)."""
        for forbidden in ("jarvis.core", "jarvis.store", "jarvis.net", "jarvis.app.daemon"):
            self.assertIn(forbidden, LAYERING_TABLE["jarvis.ui"])
        for forbidden in ("jarvis.net", "jarvis.ipc"):
            self.assertIn(forbidden, LAYERING_TABLE["jarvis.core"])
        graph = import_graph()
        self.assertEqual(layering_violations(graph), [])

    def test_libraries_never_import_the_cli(self) -> None:
        """When any jarvis module but the entry points imports jarvis.app.cli, then that is
        reported; only ``jarvis.__main__`` does."""
        graph = import_graph()
        importers = sorted(m for m, imported in graph.items() if "jarvis.app.cli" in imported)
        self.assertEqual(importers, ["jarvis.__main__"])
        importers = sorted(m for m, imported in graph.items() if "jarvis.app.daemon" in imported)
        self.assertEqual(importers, ["jarvis.app.cli"])

    def test_violation_detector(self) -> None:
        """When the UI imports the daemon and core imports ipc, then both are reported."""
        graph = {
            "jarvis.ui.app": {"jarvis.app.daemon", "jarvis.ipc.client"},
            "jarvis.core.node": {"jarvis.ipc.methods", "jarvis.store.database"},
        }
        self.assertEqual(
            layering_violations(graph),
            ["jarvis.core.node -> jarvis.ipc.methods", "jarvis.ui.app -> jarvis.app.daemon"],
        )

    def test_relative_and_from_imports_resolve(self) -> None:
        """When a module uses ``from jarvis.common import paths`` and a relative import, then both
        resolve to the imported modules."""
        known = {
            "jarvis",
            "jarvis.common",
            "jarvis.common.paths",
            "jarvis.ui",
            "jarvis.ui.app",
            "jarvis.ui.model",
        }
        source = "from jarvis.common import paths\nfrom . import model\nimport jarvis\n"
        self.assertEqual(
            imported_modules("jarvis.ui.app", source, known),
            {"jarvis.common.paths", "jarvis.ui.model", "jarvis"},
        )


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
