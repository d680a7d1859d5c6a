"""Helpers shared by the model benchmarks (model.py, train_step.py, gpu.py).

Each variant runs in a fresh process (``--_single SPEC``) so that its timings and its
peak RSS are its own; the parent collects the JSON line the child prints last.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
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
    """A plausible training batch (NHWC, the pipeline's keys): a random image, an ellipse
    mask with its truncated SDT and unit normals, and per row the mask's four extreme
    points, jittered by up to 2 px as in training (``points`` (B, 4, 2) ``(x, y)`` crop px,
    from which the network input is built: ``inference.model_inputs``, or
    `guidance_input` for the PyTorch side)."""
    from dlset_jax import targets  # numpy + scipy only

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
        "mask": tile(mask),
        "sdt": tile(sdt),
        "direction": tile(np.stack([gy / n, gx / n], -1).astype(np.float32)),
        "points": np.stack([targets.extreme_points(mask, rng, pert=2) for _ in range(b)]),
    }


def _guidance_channel(points, size: int, mode: str, sigma: float, cm_variant: str):
    os.environ["JAX_PLATFORMS"] = "cpu"  # this helper process only: no accelerator memory
    from dlset_jax import guidance

    g = guidance.guidance_channel(points, size, size, mode=mode, sigma=sigma, cm_variant=cm_variant)
    return np.asarray(g, np.float32)


def guidance_input(points: np.ndarray, size: int, data_config) -> np.ndarray:
    """The guidance channel ``(B, S, S, 1)`` in [0, 510] of ``points`` ``(B, 4, 2)``, as
    ``inference.model_inputs`` builds it for the JAX model (``dlset_jax.guidance.
    guidance_channel`` with ``data_config``'s guidance, sigma and cm_variant).

    Computed once, in a short-lived spawned process: running JAX here would start its
    CPU backend in the calling (PyTorch) process, ~135 MB of RSS that the PyTorch
    variant's memory figures would then include.
    """
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(
            _guidance_channel,
            np.asarray(points, np.float32),
            int(size),
            str(data_config.guidance),
            float(data_config.sigma),
            str(data_config.cm_variant),
        ).result()


def torch_model_kwargs(model_config) -> dict:
    """``TorchDeepLevelSet``'s arguments for the network of ``config.model`` (the same
    architecture as ``models.create_model(config.model)``)."""
    m = model_config
    return dict(
        depth=int(m.depth),
        width=int(m.width),
        in_channels=int(m.in_channels),
        output_stride=int(m.output_stride),
        frozen_bn=bool(m.frozen_backbone_bn),
        fusion_channels=int(m.fusion_channels),
        fusion_align_corners=bool(m.fusion_align_corners),
        psp_channels=int(m.psp_channels),
        psp_bins=tuple(int(v) for v in m.psp_bins),
    )
