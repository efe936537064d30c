"""Every notebook under ``notebooks/`` runs from top to bottom in a fresh python3 kernel.

A cell that raises (an assert included) fails the test with that cell's traceback; an empty
``notebooks/`` fails at collection (``empty_parameter_set_mark`` in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    # Models load in the kernel, on a CPU; a cell may take minutes on a busy machine.
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=1200, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails
