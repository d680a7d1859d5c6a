"""Input pipeline throughput: training examples (objects) per second at 256 x 256.

    python benchmarks/input_pipeline.py [--datasets synthetic_prostate/small,synthetic_fundus/small]
        [--workers 0,1,2] [--batch_size 10] [--batches 20] [--augment] [--train_examples_per_s X]

For each data set and worker count it builds the data set if needed, warms the
loader up (first batches include worker start-up), then times ``--batches``
batches. ``--train_examples_per_s`` (the training step's consumption rate,
e.g. from the training benchmark) is printed alongside, with the number of
workers needed to keep up. An example is what the training step reads (crop, targets and
the click points, ``pipeline.make_train_loader`` with the config schema's crop options);
the guidance channel is not part of it: the step builds it on the device.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dlset_jax.config import base_config  # noqa: E402
from dlset_jax.data import pipeline  # noqa: E402


def crop_options(resolution: int, augment: bool) -> pipeline.CropOptions:
    """The training crops of the config schema's defaults at this resolution."""
    c = base_config()
    c.data.resolution = resolution
    c.data.augment = augment
    return pipeline.CropOptions.from_config(c)


def measure(
    src, *, workers: int, batch_size: int, batches: int, resolution: int, augment: bool
) -> float:
    it = pipeline.make_train_loader(
        src,
        crop_options(resolution, augment),
        batch_size=batch_size,
        seed=0,
        worker_count=workers,
        worker_buffer_size=4,
    )
    try:
        for _ in range(2 + workers):  # warm-up: worker start, first reads
            next(it)
        t = time.perf_counter()
        for _ in range(batches):
            next(it)
        dt = time.perf_counter() - t
    finally:
        if hasattr(it, "close"):
            it.close()
    return batches * batch_size / dt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="synthetic_prostate/small,synthetic_fundus/small")
    p.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"))
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--batch_size", type=int, default=10)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--augment", action="store_true")
    p.add_argument(
        "--train_examples_per_s",
        type=float,
        default=None,
        help="the training step's consumption rate, printed for comparison",
    )
    a = p.parse_args(argv)
    print(
        f"cpu cores: {os.cpu_count()}  resolution: {a.resolution}  batch: {a.batch_size}  augment: {a.augment}"
    )
    for name in a.datasets.split(","):
        src = pipeline.load_source(name, a.data_dir, "train")
        for w in (int(x) for x in a.workers.split(",")):
            rate = measure(
                src,
                workers=w,
                batch_size=a.batch_size,
                batches=a.batches,
                resolution=a.resolution,
                augment=a.augment,
            )
            line = f"{name:28s} workers={w}  {rate:7.1f} examples/s"
            if a.train_examples_per_s:
                line += f"   (training step consumes {a.train_examples_per_s:.1f}/s: {rate / a.train_examples_per_s:.2f}x)"
            print(line, flush=True)


if __name__ == "__main__":
    main()
