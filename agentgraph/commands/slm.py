"""``agentgraph slm``: prepare the model folder, install vLLM, serve the SLM."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path


def register(groups: argparse._SubParsersAction) -> None:
    slm = groups.add_parser("slm", help="the small model: prepare, install-vllm, serve")
    commands = slm.add_subparsers(dest="slm_command", required=True, metavar="SLM_COMMAND")

    prepare = commands.add_parser("prepare", help="build the safetensors model folder and print its path")
    prepare.add_argument(
        "--model", default=os.environ.get("AGENTGRAPH_SLM_MODEL"), help="model folder (default: packaged SmolLM2)"
    )
    prepare.set_defaults(handler=_prepare)

    choose = commands.add_parser("choose", help="ask the SLM to pick one label for a text; prints the distribution")
    choose.add_argument("text")
    choose.add_argument("--labels", required=True, help="comma-separated labels")
    choose.add_argument("--slm-url", help="a vLLM server (env AGENTGRAPH_SLM_URL); default: the embedded model")
    choose.add_argument("--model", help="embedded: model folder; vLLM: served model name")
    choose.add_argument("--json", action="store_true", help="print the result as JSON")
    choose.set_defaults(handler=_choose)

    install = commands.add_parser("install-vllm", help="create a virtual environment with vLLM for `slm serve`")
    install.add_argument("--venv", type=Path, help="where (default: the agentgraph cache)")
    install.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    install.set_defaults(handler=_install)

    serve = commands.add_parser("serve", help="start a local vLLM server, wait until healthy, print its base URL")
    serve.add_argument(
        "--model",
        default=os.environ.get("AGENTGRAPH_SLM_MODEL"),
        help="model folder (default: packaged SmolLM2; env AGENTGRAPH_SLM_MODEL)",
    )
    serve.add_argument("--served-model-name", help="name clients pass (default: the folder name)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("AGENTGRAPH_SLM_PORT", "8000")),
        help="0 = any free port (env AGENTGRAPH_SLM_PORT)",
    )
    serve.add_argument(
        "--python",
        default=None,
        help="interpreter with vLLM (env AGENTGRAPH_VLLM_PYTHON; default: this one or the install-vllm venv)",
    )
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    serve.add_argument("--max-model-len", type=int, default=4096)
    serve.add_argument(
        "--memory-fraction", type=float, help="--gpu-memory-utilization (on CPU: share of RAM for the KV cache)"
    )
    serve.add_argument(
        "--lora", action="append", default=[], metavar="NAME=PATH", help="serve a LoRA adapter (repeatable)"
    )
    serve.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for /health")
    serve.add_argument("extra", nargs=argparse.REMAINDER, help="after --, more arguments for vLLM's api_server")
    serve.set_defaults(handler=_serve)


def _prepare(args: argparse.Namespace) -> int:
    from agentgraph.slm.models import prepare_model_folder

    print(prepare_model_folder(args.model))
    return 0


def _choose(args: argparse.Namespace) -> int:
    from agentgraph.slm import SLMSettings, load_slm

    slm = load_slm(SLMSettings.from_env(url=args.slm_url, model=args.model))
    result = slm.choose(args.text, [label.strip() for label in args.labels.split(",")])
    if args.json:
        print(result.model_dump_json(indent=2))
        return 0
    print(f"{result.label}  (p={result.confidence:.3f}, {result.usage.latency_ms:.0f} ms, {result.usage.model})")
    for label, probability in sorted(result.probabilities.items(), key=lambda item: -item[1]):
        print(f"  {probability:6.3f}  {label}")
    return 0


def _install(args: argparse.Namespace) -> int:
    from agentgraph.slm.server import install_vllm

    python = install_vllm(args.venv, device=args.device)
    print(f"vLLM installed; `agentgraph slm serve` finds it, or pass --python {python}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from agentgraph.slm.server import ServeSettings, VLLMServer

    lora = dict(item.split("=", 1) for item in args.lora)
    settings = ServeSettings(
        model=args.model,
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        python=args.python,
        device=args.device,
        max_model_len=args.max_model_len,
        memory_fraction=args.memory_fraction,
        lora_modules=lora,
        extra_args=[a for a in args.extra if a != "--"],
        startup_timeout_s=args.startup_timeout,
    )
    server = VLLMServer(settings)
    print("starting vLLM (about a minute on CPU) ...", flush=True)
    base_url = server.start()
    assert server.process is not None  # start() returns once the process it started answers
    print(base_url, flush=True)
    print(f"export AGENTGRAPH_SLM_URL={base_url}   # logs: {server.log_path}", flush=True)
    # SIGTERM unwinds like Ctrl-C, so the server is stopped in `finally` and not inside a signal
    # handler, where waiting on the process would deadlock against the wait below.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return server.process.wait()
    finally:
        server.stop()
