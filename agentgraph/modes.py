"""Modes per node: who answers, the LLM (teacher), the SLM (student), or the SLM with the LLM behind its gate (auto).

- ``teacher``: the frontier LLM answers every request and its calls are
  recorded (:mod:`agentgraph.records.traces`): the phase that collects
  training data before a small model exists, or while it is retrained.
- ``auto``: the SLM answers what passes its gate; the LLM takes the rest, and
  those calls become the next training data.
- ``student``: the SLM alone; what it cannot answer goes to the node's
  fallback (an escalation route, a human handoff), never to the LLM.

Each node factory that has modes takes ``mode=`` (see
:func:`~agentgraph.nodes.router.create_router` and
:func:`~agentgraph.nodes.schema_enforcer.create_schema_enforcer`); a graph maps
its node names to modes with :class:`NodeModes`, read from configuration,
not code: ``AGENTGRAPH_MODES="router=teacher,extract=student"`` (``*=MODE``
sets every node not named), or ``agentgraph run --mode router=teacher``.

Example:
    >>> from agentgraph.modes import NodeModes
    >>> modes = NodeModes.parse("router=teacher, *=student")
    >>> modes.mode_of("router", default="auto"), modes.mode_of("extract", default="auto")
    ('teacher', 'student')
    >>> NodeModes().mode_of("extract", default="auto")
    'auto'
    >>> NodeModes.parse("router=expert")
    Traceback (most recent call last):
    ...
    agentgraph.errors.ConfigError: unknown mode 'expert' for node 'router'; the modes are teacher, auto, student
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict

from agentgraph.errors import ConfigError

Mode = Literal["teacher", "auto", "student"]
MODES: tuple[Mode, ...] = get_args(Mode)
MODES_ENV = "AGENTGRAPH_MODES"
"""Environment variable with a graph's modes: ``NODE=MODE`` entries separated by commas."""
EVERY_NODE = "*"
"""The node name that sets the mode of every node not named."""


def check_mode(mode: str, *, node: str) -> Mode:
    """``mode`` if it is one of :data:`MODES`, else a :class:`~agentgraph.errors.ConfigError` that lists them."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r} for node {node!r}; the modes are {', '.join(MODES)}")
    return mode


class NodeModes(BaseModel):
    """The mode of each node of a graph, by node name.

    A node not in ``nodes`` runs in ``default``; when that is None too, in the
    default its graph gives it (:meth:`mode_of`).
    """

    model_config = ConfigDict(frozen=True)

    nodes: dict[str, Mode] = {}
    default: Mode | None = None

    @classmethod
    def parse(cls, entries: str | Iterable[str]) -> NodeModes:
        """Modes from ``"NODE=MODE,..."`` or a list of ``"NODE=MODE"`` (``*`` for every node not named)."""
        items = entries.split(",") if isinstance(entries, str) else list(entries)
        nodes: dict[str, Mode] = {}
        for item in filter(None, (item.strip() for item in items)):
            node, equals, mode = (part.strip() for part in item.partition("="))
            if not equals or not node:
                raise ConfigError(f"a mode setting is NODE=MODE (e.g. router=student), not {item!r}")
            nodes[node] = check_mode(mode, node=node)
        return cls.from_mapping(nodes)

    @classmethod
    def from_mapping(cls, modes: Mapping[str, str]) -> NodeModes:
        """Modes from ``{node: mode}`` (``"*"`` for every node not named), each checked."""
        checked = {node: check_mode(mode, node=node) for node, mode in modes.items()}
        default = checked.pop(EVERY_NODE, None)
        return cls(nodes=checked, default=default)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NodeModes:
        """Modes from ``AGENTGRAPH_MODES`` (none set: every node in its graph's default)."""
        return cls.parse((os.environ if environ is None else environ).get(MODES_ENV, ""))

    def overridden_by(self, other: NodeModes) -> NodeModes:
        """These modes with ``other``'s on top (command-line options over the environment, say)."""
        return NodeModes(nodes=self.nodes | other.nodes, default=other.default or self.default)

    def mode_of(self, node: str, *, default: Mode) -> Mode:
        """The mode ``node`` runs in: its own, else every node's, else ``default``."""
        return self.nodes.get(node) or self.default or default

    def check_nodes(self, known: Iterable[str]) -> NodeModes:
        """Itself, when every node it names is in ``known``; else a :class:`~agentgraph.errors.ConfigError`."""
        known = list(known)
        unknown = sorted(set(self.nodes) - set(known))
        if unknown:
            raise ConfigError(
                f"no node named {', '.join(map(repr, unknown))} has modes; the nodes with modes are {', '.join(known)}"
            )
        return self
