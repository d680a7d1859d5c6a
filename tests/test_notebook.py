"""Executes notebooks/evolution_explorer.ipynb top to bottom (nbclient), as CI would.

The notebook uses `workdirs/default` when it holds a checkpoint; otherwise
`$DLSET_NOTEBOOK_WORKDIR`, training a small model there first if it has none. Here that
is the tiny ellipse model of `tiny_models.trained_workdir` (the figures only need to be
drawn, not be good).
The saved notebook in the repository is not modified.
"""

import re

import pytest
from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = REPO / "notebooks" / "evolution_explorer.ipynb"

pytestmark = pytest.mark.slow

VARIANTS = [
    "learned M and g",
    "g = 0 (no curvature)",
    "g = 1 (plain curvature)",
    "M = 0 (no motion)",
]


def stream_text(nb) -> str:
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


def check_printed_dsc(text: str) -> None:
    """The DSC figures the notebook prints are DSCs and agree with each other."""
    m = re.search(
        r"(\d+) test objects: DSC ([\d.]+) \+- [\d.]+ +four-point polygon ([\d.]+) \+- ", text
    )
    assert m, text
    n, dsc, polygon = int(m[1]), float(m[2]), float(m[3])
    assert n >= 1 and 0 <= dsc <= 1 and 0 < polygon <= 1
    m = re.search(r"DSC of phi_0 -> phi_T: mean ([\d.]+) -> ([\d.]+); shown: object (\d+)", text)
    assert m, text
    d0, d_t = float(m[1]), float(m[2])
    assert d_t == dsc  # the same objects, the same Segmenter output
    assert 0 <= int(m[3]) < n
    rows = re.findall(r"^  (.+?) +([\d.]+) / ([\d.]+) / ([\d.]+)$", text, re.M)
    assert [r[0] for r in rows] == VARIANTS, text
    for name, at_0, at_trained, at_max in rows:
        # T = 0 is phi_0 whatever the evolution: every variant starts from d0
        assert float(at_0) == d0, name
        assert 0 <= float(at_trained) <= 1 and 0 <= float(at_max) <= 1, name
    # The learned evolution at the trained T is the Segmenter's (up to float rounding).
    assert abs(float(rows[0][2]) - d_t) <= 0.002, (rows[0], d_t)


def test_saved_notebook_has_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "save the notebook executed"
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1))
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    check_printed_dsc(stream_text(nb))


def test_notebook_runs_top_to_bottom(monkeypatch, trained_workdir):
    # The tiny model the segmenter tests train (its checkpoint is what the notebook
    # would otherwise train first: the training itself is train_lib's, tested there).
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("DLSET_NOTEBOOK_WORKDIR", str(trained_workdir))
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
    text = stream_text(nb)
    assert len(images) >= 4
    check_printed_dsc(text)
    assert str(trained_workdir) in text or "workdirs/default" in text
