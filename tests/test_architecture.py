"""docs/architecture.md stays honest: its generated section matches the code, every module says
what it owns, and the names its prose cites exist."""

from __future__ import annotations

import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from jarvis.app import devdocs
from tests.daemons import REPO

DOC = os.path.join(REPO, "docs", "architecture.md")


def read_doc() -> str:
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


class ArchitectureDocTests(SynchronousTestCase):
    def test_generated_section_is_current(self) -> None:
        """When the module table and layer diagram are rendered from the code, then the
        committed docs/architecture.md holds exactly that section (regenerate with
        ``python -m jarvis.app.devdocs --write``)."""
        committed = devdocs.generated_section(read_doc())
        self.assertIn("### `jarvis.core`", committed)
        self.assertEqual(
            committed,
            devdocs.render(),
            "docs/architecture.md is stale: python -m jarvis.app.devdocs --write",
        )

    def test_every_module_says_what_it_owns(self) -> None:
        """When every module of jarvis/ is parsed, then each has a docstring whose first
        paragraph says what it owns."""
        files = devdocs.module_files()
        self.assertIn("jarvis.core.courier", files)
        missing = []
        for module, path in sorted(files.items()):
            with open(path, encoding="utf-8") as f:
                if not devdocs.owns(f.read()):
                    missing.append(module)
        self.assertEqual(missing, [])

    def test_prose_names_exist(self) -> None:
        """When the hand-written part of docs/architecture.md names a ``jarvis....`` module,
        class, function or method, then it exists in the code."""
        text = read_doc()
        prose = text[: text.index(devdocs.BEGIN)]
        self.assertIn("`jarvis.core.courier.Courier.send`", prose)
        self.assertEqual(devdocs.unknown_names(prose), [])


class GeneratorTests(SynchronousTestCase):
    """The generator on a small package of its own, so each way of going stale is seen."""

    def setUp(self) -> None:
        self.top = tempfile.mkdtemp()
        self.package = os.path.join(self.top, "jarvis")
        write(os.path.join(self.package, "__init__.py"), '"""The package."""\n')
        write(os.path.join(self.package, "low.py"), '"""Owns the bottom.\n\nMore."""\n')
        write(
            os.path.join(self.package, "core", "__init__.py"),
            '"""The core."""\n',
        )
        write(
            os.path.join(self.package, "core", "node.py"),
            '"""Owns ``the`` node | wires."""\nfrom jarvis import low\n\n\nclass Node:\n'
            "    def send(self):\n        pass\n",
        )

    def tearDown(self) -> None:
        import shutil

        shutil.rmtree(self.top)

    def test_new_module_or_import_makes_the_doc_stale(self) -> None:
        """When a module is added, or a layer starts importing another, then the rendered
        section changes (so a committed one is stale) and shows it."""
        before = devdocs.render(self.package)
        self.assertIn("| `jarvis/core/node.py` | Owns `the` node \\| wires. |", before)
        self.assertIn("| `jarvis.core` | 1 | `jarvis.low` |", before)
        write(os.path.join(self.package, "extra.py"), '"""Owns extras."""\nimport jarvis.core\n')
        after = devdocs.render(self.package)
        self.assertNotEqual(after, before)
        self.assertIn("| `jarvis/extra.py` | Owns extras. |", after)
        self.assertIn("| `jarvis.extra` | 2 | `jarvis.core` |", after)

    def test_layers_importing_each_other_are_named(self) -> None:
        """When two layers import each other, then they share a level and the section names the
        imports that close the circle."""
        low = '"""Owns the bottom."""\nimport jarvis.core.node\n'
        write(os.path.join(self.package, "low.py"), low)
        text = devdocs.render(self.package)
        self.assertIn("`jarvis.core`, `jarvis.low` import each other", text)
        self.assertIn("`jarvis.low -> jarvis.core.node`", text)
        levels = devdocs.layer_levels(devdocs.layer_graph(devdocs.import_graph(self.package)))
        self.assertEqual(levels["jarvis.core"], levels["jarvis.low"])

    def test_missing_docstring_is_empty(self) -> None:
        """When a module has no docstring, then it owns nothing (the test above reports it)."""
        self.assertEqual(devdocs.owns("import os\n"), "")
        self.assertEqual(devdocs.owns('"""First\nline.\n\nSecond."""'), "First line.")

    def test_unknown_names_are_reported(self) -> None:
        """When prose names a missing module, class or method, then each is reported; existing
        ones are not."""
        text = (
            "`jarvis.core.node.Node.send` `jarvis.core.node.Node.gone` `jarvis.missing` "
            "`jarvis.low` `jarvis.core.node.Gone`"
        )
        self.assertEqual(
            devdocs.unknown_names(text, self.package),
            ["jarvis.core.node.Gone", "jarvis.core.node.Node.gone", "jarvis.missing"],
        )

    def test_splice_replaces_only_the_section(self) -> None:
        """When the section is spliced into a document, then the prose around it stays and a
        document without markers is refused."""
        document = f"prose\n{devdocs.BEGIN}\nold\n{devdocs.END}\ntail\n"
        spliced = devdocs.splice(document, devdocs.render(self.package))
        self.assertTrue(spliced.startswith("prose\n"))
        self.assertTrue(spliced.endswith(f"{devdocs.END}\ntail\n"))
        self.assertNotIn("old", spliced)
        self.assertRaises(ValueError, devdocs.splice, "no markers", "x")
