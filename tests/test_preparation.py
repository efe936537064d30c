"""First-time preparation is announced and quiet: one line per step on the command line's stderr, -v or not, and no
library's bars, warnings or notes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import pytest

from agentgraph.cli import preparation_lines
from agentgraph.preparation import LOGGER, announce, preparing


@pytest.mark.parametrize("verbose", [False, True])
def test_the_command_line_shows_each_first_time_step_once_on_stderr(capsys, verbose):
    root = logging.getLogger()
    handler = logging.StreamHandler()  # what basicConfig installs under -v: the root logger's own stderr handler
    if verbose:
        root.addHandler(handler)
    try:
        with preparation_lines():
            announce("training the router", seconds=120)
            announce("exporting the encoder", seconds=30)
            announce("seeding the store")
    finally:
        root.removeHandler(handler)
    announce("after the command")  # nothing shows it now: a library's logging is its user's to configure
    assert capsys.readouterr().err.splitlines() == [
        "agentgraph: first use: training the router (about 2 min on two cores, once)",
        "agentgraph: first use: exporting the encoder (about 30 s on two cores, once)",
        "agentgraph: first use: seeding the store (once)",
    ]
    assert logging.getLogger(LOGGER).propagate, "the logger is left as it was found"


def test_a_preparation_step_holds_back_the_libraries_bars_warnings_and_records(capsys):
    from transformers.utils import logging as transformers_logging

    library = logging.getLogger("torch.onnx._internal.exporter")
    with preparation_lines(), preparing("exporting the encoder"):
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)
        library.warning("torchvision is not installed. Skipping torchvision::nms")
        # onnxruntime's quantiser logs to the root logger: its record says where it came from.
        logging.getLogger().handle(logging.makeLogRecord({
            "name": "root", "levelno": logging.WARNING, "levelname": "WARNING", "msg": "run pre-processing first",
            "pathname": "/site-packages/onnxruntime/quantization/quantize.py",
        }))  # fmt: skip
        list(transformers_logging.tqdm(range(3), desc="Loading weights"))
    assert capsys.readouterr().err.splitlines() == ["agentgraph: first use: exporting the encoder (once)"]
    with pytest.warns(FutureWarning):  # outside a step, warnings and bars are as they were
        warnings.warn("shown", FutureWarning, stacklevel=1)
    assert library.getEffectiveLevel() < logging.ERROR and transformers_logging.is_progress_bar_enabled()


@pytest.mark.slow
def test_converting_the_model_and_exporting_the_encoder_write_one_line_each_and_nothing_else(tmp_path):
    # A fresh process and cache, as on a first run: torch, transformers and onnxruntime write what they write.
    code = (
        "from agentgraph.cli import preparation_lines\n"
        "from agentgraph.classifier import encoder_onnx_folder\n"
        "from agentgraph.slm.models import prepare_model_folder\n"
        "with preparation_lines():\n"
        "    prepare_model_folder()\n"
        "    encoder_onnx_folder()\n"
    )
    env = {**os.environ, "AGENTGRAPH_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and done.stdout == "", done.stderr
    assert lines[0].startswith("agentgraph: first use: converting SmolLM2-135M-Instruct.Q4_1.gguf into a safetensors")
    assert lines[1] == "agentgraph: first use: exporting all-MiniLM-L6-v2 to ONNX (about 15 s on two cores, once)"
