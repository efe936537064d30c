"""Versioned prompt templates.

Templates live in the repository's ``prompts/`` folder (installed as the
``agentgraph.prompts`` package) as ``NAME.vN.jinja``. A node renders the newest
version unless it pins one, and records the template id (``NAME.vN``) with
each decision, so a change of prompt is visible in the decision log.

Example:
    >>> from agentgraph.prompting import load_prompt
    >>> template = load_prompt("choice")
    >>> template.id
    'choice.v1'
    >>> print(template.render(options={"track_order": None, "cancel_order": "stop an order"}))
    Reply with exactly one of these labels and nothing else:
    - track_order
    - cancel_order: stop an order
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

import jinja2

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, autoescape=False)
_FILE_NAME = re.compile(r"^(?P<name>[a-z0-9_]+)\.v(?P<version>\d+)\.jinja$")


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    source: str

    @property
    def id(self) -> str:
        return f"{self.name}.v{self.version}"

    def render(self, **variables: object) -> str:
        return _ENV.from_string(self.source).render(**variables).strip()


def available_prompts() -> dict[str, list[int]]:
    """Every template name with its versions, oldest first."""
    found: dict[str, list[int]] = {}
    for entry in files("agentgraph.prompts").iterdir():
        if match := _FILE_NAME.match(entry.name):
            found.setdefault(match["name"], []).append(int(match["version"]))
    return {name: sorted(versions) for name, versions in sorted(found.items())}


@lru_cache(maxsize=None)
def load_prompt(name: str, version: int | None = None) -> PromptTemplate:
    """The template ``name`` at ``version`` (the newest when None)."""
    versions = available_prompts().get(name)
    if not versions:
        raise KeyError(f"no prompt template named {name!r}; have {sorted(available_prompts())}")
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        raise KeyError(f"prompt {name!r} has versions {versions}, not {version}")
    source = files("agentgraph.prompts").joinpath(f"{name}.v{chosen}.jinja").read_text(encoding="utf-8")
    return PromptTemplate(name=name, version=chosen, source=source)


def render_prompt(name: str, version: int | None = None, **variables: object) -> str:
    return load_prompt(name, version).render(**variables)
