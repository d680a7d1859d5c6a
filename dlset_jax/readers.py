"""File readers: images, volumes, DICOM, click files, and label map -> objects.

Every error is a `DataError` that names the file. Plain numpy / PIL / nibabel /
pydicom (no TensorFlow, no data sets): the data set builders, prediction and the
command line all read files through these.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "DataError",
    "IMAGE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "NONFINITE",
    "fill_nonfinite",
    "read_image",
    "read_mask",
    "read_volume",
    "read_dicom",
    "read_dicom_series",
    "slice_view",
    "volume_slice",
    "volume_frames",
    "slice_spacing",
    "parse_points",
    "read_points_file",
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


NONFINITE = ("error", "min")


def fill_nonfinite(arr: np.ndarray, path, nonfinite: str = "error") -> tuple[np.ndarray, int]:
    """The intensities with their NaN / inf voxels handled; returns ``(array, count)``.

    ``nonfinite="error"`` raises :class:`DataError` naming how many there are and the
    first one's index; ``"min"`` reads them as the lowest finite intensity of the file
    (what SPM's NaN outside the brain means: background). Integer arrays pass unchanged.
    """
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
    if not np.issubdtype(arr.dtype, np.floating):
        return arr, 0
    bad = ~np.isfinite(arr)
    n = int(bad.sum())
    if n == 0:
        return arr, 0
    if n == arr.size:
        raise DataError(f"{path}: no finite intensity at all ({n} NaN/inf values)")
    if nonfinite == "error":
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{path}: {n} NaN/inf intensities of {arr.size} (the first at index {first}); "
            "if they mark background (SPM writes NaN outside the brain), predict.py and the "
            "annotation tool read them as the lowest finite intensity with --nonfinite=min"
        )
    return np.where(bad, arr[~bad].min(), arr).astype(arr.dtype, copy=False), n


def read_image(
    path,
    *,
    channels: int | None = None,
    page: int | None = None,
    nonfinite: str = "error",
    palette_indices: bool = False,
) -> np.ndarray:
    """Read a 2-D image as ``(H, W, C)``: uint8 kept, other types returned as float32.

    Turned as its EXIF orientation says (a phone's or camera's photograph), so that
    the pixels are where a viewer shows them and where the user clicked.

    ``channels``: 1 (converted to grey), 3 (converted to RGB) or None (kept:
    grey -> C=1, RGB -> 3; an alpha channel the file declares is dropped).
    ``page``: which page of a multi-page file (TIFF); a multi-page file without
    ``page`` is an error (which page was meant cannot be guessed).
    ``nonfinite``: what NaN / inf intensities mean (:func:`fill_nonfinite`), or
    ``"keep"`` to return them (the caller calls :func:`fill_nonfinite` for the count).
    ``palette_indices``: a palette image with colours in its table as its indices (a
    label map saved with a colour table, as PASCAL VOC's masks), not as the colours
    they stand for; a palette of greys still gives its grey levels (8-bit BMP masks
    such as REFUGE's store 0 / 128 / 255 that way).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            n_pages = int(getattr(im, "n_frames", 1) or 1)
            if page is None and n_pages > 1:
                raise DataError(
                    f"{path}: a file of {n_pages} pages; say which one (page=0..{n_pages - 1}, "
                    "--page on the command line)"
                )
            if page is not None:
                if not 0 <= page < n_pages:
                    raise DataError(f"{path}: page {page} out of range (0..{n_pages - 1})")
                im.seek(page)
            im.load()
            if im.getexif().get(0x0112, 1) != 1:  # EXIF Orientation: as a viewer shows it
                im = ImageOps.exif_transpose(im)
            if palette_indices and im.mode == "P" and channels is None:
                im = im if _colour_palette(im) else im.convert("L")
            elif channels == 1:
                im = im.convert("L") if im.mode not in ("L", "I", "I;16", "F") else im
            elif channels == 3 and im.mode.startswith(("I", "F")):
                # PIL would clip every intensity above 255 to white
                raise DataError(
                    f"{path}: a grey image of more than 8 bits ({im.mode}) where an 8-bit "
                    "colour image is expected"
                )
            elif channels == 3 or im.mode in ("RGBA", "P", "LA", "CMYK", "YCbCr"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except DataError:
        raise
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from e
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DataError(f"{path}: expected a 2-D image, got array of shape {arr.shape}")
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise DataError(
            f"{path}: an image of {arr.shape[1]} x {arr.shape[0]} px (width x height) is too "
            "small to segment: it needs at least 2 px each way"
        )
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        if nonfinite != "keep":
            arr, _ = fill_nonfinite(arr, path, nonfinite)
    return arr


def _colour_palette(im) -> bool:
    """Whether a palette image uses any entry that is not a grey."""
    used = np.unique(np.asarray(im))
    table = np.asarray(im.getpalette() or [], np.int64).reshape(-1, 3)
    table = table[used[used < len(table)]]
    return bool(len(table)) and not (table == table[:, :1]).all()


def read_mask(path) -> np.ndarray:
    """Read a 2-D mask or label map as ``(H, W)`` (first channel of a colour file; a
    colour palette file's indices)."""
    arr = read_image(path, palette_indices=True)
    if arr.shape[-1] > 1 and not (arr == arr[..., :1]).all():
        raise DataError(f"{path}: label map has differing colour channels; save it as a grey image")
    out = arr[..., 0]
    if np.issubdtype(out.dtype, np.floating):
        if not np.all(out == np.round(out)):
            raise DataError(f"{path}: label map has non-integer values")
        out = out.astype(np.int64)
    return out


def read_volume(path, *, nonfinite: str = "error") -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a volume (NIfTI via nibabel; NRRD/MHA/MHD via SimpleITK when installed).

    Returns ``(array, voxel_size)`` in the file's array order (NIfTI: i, j, k),
    voxel sizes in mm; a 2-D NIfTI is a volume of one slice (H, W, 1). NaN/inf
    intensities raise :class:`DataError` unless ``nonfinite`` says otherwise (as in
    :func:`read_image`).
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
    if arr.ndim == 2:  # a 2-D NIfTI (a radiograph, one slice): a volume of one slice
        arr, zooms = arr[..., None], (*zooms[:2], 1.0)
    if arr.ndim < 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {arr.shape}")
    if nonfinite != "keep":
        arr, _ = fill_nonfinite(arr, path, nonfinite)
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


# ------------------------------------------------------------ volumes and DICOM


def volume_slice(vol, axis, index, rot90):
    """Slice `index` along `axis` as the training data's builder shows it."""
    return np.ascontiguousarray(slice_view(vol, axis, index, rot90))


def slice_view(vol, axis, index, rot90):
    """`volume_slice` as a view of `vol`: writing to it writes the volume (label maps
    painted back in the volume's own orientation)."""
    return volume_frames(vol, axis, rot90)[index]


def volume_frames(vol, axis, rot90):
    """Every slice along `axis` as the training data's builder shows it, stacked:
    (S, H, W), a view of `vol` (the one orientation rule of `volume_slice`,
    `slice_view`)."""
    frames = np.moveaxis(vol, axis, 0)
    return np.rot90(frames, axes=(1, 2)) if rot90 else frames


def slice_spacing(zooms, axis, rot90):
    in_plane = [zooms[a] for a in range(3) if a != axis]
    return (in_plane[1], in_plane[0]) if rot90 else (in_plane[0], in_plane[1])


def read_dicom(path: str) -> dict:
    try:
        import pydicom
    except ImportError as e:
        raise DataError(f"{path}: reading DICOM needs pydicom (pip install pydicom)") from e
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises many types for bad files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: cannot read DICOM pixels ({type(e).__name__}: {msg})") from e
    arr = _pixels(ds, path)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    is_rgb = arr.shape[-1] == 3 and photometric not in ("MONOCHROME1", "MONOCHROME2")
    if not is_rgb:
        arr = _rescaled(ds, arr)
    sp = getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None)
    spacing = (float(sp[0]), float(sp[1])) if sp is not None and len(sp) == 2 else None
    intensity = None
    window = _dicom_window(ds)
    if not is_rgb and window is not None:
        # The file's own display window: the mapping its modality intends, the same
        # for every slice of a series (a per-slice percentile stretch is not).
        arr = _windowed(arr, window)
        intensity = f"DICOM window [{window[0]:g}, {window[1]:g}]"
    if not is_rgb and photometric == "MONOCHROME1":
        # low values are bright; the window is defined on the stored values, so the
        # inversion comes after it (as in read_dicom_series)
        arr = 255 - arr if window is not None else arr.max() - arr
    if frames > 1:
        vol8 = arr if arr.dtype == np.uint8 else intensity_to_uint8(arr)
        intensity = intensity or "clipped at the 0.5 / 99.5 percentiles of all frames"
        return {
            "kind": "dicom",
            "frames": vol8,
            "n_frames": frames,
            "spacing": spacing,
            "intensity": intensity,
        }
    return {"kind": "dicom", "image": arr, "spacing": spacing, "intensity": intensity}


def _pixels(ds, path) -> np.ndarray:
    """The stored pixel values of a DICOM dataset; DataError naming the file if undecodable."""
    try:
        return np.asarray(ds.pixel_array)
    except Exception as e:  # pydicom raises many types for bad or compressed files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: cannot read DICOM pixels ({type(e).__name__}: {msg})") from e


def _rescaled(ds, arr: np.ndarray) -> np.ndarray:
    """float32 modality values: stored values times RescaleSlope plus RescaleIntercept."""
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    return arr.astype(np.float32) * slope + float(getattr(ds, "RescaleIntercept", 0) or 0)


def _windowed(arr: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """uint8 of `arr` mapped linearly from the window [low, high] to [0, 255], clipped."""
    lo, hi = window
    return np.clip(np.round((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _series_files(folder: str):
    """(path, dataset) of the DICOM images in `folder` (not its subfolders), by file name;
    files that are not DICOM, hidden files and DICOM objects without pixels are left out."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError):
            continue  # a README, a thumbnail: not part of the series
        if "PixelData" in ds:
            out.append((path, ds))
    return out


def read_dicom_series(folder: str, *, nonfinite: str = "error") -> dict:
    """A folder holding one DICOM series, one file per slice, as a volume.

    The slices are ordered by their position along the slice normal (the cross product
    of ImageOrientationPatient's row and column directions), not by file name or
    InstanceNumber. The array is in NIfTI's order as dcm2niix writes it: `volume[i, j, k]`
    is column i, row `Rows - 1 - j` of slice k, and `affine` maps (i, j, k) to RAS mm
    (DICOM's LPS with x and y negated), so that `volume_slice(volume, 2, k, rot90=True)`
    is slice k as a DICOM viewer shows it.

    Returns dict: `volume` (Columns, Rows, K) float32 (RescaleSlope / Intercept applied
    per file, MONOCHROME1 inverted) or uint8 (the first file's display window, the same
    for every slice), `affine` (4, 4), `zooms` (column, row, slice spacing mm),
    `intensity` (the window, or None), `files` (the file of each slice, in order).

    Raises:
      DataError naming the folder or the file: no DICOM image, more than one series,
      multi-frame or colour files, missing or differing geometry, two slices at one
      position, unevenly spaced slices (a gap), slices that move sideways along the
      series (a gantry tilt; for either, convert with dcm2niix).
    """
    try:
        import pydicom  # noqa: F401
    except ImportError as e:
        raise DataError(f"{folder}: reading DICOM needs pydicom (pip install pydicom)") from e
    items = _series_files(folder)
    if not items:
        raise DataError(f"{folder}: no DICOM image in this folder")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in items}
    if len(series) > 1:
        raise DataError(
            f"{folder}: files of {len(series)} series (SeriesInstanceUID); give a folder "
            "holding one series"
        )
    first_path, first = items[0]
    rows, cols = int(first.Rows), int(first.Columns)
    geometry = []
    for path, ds in items:
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise DataError(f"{path}: a multi-frame file inside a series folder; give the file")
        if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
            raise DataError(f"{path}: a colour image; a series is read as grey slices")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise DataError(
                f"{path}: {ds.Rows} x {ds.Columns} pixels, {first_path}: {rows} x {cols}"
            )
        try:
            iop = np.array([float(v) for v in ds.ImageOrientationPatient], np.float64)
            ipp = np.array([float(v) for v in ds.ImagePositionPatient], np.float64)
            sp = np.array([float(v) for v in ds.PixelSpacing], np.float64)
            assert iop.shape == (6,) and ipp.shape == (3,) and sp.shape == (2,)
        except (AttributeError, TypeError, ValueError, AssertionError):
            raise DataError(
                f"{path}: no slice geometry (ImageOrientationPatient, ImagePositionPatient, "
                "PixelSpacing); a series needs it to order and place its slices"
            ) from None
        geometry.append((iop, ipp, sp))
    iop0, _, sp0 = geometry[0]
    for (path, _), (iop, _, sp) in zip(items, geometry, strict=True):
        if not (np.allclose(iop, iop0, atol=1e-4) and np.allclose(sp, sp0, rtol=1e-4)):
            raise DataError(
                f"{path}: orientation or pixel spacing differs from {first_path}'s "
                "(a localizer or a reformat in the same series?)"
            )
    row_dir, col_dir = iop0[:3], iop0[3:]
    normal = np.cross(row_dir, col_dir)
    depth = np.array([float(ipp @ normal) for _, ipp, _ in geometry])
    order = np.argsort(depth, kind="stable")
    depth = depth[order]
    gaps = np.diff(depth)
    if len(gaps) and gaps.min() < 1e-3:
        k = int(np.argmin(gaps))
        a, b = items[order[k]][0], items[order[k + 1]][0]
        raise DataError(f"{folder}: {a} and {b} lie at the same position")
    if len(gaps) and (gaps.max() - gaps.min()) > max(0.01 * gaps.mean(), 1e-3):
        raise DataError(
            f"{folder}: slices unevenly spaced ({gaps.min():g} to {gaps.max():g} mm apart): "
            "a gap or a gantry tilt; convert the series with dcm2niix and give the NIfTI"
        )
    ipps = np.stack([geometry[i][1] for i in order])
    span = ipps[-1] - ipps[0]
    sideways = float(np.linalg.norm(span - (span @ normal) * normal))
    if sideways > max(np.tan(np.radians(0.5)) * (depth[-1] - depth[0]), 0.01):
        tilt = np.degrees(np.arctan2(sideways, depth[-1] - depth[0]))
        raise DataError(
            f"{folder}: the slices move sideways along the series ({tilt:.1f} degrees off "
            "the slice normal: a gantry tilt); convert the series with dcm2niix and give "
            "the NIfTI"
        )
    if len(order) > 1:
        step = (ipps[-1] - ipps[0]) / (len(order) - 1)
    else:
        step = normal * float(getattr(first, "SliceThickness", 1.0) or 1.0)
    row_mm, col_mm = sp0  # PixelSpacing: between rows, between columns
    lps = np.eye(4)
    lps[:3, 0] = col_mm * row_dir  # i: along a row, to the next column
    lps[:3, 1] = -row_mm * col_dir  # j: up the rows (row Rows - 1 - j)
    lps[:3, 2] = step
    lps[:3, 3] = ipps[0] + (rows - 1) * row_mm * col_dir
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    slices = []
    for i in order:
        path, ds = items[i]
        slices.append(_rescaled(ds, _pixels(ds, path))[::-1].T)
    vol, _ = fill_nonfinite(np.stack(slices, axis=-1), folder, nonfinite)
    window = _dicom_window(first)
    inverted = str(getattr(first, "PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    intensity = None
    if window is not None:
        vol = _windowed(vol, window)
        vol = 255 - vol if inverted else vol
        intensity = f"DICOM window [{window[0]:g}, {window[1]:g}] (the series' first file)"
    elif inverted:  # MONOCHROME1: low values are bright; one inversion for the volume
        vol = vol.max() - vol
    return {
        "volume": vol,
        "affine": affine,
        "zooms": (float(col_mm), float(row_mm), float(np.linalg.norm(step))),
        "intensity": intensity,
        "files": [os.path.basename(items[i][0]) for i in order],
    }


def _dicom_window(ds):
    """(low, high) of the first window (WindowCenter / WindowWidth), or None."""

    def first(v):
        try:
            return float(v[0]) if hasattr(v, "__len__") and not isinstance(v, str) else float(v)
        except (TypeError, ValueError, IndexError):
            return None

    c = first(getattr(ds, "WindowCenter", None))
    w = first(getattr(ds, "WindowWidth", None))
    if c is None or w is None or not w > 1:
        return None
    return c - w / 2.0, c + w / 2.0


# ------------------------------------------------------------ click files


def parse_points(text: str, what: str) -> np.ndarray:
    """'x1,y1 x2,y2 x3,y3 x4,y4' -> (4, 2)."""
    parts = text.replace(";", " ").split()
    try:
        pts = np.array([[float(v) for v in part.split(",")] for part in parts], np.float64)
    except ValueError:
        pts = None
    if pts is None or pts.shape != (4, 2):
        raise DataError(
            f"{what}: expected four x,y pairs (left right top bottom) like "
            f'"31,60 97,58 62,24 66,95", got {text!r}'
        )
    return pts


def read_points_file(path: str) -> list[dict]:
    """Objects of a CSV / JSON / JSON Lines file: dicts with points, class, slice, label."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark: Excel's CSV
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read points file ({e})") from e
    if path.lower().endswith(".csv"):
        return _points_from_csv(text, path)
    try:
        data = json.loads(text)
        rows = data.get("objects") if isinstance(data, dict) else data
        if isinstance(data, dict) and rows is None:
            rows = [data]
    except json.JSONDecodeError:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {n} is not JSON ({e.msg})") from e
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a list of objects")
    out = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "points" not in row:
            raise DataError(f"{path}: object {n} needs a 'points' entry [[x, y] x 4]")
        try:
            pts = np.asarray(row["points"], np.float64)
        except (TypeError, ValueError):
            pts = np.zeros(0)
        if pts.shape != (4, 2):
            raise DataError(
                f"{path}: object {n}: 'points' must be four [x, y] pairs (left, right, "
                f"top, bottom), got {row['points']!r}"
            )
        out.append(
            _click_row(
                pts, row, path, f"object {n}", _json_corrections(row.get("corrections"), path, n)
            )
        )
    return _nonempty(out, path)


CLICK_KINDS = ("extreme", "positive", "negative")


def _click_row(points, row, path, where, corrections=None) -> dict:
    """One object of a click file: its points and optional class, slice, label and
    corrective clicks (`(K, 3)` `(x, y, sign)`). `where`: the object in messages."""
    return {
        "points": points,
        "class": _opt_str(row.get("class")),
        "slice": _opt_int(row.get("slice"), path, where, "slice"),
        "label": _opt_int(row.get("label"), path, where, "label"),
        "corrections": np.zeros((0, 3)) if corrections is None else corrections,
        "corrections_on": {},  # corrective clicks on other slices (click CSVs)
        "extent": _opt_extent(row, path, where),
    }


def _opt_extent(row, path, where):
    """`(first_slice, last_slice)` of a structure in a volume (either None where not
    given: that side ends where the structure does), or None."""
    first = _opt_int(row.get("first_slice"), path, where, "first_slice")
    last = _opt_int(row.get("last_slice"), path, where, "last_slice")
    return None if first is None and last is None else (first, last)


def _json_corrections(value, path, n) -> np.ndarray:
    """A JSON object's "corrections": [{"x", "y", "kind"}, ...] or [[x, y, sign], ...]."""
    if value is None:
        return np.zeros((0, 3))
    if not isinstance(value, list):
        raise DataError(f"{path}: object {n}: 'corrections' must be a list of clicks")
    out = []
    for j, c in enumerate(value, 1):
        if isinstance(c, dict) and str(c.get("kind", "")).lower() not in CLICK_KINDS[1:]:
            raise DataError(
                f"{path}: object {n}: correction {j}: kind must be 'positive' or "
                f"'negative', got {c.get('kind')!r}"
            )
        try:
            if isinstance(c, dict):
                kind = str(c["kind"]).lower()
                out.append((float(c["x"]), float(c["y"]), 1.0 if kind == "positive" else -1.0))
            else:
                x, y, sign = (float(v) for v in c)
                out.append((x, y, sign))
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{path}: object {n}: correction {j} must be {{'x', 'y', 'kind'}} or "
                f"[x, y, sign], got {c!r}"
            ) from None
    return np.asarray(out, np.float64).reshape(-1, 3)


def _nonempty(objects, path):
    if not objects:
        raise DataError(f"{path}: no objects")
    return objects


def _opt_str(v):
    return None if v is None or v == "" else str(v)


def _opt_int(v, path, where, name):
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if not np.isfinite(f) or f != int(f):
        raise DataError(f"{path}: {where}: {name} must be an integer, got {v!r}")
    return int(f)


def _points_from_csv(text, path):
    cols = [f"{c}{i}" for i in range(1, 5) for c in "xy"]
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    if "kind" in fields:
        return _clicks_from_csv(reader, fields, path)
    missing = [c for c in cols if c not in fields]
    if missing:
        raise DataError(
            f"{path}: CSV header must name the columns {','.join(cols)} (plus optional "
            f"class, slice, label), or object,kind,x,y (one click per line); missing "
            f"{','.join(missing)}"
        )
    out = []
    for k, (n, row) in enumerate(_csv_rows(reader, path), 1):
        empty = [c for c in cols if not row[c]]
        if empty:
            raise DataError(f"{path}: line {n}: no value for {','.join(empty)}")
        try:
            vals = [float(row[c]) for c in cols]
        except ValueError:
            raise DataError(f"{path}: line {n}: point coordinates must be numbers") from None
        pts = np.asarray(vals, np.float64).reshape(4, 2)
        out.append(_click_row(pts, row, path, f"line {n} (object {k})"))
    return _nonempty(out, path)


def _csv_rows(reader, path):
    """`(line, row)` of a CSV's rows, values stripped (a missing trailing value reads as
    empty); a row of more values than the header names is an error naming its line."""
    for row in reader:
        extra = row.pop(None, None)  # csv.DictReader's place for values past the header
        if extra is not None:
            raise DataError(
                f"{path}: line {reader.line_num}: {len(row) + len(extra)} values, the header "
                f"names {len(row)} columns"
            )
        yield reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items()}


def _clicks_from_csv(reader, fields, path):
    """One click per line: object, kind (extreme / positive / negative), x, y, and
    optional slice, class, label. An object's four extreme points come in the order
    left, right, top, bottom; its corrective clicks in the order they were made. A
    corrective click may lie on another slice of a volume than the four points (its own
    slice, or empty for theirs): `corrections_on` {slice: (K, 3)}, for propagation."""
    missing = [c for c in ("object", "kind", "x", "y") if c not in fields]
    if missing:
        raise DataError(
            f"{path}: a click CSV (with a kind column) must name the columns "
            "object,kind,x,y (plus optional slice, class, label, first_slice, last_slice); "
            f"missing {','.join(missing)}"
        )
    objs: dict = {}
    for n, row in _csv_rows(reader, path):
        kind = row["kind"].lower()
        if kind not in CLICK_KINDS:
            raise DataError(
                f"{path}: line {n}: kind must be one of {', '.join(CLICK_KINDS)}, got "
                f"{row['kind']!r}"
            )
        try:
            x, y = float(row["x"]), float(row["y"])
        except ValueError:
            raise DataError(f"{path}: line {n}: x and y must be numbers") from None
        if not row["object"]:
            raise DataError(f"{path}: line {n}: the object column is empty")
        o = objs.setdefault(
            row["object"], {"row": row, "line": n, "extreme": [], "corr": [], "at": None}
        )
        own = row.get("slice", "")
        if kind == "extreme":  # the four points fix the object's slice
            if o["at"] is not None and own != o["at"][0]:
                raise DataError(
                    f"{path}: line {n}: object {row['object']!r} has its extreme points on "
                    f"slice {own!r} here and {o['at'][0]!r} on line {o['at'][1]}: the four "
                    "points of one object share its slice"
                )
            o["at"] = (own, n)
        for key in ("label", "class", "first_slice", "last_slice"):
            if row.get(key, "") != o["row"].get(key, ""):
                raise DataError(
                    f"{path}: line {n}: object {row['object']!r} has {key} "
                    f"{row.get(key, '')!r} here and {o['row'].get(key, '')!r} on line "
                    f"{o['line']}: all clicks of one object share its {key}"
                )
        if kind == "extreme":
            o["extreme"].append((x, y))
        else:
            sign = 1.0 if kind == "positive" else -1.0
            where = f"line {n} (object {row['object']!r})"
            o["corr"].append((x, y, sign, _opt_int(own, path, where, "slice")))
    out = []
    for name, o in objs.items():
        if len(o["extreme"]) != 4:
            raise DataError(
                f"{path}: object {name!r} has {len(o['extreme'])} extreme points; it needs "
                "four (left, right, top, bottom)"
            )
        row = dict(o["row"], slice=o["at"][0])
        where = f"line {o['line']} (object {name!r})"
        obj = _click_row(np.asarray(o["extreme"], np.float64), row, path, where)
        by_slice: dict = {}
        for x, y, sign, z in o["corr"]:
            z = obj["slice"] if z is None else z
            by_slice.setdefault(z, []).append((x, y, sign))
        obj["corrections"] = np.asarray(by_slice.pop(obj["slice"], []), np.float64).reshape(-1, 3)
        obj["corrections_on"] = {z: np.asarray(c, np.float64) for z, c in sorted(by_slice.items())}
        out.append(obj)
    return _nonempty(out, path)
