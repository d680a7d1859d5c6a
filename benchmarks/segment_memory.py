"""Peak memory of segmenting many objects in a very large image with `Segmenter`.

    python benchmarks/segment_memory.py [--size 10000] [--objects 50]

A randomly initialised CPU-default model (the memory does not depend on the weights)
segments `--objects` small objects of a `--size` x `--size` uint8 image in one call.
Prints the peak RSS of the process before the image exists, after making it, and after
segmenting, with what a full-image float32 level set per object would add, so the
same-run ratio shows whether memory grows with the objects or with the image.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=10000)
    p.add_argument("--objects", type=int, default=50)
    p.add_argument("--bucket", type=int, default=8)
    a = p.parse_args(argv)

    import jax

    from dlset_jax import config as config_lib
    from dlset_jax import models, segmenter

    c = config_lib.cpu_sized(config_lib.base_config())
    model = models.create_model(c.model)
    variables = model.init_variables(jax.random.key(0), c.data.resolution)
    seg = segmenter.Segmenter(c, variables, bucket_size=a.bucket, check=False)
    # compile once on a small image, so that the peak below is the segmentation's
    seg.segment(np.zeros((64, 64), np.uint8), [[[10, 30], [50, 30], [30, 10], [30, 50]]])
    base = peak_mb()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (a.size, a.size), dtype=np.uint8)
    pts = []
    for _ in range(a.objects):
        cy, cx = rng.integers(100, a.size - 100, 2)
        ry, rx = rng.integers(15, 60, 2)
        yy, xx = np.ogrid[-ry : ry + 1, -rx : rx + 1]
        disc = (yy / ry) ** 2 + (xx / rx) ** 2 <= 1
        img[cy - ry : cy + ry + 1, cx - rx : cx + rx + 1][disc] = 200
        pts.append([[cx - rx, cy], [cx + rx, cy], [cx, cy - ry], [cx, cy + ry]])
    with_image = peak_mb()
    t0 = time.perf_counter()
    res = seg.segment(img, pts)
    dt = time.perf_counter() - t0
    after = peak_mb()
    labels = res.label_map(np.uint8)
    with_labels = peak_mb()
    full = a.objects * a.size * a.size * 4 / 2**20
    print(f"image {a.size} x {a.size} ({img.nbytes / 2**20:,.0f} MB uint8), {a.objects} objects")
    print("| stage | peak RSS (MB) |")
    print("|---|---:|")
    print(f"| model compiled | {base:,.0f} |")
    print(f"| + the image | {with_image:,.0f} |")
    print(f"| + segmenting {a.objects} objects ({dt:.1f} s) | {after:,.0f} |")
    print(f"| + the label map | {with_labels:,.0f} |")
    print(
        f"segmenting added {after - with_image:,.0f} MB; a full-image float32 level set "
        f"per object would be {full:,.0f} MB (ratio {(after - with_image) / full:.4f}); "
        f"{int((labels > 0).sum()):,} labelled pixels"
    )


if __name__ == "__main__":
    main()
