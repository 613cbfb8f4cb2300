"""Every notebook under notebooks/ runs top to bottom (smoke-size settings) in a real kernel."""

from __future__ import annotations

import pathlib

import nbformat
from nbclient import NotebookClient
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
  assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "sweep_analysis", "distillation",
                                       "transfer_learning"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: pathlib.Path, tmp_path, monkeypatch):
  monkeypatch.setenv("VISION_RUNS", str(tmp_path / "runs"))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("WANDB_SERVICE", raising=False)
  monkeypatch.delenv("VISION_DISTILL_SWEEP", raising=False)  # the smoke sweep, not a saved one
  notebook = nbformat.read(path, as_version=4)
  client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": str(path.parent)}})
  client.execute()  # Raises CellExecutionError, with the failing cell's traceback.
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any(o.output_type == "display_data" and "image/png" in o.get("data", {})
             for o in outputs)
