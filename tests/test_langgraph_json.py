"""``langgraph.json``: every graph it names loads the way the LangGraph server loads it, and answers.

:func:`load_graph_export` and :func:`graph_from_export` follow langgraph-api's ``_graph_from_spec``
and ``invoke_factory`` (what ``langgraph dev`` runs): a spec whose module part holds a ``/`` is a
file imported by path under a module name made from that path; the named variable is a compiled
graph, a ``StateGraph`` to compile, or a factory, called with the run's config when it takes a
parameter. langgraph-cli[inmem] itself is not installed for this: it would pin protobuf, grpcio and
cryptography versions the rest of the stack does not need.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel

REPOSITORY = Path(__file__).resolve().parents[1]
CONFIG_FILE = REPOSITORY / "langgraph.json"

CUSTOMER_SUPPORT_NODES = {
    "router", "extract", "plan_tool_call", "read_tools", "guarded_tools", "retrieve", "prune", "escalate", "answer",
    "validate", "deliver", "begin_plan", "plan", "run_step", "observe_step", "evaluate", "summarize",
}  # fmt: skip


def graph_specs() -> dict[str, str]:
    graphs = json.loads(CONFIG_FILE.read_text(encoding="utf-8"))["graphs"]
    # A graph may be given as {"path": ..., "description": ...} instead of the bare spec.
    return {graph_id: spec["path"] if isinstance(spec, dict) else spec for graph_id, spec in graphs.items()}


def load_graph_export(spec: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """The module a spec names, imported as the server imports it, and the variable it names."""
    location, variable = spec.rsplit(":", maxsplit=1)
    if "/" in location:
        module_name = location.replace("/", "__").replace(".py", "").replace(" ", "_").lstrip(".")
        module_spec = importlib.util.spec_from_file_location(module_name, REPOSITORY / location)
        module = importlib.util.module_from_spec(module_spec)
        # Registered before it runs, as the server does, so the state schema's annotations resolve.
        monkeypatch.setitem(sys.modules, module_name, module)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(location)
    return module, module.__dict__[variable]


def graph_from_export(export: Any, config: dict[str, Any]) -> Pregel:
    if callable(export) and not isinstance(export, Pregel | StateGraph):
        parameters = inspect.signature(export).parameters
        assert len(parameters) <= 1, "the server passes a factory at most the run's config"
        export = export(**{name: config for name in parameters})
    return export.compile() if isinstance(export, StateGraph) else export


def test_langgraph_json_installs_this_project_and_names_existing_graph_files():
    config = json.loads(CONFIG_FILE.read_text(encoding="utf-8"))
    assert "." in config["dependencies"]
    assert "customer-support" in graph_specs()
    for graph_id, spec in graph_specs().items():
        location, variable = spec.rsplit(":", maxsplit=1)
        assert variable, graph_id
        if "/" in location:
            assert (REPOSITORY / location).is_file(), f"{graph_id}: {location} does not exist"
    if isinstance(config.get("env"), str):
        assert (REPOSITORY / config["env"]).is_file()


@pytest.mark.slow
def test_customer_support_spec_serves_the_compiled_graph_and_answers(monkeypatch, tmp_path, embedded_slm):
    module, export = load_graph_export(graph_specs()["customer-support"], monkeypatch)
    # The store, idempotency and decision logs go to a temporary folder, not the user's cache,
    # and the factory gets the session's SLM rather than loading a second copy.
    parts = importlib.import_module(module.CustomerSupportParts.__module__)
    monkeypatch.setattr(parts, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(parts, "load_slm", lambda: embedded_slm)

    graph = graph_from_export(export, {"configurable": {}})

    assert isinstance(graph, Pregel)
    assert graph.name == "customer-support"
    assert set(graph.nodes) == CUSTOMER_SUPPORT_NODES | {"__start__"}
    # The server brings its own persistence (and `langgraph dev` rejects a graph that sets one).
    assert graph.checkpointer is None
    assert (tmp_path / "customer-support" / "shop.db").is_file()

    state = graph.invoke({"text": "what payment methods do you accept?"})

    assert state["route"] == "knowledge"
    # The knowledge path answers with the policy section the pruner kept, word for word.
    assert state["response"] in {section.text for section in parts.load_policy_sections()}
