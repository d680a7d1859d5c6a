"""Logging at the edge: console progress lines and TensorBoard event files.

TensorBoard files are written with tensorboardX (no TensorFlow needed). Only process
0 writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np


def mean_metrics(items: list[dict]) -> dict[str, float]:
    """Means of a list of scalar-metric dicts (one per step)."""
    if not items:
        return {}
    return {k: float(np.mean([float(m[k]) for m in items])) for k in items[0]}


def short(scalars: dict, keys=("dsc", "hd", "abd", "loss")) -> str:
    parts = []
    for k, v in scalars.items():
        if any(k == s or k.endswith(s) for s in keys):
            parts.append(f"{k} {v:.4g}")
    return ", ".join(parts)


class Progress:
    """Examples/s and ETA for the console line."""

    def __init__(self, total_steps: int, start_step: int, global_batch: int):
        self.total = total_steps
        self.batch = global_batch
        self._t0 = time.perf_counter()
        self._last_t = self._t0
        self._last_step = start_step

    def rates(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps = max(step - self._last_step, 1)
        dt = max(now - self._last_t, 1e-9)
        self._last_t, self._last_step = now, step
        self._sec_per_step = dt / steps
        return {"examples_per_second": steps * self.batch / dt, "seconds_per_step": dt / steps}

    def line(self, step: int, summary: dict) -> str:
        pct = 100.0 * step / max(self.total, 1)
        eta = getattr(self, "_sec_per_step", 0.0) * (self.total - step)
        terms = " ".join(f"{k[5:]} {v:.3g}" for k, v in summary.items() if k.startswith("loss_"))
        return (
            f"step {step}/{self.total} ({pct:4.1f}%) | loss {summary.get('loss', 0):.4g}"
            f" [{terms}] | lr {summary.get('learning_rate', 0):.2e} | "
            f"{self.batch / max(getattr(self, '_sec_per_step', 1e-9), 1e-9):.1f} ex/s | "
            f"eta {int(eta) // 60}m{int(eta) % 60:02d}s"
        )


class MetricWriter:
    """Console + TensorBoard scalars/images/text."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def text(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)
            logging.info(message)

    def scalars(self, step: int, values: dict) -> None:
        if self._tb is None:
            return
        for k, v in values.items():
            if v is not None and np.isfinite(v):
                self._tb.add_scalar(k, float(v), step)
        self._tb.flush()

    def images(self, step: int, tag: str, images) -> None:
        if self._tb is None or images is None or len(images) == 0:
            return
        self._tb.add_images(tag, np.asarray(images), step, dataformats="NHWC")
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
