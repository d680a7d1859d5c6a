"""The benchmark scripts run (tiny sizes) and print their tables. No timing asserts."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from dlset_jax import evolution_kernel

pytestmark = pytest.mark.slow


def run(script, *args):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_gpu_benchmark_runs_on_cpu_with_a_tiny_model(tmp_path):
    # bfloat16 only: the float32 path is the one every training test compiles.
    out = run(
        "gpu.py",
        "--depth",
        "18",
        "--width",
        "4",
        "--sizes",
        "32",
        "--batch",
        "2",
        "--steps",
        "1",
        "--dtypes",
        "bfloat16",
        "--json",
        str(tmp_path / "gpu.json"),
    )
    rows = [l.split() for l in out.splitlines() if l.strip().startswith("32 ")]
    assert [r[:3] for r in rows] == [["32", "bfloat16", "fast"]]
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved["device"] == "cpu" and len(saved["rows"]) == 1
    row = saved["rows"][0]
    for key in (
        "step_s",
        "images_per_s",
        "infer_ms",
        "infer_objects_per_s",
        "mem_gb",
        "tflop_per_step",
        "compile_s",
    ):
        assert row[key] > 0, key
    assert np.isfinite(row["loss"])
    assert row["images_per_s"] == pytest.approx(2 / row["step_s"])


def test_levelset_benchmark_prints_ratios():
    out = run("levelset.py", "--batch", "2", "--size", "32", "--repeats", "1")
    rows = {
        line.split("  ")[0]: line.split()[-4:]
        for line in out.splitlines()
        if line.startswith(("JAX", "numpy"))
    }
    assert set(rows) >= {"JAX (jit, XLA scan)", "numpy float32"}, out
    if evolution_kernel.compiler() is not None:
        assert "JAX + fused CPU kernel" in rows, out
    # Each row: forward ms, forward+backward ms and the two ratios to the first row.
    forward, _, ratio, _ = rows["JAX (jit, XLA scan)"]
    assert float(forward) > 0 and ratio.endswith("x")


def test_train_step_benchmark_runs_with_a_tiny_model():
    out = run(
        "train_step.py",
        "--depths",
        "18",
        "--sizes",
        "32",
        "--width",
        "8",
        "--head_channels",
        "8",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
    )
    assert "18" in out and "32" in out
