"""The frontier LLM: any langchain-core chat model, used only for planning and escalations.

With no LLM configured, escalation ends in an explicit :class:`HumanHandoff`,
never a crash.

Example:
    >>> from langchain_core.language_models import GenericFakeChatModel
    >>> from langchain_core.messages import AIMessage
    >>> from agentgraph.llm import escalate
    >>> escalate(None, "I want to speak to a person", reason="asked for a human").kind
    'human_handoff'
    >>> llm = GenericFakeChatModel(messages=iter([AIMessage("A colleague will call you.")]))
    >>> escalate(llm, "I want to speak to a person", reason="asked for a human").content
    'A colleague will call you.'
"""

from __future__ import annotations

import logging
import os
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage
from pydantic import BaseModel, Field, SecretStr

logger = logging.getLogger(__name__)


class LLMSettings(BaseModel):
    """An OpenAI-compatible chat model. Configured when a model name is set."""

    model: str | None = Field(default=None, description="env AGENTGRAPH_LLM_MODEL")
    base_url: str | None = Field(default=None, description="env AGENTGRAPH_LLM_BASE_URL, else OPENAI_BASE_URL")
    api_key: SecretStr | None = Field(default=None, description="env AGENTGRAPH_LLM_API_KEY, else OPENAI_API_KEY")
    temperature: float = 0.0
    timeout_s: float = 60.0
    max_retries: int = 2

    @classmethod
    def from_env(cls) -> LLMSettings:
        env = os.environ.get
        values = {
            "model": env("AGENTGRAPH_LLM_MODEL"),
            "base_url": env("AGENTGRAPH_LLM_BASE_URL") or env("OPENAI_BASE_URL"),
            "api_key": env("AGENTGRAPH_LLM_API_KEY") or env("OPENAI_API_KEY"),
        }
        return cls.model_validate({k: v for k, v in values.items() if v})


def default_llm(settings: LLMSettings | None = None) -> BaseChatModel | None:
    """ChatOpenAI from ``settings`` (default: the environment), or None when no model is configured."""
    settings = settings or LLMSettings.from_env()
    if not settings.model:
        return None
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=settings.model,
        base_url=settings.base_url,
        # A local OpenAI-compatible server needs no key, but the client insists on one.
        api_key=settings.api_key or SecretStr("not-needed"),
        temperature=settings.temperature,
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
    )


def llm_name(llm: BaseChatModel) -> str:
    """The model a chat model calls, for decision records (its class name when it names none)."""
    return getattr(llm, "model_name", None) or getattr(llm, "model", None) or type(llm).__name__


class HumanHandoff(BaseModel):
    """What an escalation ends in when no LLM can take it: a ticket for a person."""

    kind: Literal["human_handoff"] = "human_handoff"
    ticket_id: str = Field(default_factory=lambda: f"HO-{uuid.uuid4().hex[:10]}")
    reason: str
    request: Any = Field(description="what the person must handle, as the escalating node saw it")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def escalate(
    llm: BaseChatModel | None, prompt: LanguageModelInput, *, reason: str, **invoke_kwargs: Any
) -> AIMessage | HumanHandoff:
    """Ask the LLM, or hand off to a human when there is none or it fails.

    A failing LLM is logged and handed off with the error in ``reason``: the
    request is never lost.
    """
    if llm is None:
        return HumanHandoff(reason=f"{reason}; no LLM is configured", request=prompt)
    try:
        return llm.invoke(prompt, **invoke_kwargs)
    except Exception as exc:  # any provider error: the request goes to a person instead
        logger.warning("LLM escalation failed, handing off to a human: %s", exc)
        return HumanHandoff(reason=f"{reason}; the LLM failed: {exc}", request=prompt)
