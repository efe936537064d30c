"""Choosing a backend from explicit settings or the environment.

Example:
    >>> from agentgraph.slm import SLMSettings, load_slm
    >>> slm = load_slm(SLMSettings())  # embedded default
    >>> slm = load_slm(SLMSettings(url="http://127.0.0.1:8000"))  # vLLM server  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field

from agentgraph.slm.base import SLM


class SLMSettings(BaseModel):
    """Which SLM to use. ``url`` set means the vLLM backend, otherwise the embedded one."""

    url: str | None = Field(default=None, description="vLLM server base URL (env AGENTGRAPH_SLM_URL)")
    model: str | None = Field(
        default=None,
        description="embedded: a local model folder; vLLM: the served model name (env AGENTGRAPH_SLM_MODEL)",
    )
    api_key: str | None = Field(default=None, description="vLLM --api-key (env AGENTGRAPH_SLM_API_KEY)")
    timeout_s: float = Field(default=60.0, gt=0, description="vLLM request timeout (env AGENTGRAPH_SLM_TIMEOUT)")
    max_context_tokens: int | None = Field(default=None, gt=0)
    dtype: Literal["float32", "bfloat16"] | None = Field(
        default=None,
        description="embedded: what the weights compute in (env AGENTGRAPH_SLM_DTYPE; see TransformersSLM)",
    )

    @property
    def backend(self) -> Literal["embedded", "vllm"]:
        return "vllm" if self.url else "embedded"

    @classmethod
    def from_env(cls, **overrides: object) -> SLMSettings:
        """Settings from ``AGENTGRAPH_SLM_*`` variables; non-None ``overrides`` win (CLI flags)."""
        env = {
            "url": os.environ.get("AGENTGRAPH_SLM_URL"),
            "model": os.environ.get("AGENTGRAPH_SLM_MODEL"),
            "api_key": os.environ.get("AGENTGRAPH_SLM_API_KEY"),
            "timeout_s": os.environ.get("AGENTGRAPH_SLM_TIMEOUT"),
            "dtype": os.environ.get("AGENTGRAPH_SLM_DTYPE"),
        }
        values = {k: v for k, v in env.items() if v} | {k: v for k, v in overrides.items() if v is not None}
        return cls.model_validate(values)


def load_slm(settings: SLMSettings | None = None) -> SLM:
    """The SLM ``settings`` describe (default: :meth:`SLMSettings.from_env`)."""
    settings = settings or SLMSettings.from_env()
    if settings.url:
        from agentgraph.slm.vllm import VLLMSLM

        return VLLMSLM(
            settings.url,
            settings.model,
            api_key=settings.api_key,
            timeout_s=settings.timeout_s,
            max_context_tokens=settings.max_context_tokens,
        )
    from agentgraph.slm.embedded import TransformersSLM

    return TransformersSLM(settings.model, max_context_tokens=settings.max_context_tokens, dtype=settings.dtype)
