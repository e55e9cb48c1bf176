"""The layering rules: protocol, core and crypto never import the reactor, Protocols or urwid; the
whole layering table of jarvis's packages holds; no import circle among jarvis's modules."""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.daemons import REPO

PACKAGE = os.path.join(REPO, "jarvis")

#: Which modules each layer must not import (prefixes of dotted names), lazy imports included.
#: The UI talks to the daemon only through the IPC client; core is reached from the daemon side
#: only; the composition roots (``jarvis.cli``, ``jarvis.daemon``, the twistd plugin) are
#: imported by nothing below them.
LAYERING_TABLE: dict[str, tuple[str, ...]] = {
    "jarvis.ui": (
        "jarvis.core",
        "jarvis.store",
        "jarvis.net",
        "jarvis.protocol",
        "jarvis.daemon",
        "jarvis.cli",
        "jarvis.commands",
        "jarvis.ipc.server",
        "jarvis.ipc.methods",
        "jarvis.ipc.registry",
    ),
    "jarvis.core": ("jarvis.net", "jarvis.ipc", "jarvis.ui", "jarvis.daemon", "jarvis.cli"),
    "jarvis.protocol": (
        "jarvis.core",
        "jarvis.store",
        "jarvis.net",
        "jarvis.ipc",
        "jarvis.ui",
        "jarvis.daemon",
        "jarvis.cli",
    ),
    "jarvis.crypto": (
        "jarvis.core",
        "jarvis.store",
        "jarvis.net",
        "jarvis.protocol",
        "jarvis.ipc",
        "jarvis.ui",
        "jarvis.daemon",
        "jarvis.cli",
    ),
    "jarvis.store": ("jarvis.core", "jarvis.net", "jarvis.ipc", "jarvis.ui", "jarvis.daemon"),
    "jarvis.net": ("jarvis.ipc", "jarvis.ui", "jarvis.daemon", "jarvis.cli", "jarvis.commands"),
    "jarvis.ipc": ("jarvis.ui", "jarvis.daemon", "jarvis.cli", "jarvis.commands", "jarvis.net"),
    "jarvis.commands": ("jarvis.cli", "jarvis.core", "jarvis.store", "jarvis.net", "jarvis.ui"),
    "jarvis.daemon": ("jarvis.cli", "jarvis.commands", "jarvis.ui"),
    "jarvis.launcher": ("jarvis.cli", "jarvis.commands", "jarvis.daemon", "jarvis.ui"),
}

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


def module_files(package_dir: str = PACKAGE) -> dict[str, str]:
    """Return ``{dotted module name: path}`` for every module under *package_dir*."""
    modules = {}
    top = os.path.dirname(package_dir)
    for root, _dirs, files in os.walk(package_dir):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                dotted = os.path.relpath(path, top)[:-3].replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = path
    return modules


def imported_modules(
    module: str, source: str, known: set[str], *, is_package: bool = False
) -> set[str]:
    """Return the modules of *known* that *source* (module *module*) imports, anywhere in it.

    ``from package import name`` counts as importing ``package.name`` when that is a module.
    """
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts) + (f".{node.module}" if node.module else "")
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
    return {name for name in found if name in known and name != module}


def import_graph(package_dir: str = PACKAGE) -> dict[str, set[str]]:
    """Return jarvis's import graph: ``{module: modules it imports}``."""
    modules = module_files(package_dir)
    known = set(modules)
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            graph[module] = imported_modules(
                module, f.read(), known, is_package=path.endswith("__init__.py")
            )
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components of *graph* with more than one module (or a
    module importing itself): each one is an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(start: str) -> None:
        # iterative Tarjan: the graph may be deeper than the recursion limit one day
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph.get(node, ()):
                        circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def layering_violations(
    graph: dict[str, set[str]], table: dict[str, tuple[str, ...]] = LAYERING_TABLE
) -> list[str]:
    """Return ``"importer -> imported"`` for every import that *table* forbids."""

    def within(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    problems = []
    for module, imported in sorted(graph.items()):
        for layer, forbidden in table.items():
            if within(module, layer):
                for name in sorted(imported):
                    if any(within(name, prefix) for prefix in forbidden):
                        problems.append(f"{module} -> {name}")
    return problems


class ImportGraphTests(SynchronousTestCase):
    def test_no_import_circles(self) -> None:
        """When jarvis's import graph is built from every import (lazy ones too), then it has no
        circle."""
        graph = import_graph()
        self.assertIn("jarvis.commands", graph)
        self.assertIn("jarvis.ipc.client", graph["jarvis.commands"])
        self.assertEqual(import_circles(graph), [])

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
        graph = import_graph()
        self.assertEqual(layering_violations(graph), [])

    def test_libraries_never_import_the_cli(self) -> None:
        """When any jarvis module but the entry points imports jarvis.cli, then that is
        reported; only ``jarvis.__main__`` does."""
        graph = import_graph()
        importers = sorted(m for m, imported in graph.items() if "jarvis.cli" in imported)
        self.assertEqual(importers, ["jarvis.__main__"])
        importers = sorted(m for m, imported in graph.items() if "jarvis.daemon" in imported)
        self.assertEqual(importers, ["jarvis.cli"])

    def test_violation_detector(self) -> None:
        """When the UI imports the daemon and core imports ipc, then both are reported."""
        graph = {
            "jarvis.ui.app": {"jarvis.daemon", "jarvis.ipc.client"},
            "jarvis.core.node": {"jarvis.ipc.methods", "jarvis.store.database"},
        }
        self.assertEqual(
            layering_violations(graph),
            ["jarvis.core.node -> jarvis.ipc.methods", "jarvis.ui.app -> jarvis.daemon"],
        )

    def test_relative_and_from_imports_resolve(self) -> None:
        """When a module uses ``from jarvis import paths`` and a relative import, then both
        resolve to the imported modules."""
        known = {"jarvis", "jarvis.paths", "jarvis.ui", "jarvis.ui.app", "jarvis.ui.model"}
        source = "from jarvis import paths\nfrom . import model\nimport jarvis\n"
        self.assertEqual(
            imported_modules("jarvis.ui.app", source, known),
            {"jarvis.paths", "jarvis.ui.model", "jarvis"},
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
