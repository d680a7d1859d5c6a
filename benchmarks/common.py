"""Helpers shared by the model benchmarks (model.py, train_step.py, gpu.py).

Each variant runs in a fresh process (``--_single SPEC``) so that its timings and its
peak RSS are its own; the parent collects the JSON line the child prints last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments every model benchmark takes (network size, timing, PyTorch)."""
    p.add_argument("--depths", default="18,50,101")
    p.add_argument("--sizes", default="128,256")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--output_stride", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="PyTorch threads")
    p.add_argument("--frameworks", default="jax,torch")
    p.add_argument(
        "--interleave",
        action="store_true",
        help="JAX and PyTorch in one process per (depth, size), repeats "
        "alternating (fairer ratios on a machine with a changing load)",
    )
    p.add_argument("--_single", default=None, help=argparse.SUPPRESS)


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parses, and keeps the command line minus ``--_single`` for the child processes."""
    a = p.parse_args(argv)
    raw = list(sys.argv[1:] if argv is None else argv)
    a.passthrough = [
        s for i, s in enumerate(raw) if s != "--_single" and (i == 0 or raw[i - 1] != "--_single")
    ]
    return a


def run_single(script: str, spec: str, passthrough: list[str]) -> dict:
    """Runs ``script --_single spec`` in a new process; its last stdout line as a dict,
    or ``{"error": <last stderr line>}`` when it failed."""
    proc = subprocess.run(
        [sys.executable, script, "--_single", spec, *passthrough], capture_output=True, text=True
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def torch_available(frameworks: list[str]) -> list[str]:
    """`frameworks` without "torch" (and a message) when PyTorch is not importable."""
    if "torch" in frameworks:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch not importable: JAX only", flush=True)
            return [f for f in frameworks if f != "torch"]
    return frameworks


def fmt(v, spec="{:8.0f}"):
    """A number in `spec`, or a dash where it is missing."""
    return spec.format(v) if isinstance(v, (int, float)) else f"{'-':>8}"


def fake_batch(b: int, size: int, seed: int = 0) -> dict:
    """A plausible training batch (NHWC, the pipeline's keys): an ellipse mask, its
    truncated SDT and unit normals, a random image and guidance map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    mask = (((yy - 0.5) / 0.3) ** 2 + ((xx - 0.5) / 0.35) ** 2 < 1).astype(np.float32)
    sdt = np.clip(
        (np.sqrt(((yy - 0.5) / 0.3) ** 2 + ((xx - 0.5) / 0.35) ** 2) - 1) * size * 0.3, -30, 30
    ).astype(np.float32)
    gy, gx = np.gradient(sdt)
    n = np.sqrt(gx**2 + gy**2) + 1e-6
    tile = lambda a: np.repeat(a[None, ..., None] if a.ndim == 2 else a[None], b, 0)
    return {
        "image": rng.normal(size=(b, size, size, 3)).astype(np.float32),
        "guidance": (rng.uniform(size=(b, size, size, 1)) * 510).astype(np.float32),
        "mask": tile(mask),
        "sdt": tile(sdt),
        "direction": tile(np.stack([gy / n, gx / n], -1).astype(np.float32)),
    }
