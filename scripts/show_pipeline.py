r"""Save a PNG grid of input-pipeline outputs per data set, to check them by eye.

Each row is one object as the network sees it: the crop (de-normalised), the
guidance channel (built from the crop's click points as the network input builds it,
``inference.guidance_map``), and the crop with the target mask contour (green) and the
four extreme points (red). Columns hold ``--per_row`` objects side by side. Crops and
guidance follow the config schema's defaults (``dlset_jax/config.py``) at
``--resolution``.

    python scripts/show_pipeline.py --datasets synthetic_prostate/small,synthetic_fundus/small \
        --data_dir /tmp/tfds --out docs/pipeline.png

Needs numpy, PIL and JAX (the guidance picture; on the CPU). The data sets are built on
first use.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from dlset_jax import inference, targets  # noqa: E402
from dlset_jax.config import base_config  # noqa: E402
from dlset_jax.data import pipeline  # noqa: E402


def _to_rgb(image: np.ndarray) -> np.ndarray:
    x = image * targets.IMAGENET_STD + targets.IMAGENET_MEAN
    return np.clip(x * 255.0, 0, 255).astype(np.uint8)


def _tile(batch: dict, i: int, config) -> np.ndarray:
    img = _to_rgb(batch["image"][i])
    g = inference.guidance_map(batch["points"][i], img.shape[0], config)
    g = (255 * g / max(float(g.max()), 1e-6)).astype(np.uint8)
    g = np.repeat(g[..., None], 3, -1)
    m = batch["mask"][i, ..., 0] > 0.5
    edge = m & ~ndimage.binary_erosion(m)
    over = img.copy()
    over[edge] = (0, 255, 0)
    pil = Image.fromarray(over)
    d = ImageDraw.Draw(pil)
    for x, y in batch["points"][i]:
        d.ellipse([x - 3, y - 3, x + 3, y + 3], outline=(255, 0, 0), width=2)
    return np.concatenate([img, g, np.asarray(pil)], axis=1)


def grid_for(
    name: str,
    data_dir: str,
    *,
    n: int,
    per_row: int,
    resolution: int,
    augment: bool,
    split: str,
    seed: int,
) -> np.ndarray:
    config = base_config()
    config.data.resolution = resolution
    config.data.augment = augment
    src = pipeline.load_source(name, data_dir, split)
    it = pipeline.make_train_loader(
        src, pipeline.CropOptions.from_config(config), batch_size=n, seed=seed, num_steps=1
    )
    batch = next(it)
    tiles = [_tile(batch, i, config) for i in range(n)]
    pad = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
    rows = []
    for r in range(0, n, per_row):
        row = []
        for t in tiles[r : r + per_row]:
            row += [t, pad]
        while len(row) < 2 * per_row:
            row += [np.zeros_like(tiles[0]), pad]
        rows.append(np.concatenate(row, axis=1))
        rows.append(np.full((6, rows[-1].shape[1], 3), 255, np.uint8))
    title = np.full((22, rows[0].shape[1], 3), 255, np.uint8)
    pil = Image.fromarray(title)
    ImageDraw.Draw(pil).text(
        (4, 5),
        f"{name} [{split}] crop | guidance | mask contour + points"
        f"{' (augmented)' if augment else ''}",
        fill=(0, 0, 0),
    )
    return np.concatenate([np.asarray(pil)] + rows, axis=0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="synthetic_prostate/small,synthetic_fundus/small")
    p.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"))
    p.add_argument("--split", default="train")
    p.add_argument("--out", default="pipeline.png")
    p.add_argument("--n", type=int, default=6)
    p.add_argument("--per_row", type=int, default=2)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--augment", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    grids = [
        grid_for(
            d,
            a.data_dir,
            n=a.n,
            per_row=a.per_row,
            resolution=a.resolution,
            augment=a.augment,
            split=a.split,
            seed=a.seed,
        )
        for d in a.datasets.split(",")
        if d
    ]
    w = max(g.shape[1] for g in grids)
    grids = [np.pad(g, ((0, 10), (0, w - g.shape[1]), (0, 0)), constant_values=255) for g in grids]
    Image.fromarray(np.concatenate(grids, axis=0)).save(a.out)
    print(f"saved {a.out}")


if __name__ == "__main__":
    main()
