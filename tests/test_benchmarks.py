"""The benchmark scripts run (tiny sizes) and print tables whose numbers hang together.

No timing asserts: each test checks the rows a script prints, that every figure is a
positive number, and that the ratios it prints are those of the times it prints (or
of the unrounded times it writes with `--json`).
"""

import json
import math
import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from dlset_jax import config as config_lib
from dlset_jax import inference, targets

pytestmark = pytest.mark.slow


# A one-repeat, one-thread ResNet-18 at width 8 on 32 px crops: seconds per benchmark.
TINY_MODEL = ("--depths", "18", "--sizes", "32", "--width", "8", "--repeats", "1")
TINY_MODEL += ("--warmup", "0", "--threads", "1")


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


def torch_installed():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def ratio_bounds(a, b, digits=0):
    """The range of a / b when a and b were printed rounded to `digits` decimals."""
    h = 0.5 * 10.0**-digits
    return (a - h) / (b + h), (a + h) / max(b - h, 1e-12)


def assert_ratio(printed, a, b, *, digits=0, ratio_digits=2):
    lo, hi = ratio_bounds(a, b, digits)
    slack = 0.5 * 10.0**-ratio_digits
    assert lo - slack <= printed <= hi + slack, (printed, a, b)


def test_fake_batch_gives_both_frameworks_the_same_input(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import common

    size = 32
    batch = common.fake_batch(3, size, seed=0)
    assert "guidance" not in batch  # as the pipeline: the clicks, not their picture
    assert batch["points"].shape == (3, 4, 2) and batch["points"].dtype == np.float32
    # The mask's extreme points (ties broken at random), jittered by up to 2 px.
    exact = targets.extreme_points(batch["mask"][0, ..., 0])
    pts = batch["points"]
    assert np.abs(pts[:, :2, 0] - exact[:2, 0]).max() <= 2  # x of left, right
    assert np.abs(pts[:, 2:, 1] - exact[2:, 1]).max() <= 2  # y of top, bottom
    assert not np.array_equal(batch["points"][0], batch["points"][1])
    # What the PyTorch side gets is the JAX model's guidance channel, to float32 rounding.
    config = config_lib.base_config()
    guid = common.guidance_input(batch["points"], size, config.data)
    x = inference.model_inputs(jnp.asarray(batch["image"]), jnp.asarray(batch["points"]), config)
    assert guid.shape == (3, size, size, 1) and guid.max() > 255  # heatmap + 255 * CM
    np.testing.assert_allclose(guid / 255.0, np.asarray(x[..., 3:]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(x[..., :3]), batch["image"])


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
        "1",  # one object: the batched inference is the single one, one compile less
        "--steps",
        "1",
        "--dtypes",
        "bfloat16",
        "--json",
        str(tmp_path / "gpu.json"),
    )
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("32 ")]
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
    assert row["images_per_s"] == pytest.approx(1 / row["step_s"])
    # The printed row is the saved one.
    step_s, img_s, infer_ms, infer_obj_s = (float(v) for v in rows[0][3:7])
    assert step_s == pytest.approx(row["step_s"], abs=5e-5)
    assert img_s == pytest.approx(row["images_per_s"], abs=5e-3)
    assert infer_ms == pytest.approx(row["infer_ms"], abs=5e-3)
    assert infer_obj_s == pytest.approx(row["infer_objects_per_s"], abs=0.05)


def test_levelset_benchmark_prints_ratios(tmp_path):
    out = run(
        "levelset.py",
        "--batch",
        "2",
        "--size",
        "32",
        "--steps",
        "3",
        "--repeats",
        "1",
        "--json",
        str(tmp_path / "levelset.json"),
    )
    assert "Level set evolution, T=3, batch 2, 32x32, float32, min of 1" in out, out
    assert "kernel" not in out.lower(), out
    printed = {
        line[:34].strip(): line[34:].split()
        for line in out.splitlines()
        if line.startswith(("JAX", "numpy", "PyTorch"))
    }
    names = ["JAX (jit, XLA scan)", "numpy float32"]
    if torch_installed():
        import torch

        names.append(f"PyTorch {torch.__version__} (2 threads)")
    assert list(printed) == names, out
    saved = json.loads((tmp_path / "levelset.json").read_text())
    assert (saved["batch"], saved["size"], saved["steps"]) == (2, 32, 3)
    rows = {r["implementation"]: r for r in saved["rows"]}
    assert list(rows) == names
    jax_row = rows["JAX (jit, XLA scan)"]
    for name in names:
        r, (fwd_ms, fb_ms, fwd_x, fb_x) = rows[name], printed[name]
        assert r["forward_s"] > 0
        # forward ms, forward+backward ms and the two ratios to the first row
        assert float(fwd_ms) == pytest.approx(r["forward_s"] * 1e3, abs=0.051)
        assert fwd_x.endswith("x") and fb_x.endswith("x")
        assert r["forward_ratio"] == pytest.approx(r["forward_s"] / jax_row["forward_s"])
        assert float(fwd_x[:-1]) == pytest.approx(r["forward_ratio"], abs=0.051)
        if name == "numpy float32":  # no autodiff: no backward time
            assert fb_ms == "nan" and fb_x == "nanx" and r["fwd_bwd_s"] is None
            continue
        assert r["fwd_bwd_s"] > 0
        assert float(fb_ms) == pytest.approx(r["fwd_bwd_s"] * 1e3, abs=0.051)
        assert float(fb_x[:-1]) == pytest.approx(r["fwd_bwd_ratio"], abs=0.051)
    assert jax_row["forward_ratio"] == 1.0 and jax_row["fwd_bwd_ratio"] == 1.0


def test_train_step_benchmark_runs_with_a_tiny_model():
    out = run("train_step.py", *TINY_MODEL, "--head_channels", "8", "--infer")
    assert "failed" not in out, out
    rows = {}
    for line in out.splitlines():
        m = re.match(r"\s*18\s+32 (JAX fast|PyTorch)\s+\|(.*)\|(.*)$", line)
        if m:
            step_ms, ratio, peak_mb, step_mb, compile_s = m[2].split()
            rows[m[1]] = dict(
                step_ms=float(step_ms),
                ratio=None if ratio == "-" else float(ratio),
                peak_mb=float(peak_mb),
                step_mb=float(step_mb),
                compile_s=float(compile_s.rstrip("s")),
                infer_ms=float(m[3]),
            )
    expected = ["JAX fast", "PyTorch"] if torch_installed() else ["JAX fast"]
    assert list(rows) == expected, out
    for name, r in rows.items():
        assert r["peak_mb"] > 0 and r["step_mb"] > 0 and r["compile_s"] >= 0, (name, out)
        assert r["step_ms"] >= 0 and r["infer_ms"] >= 0, (name, out)
    if "PyTorch" in rows:
        assert rows["PyTorch"]["ratio"] == 1.0
        assert_ratio(
            rows["JAX fast"]["ratio"], rows["JAX fast"]["step_ms"], rows["PyTorch"]["step_ms"]
        )


def test_model_benchmark_runs_with_a_tiny_model():
    out = run("model.py", *TINY_MODEL)
    assert "failed" not in out and "frozen backbone BN True" in out, out
    rows = [line for line in out.splitlines() if re.match(r"\s*18\s+32 \|", line)]
    assert len(rows) == 1, out
    _, jax_part, torch_part, ratios = rows[0].split("|")
    jax_fwd, jax_step, compile_s = jax_part.split()
    assert float(jax_fwd) >= 0 and float(jax_step) >= 0 and float(compile_s.rstrip("s")) > 0
    if torch_installed():
        pt_fwd, pt_step = (float(v) for v in torch_part.split())
        fwd_x, step_x = (float(v) for v in ratios.split())
        assert pt_fwd > 0 and pt_step > 0
        assert_ratio(fwd_x, float(jax_fwd), pt_fwd)
        assert_ratio(step_x, float(jax_step), pt_step)


def test_input_pipeline_benchmark_on_the_tiny_data_set(tmp_path):
    out = run(
        "input_pipeline.py",
        "--datasets",
        "synthetic_prostate/tiny",
        "--data_dir",
        str(tmp_path / "tfds"),
        "--workers",
        "0",
        "--batch_size",
        "2",
        "--batches",
        "2",
        "--resolution",
        "32",
        "--train_examples_per_s",
        "10",
    )
    assert "resolution: 32  batch: 2  augment: False" in out, out
    m = re.search(
        r"^synthetic_prostate/tiny\s+workers=0\s+([\d.]+) examples/s\s+"
        r"\(training step consumes 10\.0/s: ([\d.]+)x\)$",
        out,
        re.M,
    )
    assert m, out
    rate, ratio = float(m[1]), float(m[2])
    assert rate > 0 and not math.isinf(rate)
    assert_ratio(ratio, rate, 10.0, digits=1)
