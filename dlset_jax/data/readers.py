"""Image / volume readers and label-map -> object extraction, with errors that name the file.

Everything here is plain numpy / PIL / nibabel (no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "DataError",
    "IMAGE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "read_image",
    "read_mask",
    "read_volume",
    "strip_suffix",
    "intensity_to_uint8",
    "ObjectStats",
    "objects_from_label_map",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


class DataError(ValueError):
    """Bad input data; the message names the offending file."""


def strip_suffix(name: str, suffixes: Sequence[str]) -> str | None:
    """``name`` without its (case-insensitive) suffix, or None if it has none of them."""
    low = name.lower()
    for s in sorted(suffixes, key=len, reverse=True):
        if low.endswith(s):
            return name[: -len(s)]
    return None


def _check_finite(arr: np.ndarray, path) -> None:
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise DataError(f"{path}: {n} NaN/inf intensities")


def read_image(path, *, channels: int | None = None) -> np.ndarray:
    """Read a 2-D image as ``(H, W, C)``: uint8 kept, other types returned as float32.

    ``channels``: 1 (converted to grey), 3 (converted to RGB) or None (kept:
    grey -> C=1, RGB -> 3, alpha dropped).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if channels == 1:
                im = im.convert("L") if im.mode not in ("L", "I", "I;16", "F") else im
            elif channels == 3 or im.mode in ("RGBA", "P", "LA", "CMYK", "YCbCr"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from e
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise DataError(f"{path}: expected a 2-D image, got array of shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        _check_finite(arr, path)
    return arr


def read_mask(path) -> np.ndarray:
    """Read a 2-D mask or label map as ``(H, W)`` (first channel of a colour file)."""
    arr = read_image(path)
    if arr.shape[-1] > 1 and not (arr == arr[..., :1]).all():
        raise DataError(f"{path}: label map has differing colour channels; save it as a grey image")
    out = arr[..., 0]
    if np.issubdtype(out.dtype, np.floating):
        if not np.all(out == np.round(out)):
            raise DataError(f"{path}: label map has non-integer values")
        out = out.astype(np.int64)
    return out


def read_volume(path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a volume (NIfTI via nibabel; NRRD/MHA/MHD via SimpleITK when installed).

    Returns ``(array, voxel_size)`` in the file's array order (NIfTI: i, j, k),
    voxel sizes in mm. NaN/inf intensities raise :class:`DataError`.
    """
    path = os.fspath(path)
    low = path.lower()
    if low.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            img = nib.load(path)
            arr = np.asarray(img.dataobj)
            zooms = tuple(float(z) for z in img.header.get_zooms()[: arr.ndim])
        except Exception as e:  # nibabel raises several types for bad files
            raise DataError(f"{path}: cannot read NIfTI volume ({type(e).__name__}: {e})") from e
    elif low.endswith((".mha", ".mhd", ".nrrd")):
        try:
            import SimpleITK as sitk  # optional
        except ImportError as e:
            raise DataError(
                f"{path}: reading {os.path.splitext(low)[1]} needs SimpleITK (pip install SimpleITK)"
            ) from e
        try:
            img = sitk.ReadImage(path)
            arr = sitk.GetArrayFromImage(img)  # (z, y, x): reverse to (x, y, z) like NIfTI
            arr = np.transpose(arr, tuple(range(arr.ndim))[::-1])
            zooms = tuple(float(z) for z in img.GetSpacing())
        except Exception as e:
            raise DataError(f"{path}: cannot read volume ({type(e).__name__}: {e})") from e
    else:
        raise DataError(f"{path}: unknown volume format (expected one of {VOLUME_SUFFIXES})")
    if arr.ndim < 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {arr.shape}")
    _check_finite(arr, path)
    return arr, zooms


def intensity_to_uint8(arr: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Map intensities to uint8 by clipping at the given percentiles (of the whole array)."""
    arr = np.asarray(arr, dtype=np.float32)
    lo, hi = np.percentile(arr, [low_pct, high_pct])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip(np.round((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


@dataclasses.dataclass
class ObjectStats:
    """What happened to candidate objects while a split was generated."""

    kept: int = 0
    dropped_small: int = 0  # connected components / classes below min_area
    dropped_components: int = 0  # extra components discarded by largest_only
    images_without_objects: int = 0

    def add(self, other: ObjectStats) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def objects_from_label_map(
    label: np.ndarray,
    class_values: Mapping[str, Sequence[int]] | Sequence[tuple[str, Sequence[int]]],
    *,
    min_area: int = 0,
    components: str = "largest",
) -> tuple[np.ndarray, np.ndarray, ObjectStats]:
    """Objects of a 2-D label map.

    Args:
      label: ``(H, W)`` integer label map.
      class_values: ordered ``class name -> label values``; class ``k`` (the
        k-th entry) is the union of its values, so nested structures are
        expressed by overlapping value sets (REFUGE: disc = {0, 128},
        cup = {0}; prostate zones: gland = {1, 2}).
      min_area: objects with fewer pixels are dropped (counted).
      components: "largest" (largest 8-connected component per class), "all"
        (every component is its own object) or "union" (the whole class mask
        is one object).

    Returns:
      ``masks`` (N, H, W) uint8, ``classes`` (N,) int32, :class:`ObjectStats`.
    """
    if components not in ("largest", "all", "union"):
        raise ValueError(f"components must be 'largest', 'all' or 'union', got {components!r}")
    items = list(class_values.items()) if isinstance(class_values, Mapping) else list(class_values)
    stats = ObjectStats()
    masks, classes = [], []
    eight = np.ones((3, 3), bool)
    for k, (_, values) in enumerate(items):
        m = np.isin(label, np.asarray(list(values)))
        if not m.any():
            continue
        if components == "union":
            comps = [m]
        else:
            lab, n = ndimage.label(m, structure=eight)
            sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
            order = np.argsort(-sizes, kind="stable")
            if components == "largest":
                stats.dropped_components += n - 1
                order = order[:1]
            comps = [lab == (i + 1) for i in order]
        for c in comps:
            if int(c.sum()) < max(int(min_area), 1):
                stats.dropped_small += 1
                continue
            masks.append(c.astype(np.uint8))
            classes.append(k)
    stats.kept = len(masks)
    if not masks:
        stats.images_without_objects = 1
        return np.zeros((0,) + label.shape, np.uint8), np.zeros((0,), np.int32), stats
    return np.stack(masks), np.asarray(classes, np.int32), stats
