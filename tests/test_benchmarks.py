"""The benchmark scripts run (tiny sizes) and print their tables. No timing asserts."""

import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def run(script, *args):
  proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args],
                        capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout


def test_gpu_benchmark_runs_on_cpu_with_a_tiny_model():
  # bfloat16 only: the float32 path is the one every training test compiles.
  out = run("gpu.py", "--depth", "18", "--width", "4", "--sizes", "32", "--batch", "2",
            "--steps", "1", "--dtypes", "bfloat16")
  rows = [l.split() for l in out.splitlines() if l.strip().startswith("32 ")]
  assert [r[1] for r in rows] == ["bfloat16"]
  for r in rows:
    assert float(r[2]) > 0 and float(r[3]) > 0 and float(r[4]) > 0


def test_levelset_benchmark_prints_ratios():
  out = run("levelset.py", "--batch", "2", "--size", "32", "--repeats", "1")
  assert "JAX (jit)" in out and "numpy float32" in out


def test_train_step_benchmark_runs_with_a_tiny_model():
  out = run("train_step.py", "--depths", "18", "--sizes", "32", "--width", "8",
            "--head_channels", "8", "--repeats", "1", "--warmup", "0", "--threads", "1")
  assert "18" in out and "32" in out
