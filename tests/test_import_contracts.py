"""Import contracts between the library's layers, and between the library and the example graphs.

Every module of the installed packages (``agentgraph/``, and ``graphs/`` and ``prompts/``, which
install as ``agentgraph.graphs`` and ``agentgraph.prompts``) is parsed with :mod:`ast`, and every
import it makes is checked: at the top, inside functions and under ``TYPE_CHECKING`` alike, and
``importlib.import_module("...")`` with a literal name too.

- The records layer (``agentgraph.records``) sits below the nodes and distillation: it imports neither.
- The decision logic (:data:`DECISION_LOGIC`: the router's and the schema enforcer's, without a graph)
  sits below them too: the nodes serve it, distillation trains, gates and measures students through it
  (the training prompt is the serving prompt; the gate runs the router as it serves). It imports
  neither.
- The nodes never import ``agentgraph.distill``, and distillation never imports ``agentgraph.nodes``.
- The library (everything under ``agentgraph/`` but the command line, ``agentgraph.cli`` and
  ``agentgraph.commands``) never imports the example graphs (``agentgraph.graphs``) nor the command line.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]

DECISION_LOGIC = ("agentgraph.routing", "agentgraph.extraction")
"""What the router and the schema enforcer decide, without a graph: below both the nodes and distillation."""

APPLICATION = ("agentgraph.cli", "agentgraph.commands")
"""The command line: the application layer on top, which may import the example graphs."""


@dataclass(frozen=True)
class Import:
    """One import a module makes: the module imported (or ``from`` which a name is imported), and where."""

    importer: str
    path: Path
    line: int
    module: str
    name: str | None = None
    in_function: bool = False

    @property
    def targets(self) -> tuple[str, ...]:
        """What it may load: the module, and for ``from M import N`` the submodule ``M.N`` too."""
        return (self.module,) if self.name is None else (self.module, f"{self.module}.{self.name}")

    def __str__(self) -> str:
        what = self.module if self.name is None else f"{self.name} from {self.module}"
        where = " (inside a function)" if self.in_function else ""
        return f"{self.importer} ({self.path.relative_to(REPOSITORY)}:{self.line}) imports {what}{where}"


def within(module: str, *packages: str) -> bool:
    """Whether ``module`` is one of ``packages`` or inside one."""
    return any(module == package or module.startswith(f"{package}.") for package in packages)


def package_folders() -> dict[str, Path]:
    """The installed top-level packages and their folders, as ``pyproject.toml`` maps them."""
    setuptools = tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {"agentgraph": REPOSITORY / "agentgraph"}
    folders |= {package: REPOSITORY / folder for package, folder in setuptools["package-dir"].items()}
    return folders


def modules() -> Iterator[tuple[str, Path]]:
    """``(module name, file)`` of every module the packages install (a package folder's tests are not installed)."""
    folders = package_folders()
    for package, folder in folders.items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder).with_suffix("")
            if "tests" in relative.parts:
                continue
            parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
            yield ".".join((package, *parts)), path


def imports_of(module: str, path: Path, source: str | None = None) -> list[Import]:
    """Every import in the module's source, top-level or not; relative imports resolved."""
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(module, path, node.lineno, alias.name, in_function=in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.extend(Import(module, path, node.lineno, base, alias.name, in_function) for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(Import(module, path, node.lineno, node.args[0].value, in_function=in_function))
        inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found


ALL_IMPORTS = [found for module, path in modules() for found in imports_of(module, path)]


def forbidding(*packages: str) -> Callable[[Import], bool]:
    return lambda found: any(within(target, *packages) for target in found.targets)


@dataclass(frozen=True)
class Contract:
    name: str
    importers: Callable[[str], bool]
    breaks: Callable[[Import], bool]


def library(module: str) -> bool:
    return within(module, "agentgraph") and not within(module, *APPLICATION, "agentgraph.graphs")


CONTRACTS = [
    Contract(
        "the records layer imports neither the nodes nor distillation nor the decision logic",
        lambda module: within(module, "agentgraph.records"),
        forbidding("agentgraph.nodes", "agentgraph.distill", *DECISION_LOGIC),
    ),
    Contract(
        "the decision logic imports neither the nodes nor distillation",
        lambda module: within(module, *DECISION_LOGIC),
        forbidding("agentgraph.nodes", "agentgraph.distill"),
    ),
    Contract(
        "the nodes never import distillation",
        lambda module: within(module, "agentgraph.nodes"),
        forbidding("agentgraph.distill"),
    ),
    Contract(
        "distillation never imports the nodes",
        lambda module: within(module, "agentgraph.distill"),
        forbidding("agentgraph.nodes"),
    ),
    Contract("the library never imports the example graphs", library, forbidding("agentgraph.graphs")),
    Contract("the library never imports the command line", library, forbidding(*APPLICATION)),
]


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda contract: contract.name)
def test_import_contract_holds(contract):
    broken = [str(found) for found in ALL_IMPORTS if contract.importers(found.importer) and contract.breaks(found)]
    assert not broken, f"{contract.name}, but:\n" + "\n".join(broken)


def test_the_contracts_read_every_installed_package_and_every_kind_of_import():
    names = {module for module, _ in modules()}
    assert {"agentgraph.records.traces", "agentgraph.nodes.router", "agentgraph.distill.gate", "agentgraph.cli",
            "agentgraph.routing.router", "agentgraph.extraction.extractor",
            "agentgraph.graphs.customer_support.graph", "agentgraph.prompts"} <= names  # fmt: skip
    assert not any(".tests" in name for name in names), "a package's own tests are not installed"
    source = (
        "import agentgraph.errors\n"
        "from ..records import decisions\n"
        "def later():\n"
        "    from agentgraph.graphs import customer_support\n"
        "    importlib.import_module('agentgraph.distill.gate')\n"
    )
    found = imports_of("agentgraph.nodes.router", REPOSITORY / "agentgraph" / "nodes" / "router.py", source)
    assert [(f.module, f.name, f.in_function) for f in found] == [
        ("agentgraph.errors", None, False),
        ("agentgraph.records", "decisions", False),
        ("agentgraph.graphs", "customer_support", True),
        ("agentgraph.distill.gate", None, True),
    ]
    assert forbidding("agentgraph.graphs.customer_support")(found[2]), "from a package import its submodule: counted"
    assert str(found[2]).startswith("agentgraph.nodes.router (")


def test_every_package_folder_is_one_pyproject_installs():
    # setuptools installs the packages it is given by name: a package folder missing from the list is left out
    # of the wheel (an editable install still finds it, so nothing else in the suite would notice).
    listed = set(
        tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]
    )
    found = {module for module, path in modules() if path.name == "__init__.py"}
    assert found <= listed, f"pyproject.toml's packages lack {sorted(found - listed)}"
