"""Every docstring example in the library and the example graphs runs as written."""

from __future__ import annotations
import __future__

import doctest
import importlib
import pkgutil

import pytest

import agentgraph
import agentgraph.graphs

# agentgraph.graphs (and agentgraph.prompts) install from their own folders, so they are walked on their own.
PACKAGES = [(agentgraph.__path__, "agentgraph."), (agentgraph.graphs.__path__, "agentgraph.graphs.")]
ALL_MODULES = sorted(
    {info.name for path, prefix in PACKAGES for info in pkgutil.walk_packages(path, prefix)} - {"agentgraph.__main__"}
)
# The command line is documented by --help and tested by running it; the package __init__s only re-export.
WITHOUT_EXAMPLES = {
    "agentgraph.cli", "agentgraph.commands", "agentgraph.commands.distill", "agentgraph.commands.eval",
    "agentgraph.commands.models", "agentgraph.commands.report", "agentgraph.commands.run", "agentgraph.commands.traces", "agentgraph.commands.slm", "agentgraph.nodes",
    "agentgraph.slm",
}  # fmt: skip
MODULES = [name for name in ALL_MODULES if name not in WITHOUT_EXAMPLES]
# Examples that load a model, train one or run a graph on one.
LOADS_MODELS = {
    "agentgraph.checkpointing", "agentgraph.cross_encoder", "agentgraph.graphs.customer_support",
    "agentgraph.middleware.context_pruner", "agentgraph.middleware.schema_enforcer", "agentgraph.nodes.context_pruner",
    "agentgraph.nodes.loop", "agentgraph.nodes.router",
    "agentgraph.nodes.schema_enforcer", "agentgraph.slm.base", "agentgraph.slm.embedded", "agentgraph.slm.factory",
}  # fmt: skip


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in LOADS_MODELS else n for n in MODULES])
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    # Run the examples the way a user's script would: without the module's own `from __future__` imports,
    # which doctest would otherwise apply (postponed annotations in an example's State break get_type_hints).
    globs = {k: v for k, v in vars(module).items() if not isinstance(v, __future__._Feature)}
    result = doctest.testmod(
        module, globs=globs, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.attempted > 0, f"{name} has no docstring example: add one, or list it in WITHOUT_EXAMPLES with why"
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (see stdout)"


def test_only_the_command_line_and_re_exporting_packages_go_without_examples():
    finder = doctest.DocTestFinder()
    without = {
        name for name in ALL_MODULES if not any(test.examples for test in finder.find(importlib.import_module(name)))
    }
    assert without <= WITHOUT_EXAMPLES, f"modules without a docstring example: {sorted(without - WITHOUT_EXAMPLES)}"
    assert WITHOUT_EXAMPLES <= set(ALL_MODULES), "WITHOUT_EXAMPLES names a module that no longer exists"
