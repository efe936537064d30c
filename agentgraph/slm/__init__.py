"""One interface to small language models, embedded (transformers) or served (vLLM)."""

from agentgraph.slm.base import (
    SLM,
    ChoiceResult,
    GenerationResult,
    Labels,
    Prompt,
    StructuredResult,
    TokenLogprob,
    Usage,
)
from agentgraph.slm.embedded import TransformersSLM
from agentgraph.slm.factory import SLMSettings, load_slm
from agentgraph.slm.models import DEFAULT_MODEL, prepare_model_folder
from agentgraph.slm.vllm import VLLMSLM

__all__ = [
    "DEFAULT_MODEL",
    "SLM",
    "SLMSettings",
    "VLLMSLM",
    "ChoiceResult",
    "GenerationResult",
    "Labels",
    "Prompt",
    "StructuredResult",
    "TokenLogprob",
    "TransformersSLM",
    "Usage",
    "load_slm",
    "prepare_model_folder",
]
