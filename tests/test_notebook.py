"""Executes notebooks/evolution_explorer.ipynb top to bottom (nbclient), as CI would.

The notebook uses `workdirs/default` when it holds a checkpoint; otherwise it trains a
small model first. Here that model goes to a temporary workdir and trains for fewer
steps than the notebook's default (the figures only need to be drawn, not be good).
The saved notebook in the repository is not modified.
"""

import os

import pytest
from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = REPO / "notebooks" / "evolution_explorer.ipynb"

pytestmark = pytest.mark.slow


def test_saved_notebook_has_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "save the notebook executed"
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("DLSET_NOTEBOOK_WORKDIR", str(tmp_path / "wd"))
    monkeypatch.setenv("DLSET_NOTEBOOK_STEPS", "40")
    monkeypatch.delenv("DLSET_SAVE_DOCS_FIGURES", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO / "notebooks")}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert len(images) >= 4
    assert "test objects: DSC" in text and "mean DSC at T = 0" in text
    assert os.path.isdir(tmp_path / "wd" / "checkpoints") or "workdirs/default" in text
