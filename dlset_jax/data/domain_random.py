"""Domain-randomised training images: label maps with random intensities (SynthSeg-style).

The built-in synthetic sets (``synthetic.py``) each draw one kind of object with
one kind of appearance, so a model trained on them learns a shape prior. Here
every example draws its label map and its appearance at random, after Billot et
al. (SynthSeg, 2023): each label gets a random intensity distribution, so the
only thing that stays the same across the data set is that an object ends where
its label ends. A model has to follow edges of any contrast, polarity, size and
shape.

Sources of label maps (per example, chosen at random):

* ``procedural``: random background partition, background structures and 1-4
  objects of interest: smooth and strongly concave Fourier stars, ellipses,
  sharp-cornered polygons, straight bars and curved tubes (3 px wide and up),
  annuli (objects with a hole), objects made of parts (an outer shape holding one
  or two inner regions of their own intensity, all one object: a gland and its zones,
  an organ and its cavity, a tumour and its core), some touching a neighbour of
  similar intensity; then an elastic deformation.
* ``atlas``: a 2-D slice of a label atlas of Debian's ``mricron-data``
  (:data:`LABEL_ATLASES`), randomly cropped, scaled, rotated and deformed;
  objects are the largest components of a few labels. Intensities are
  synthetic, optionally blended with a real T1 texture (:data:`T1_TEXTURES`).
* ``real``: a real T1 slice with its own label map on the same grid
  (:data:`REAL_PAIRS`); only labels whose edge is visible in the T1 are objects.

A quarter of the grey synthetic images are multiplied by ultrasound-like speckle
(:func:`speckle_field`).

Without ``mricron-data`` (or with ``atlases=False``) only the procedural source
is used.

Benchmark exclusion: the project's real-image benchmark is the test (and
validation) split of the ``colin27_aal`` builder, axial slabs of the Colin27
brain. Every atlas and image here except inia19 (a macaque) lives in Colin27 /
MNI space, so from those only **axial** slices are used (a sagittal or coronal
slice crosses every axial slab), and only slices whose voxel extent in world z
stays more than :data:`EXCLUSION_MARGIN_MM` away from the benchmark slabs
(:func:`excluded_world_z`). ``aal.nii.gz`` (only its header is read, for the
slab positions), ``ch2.nii.gz`` and ``ch2better.nii.gz`` are never used as data.

Every example is a pure function of ``(seed, split, index)`` (and of which
template files exist). Volumes are read lazily, once per process.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
from scipy import ndimage
from scipy.special import gammaln

from dlset_jax.data import synthetic

__all__ = [
    "CLASSES",
    "TEMPLATE_DIR",
    "LABEL_ATLASES",
    "T1_TEXTURES",
    "REAL_PAIRS",
    "MNI_SOURCES",
    "BENCHMARK_SLABS",
    "EXCLUSION_MARGIN_MM",
    "SHAPE_KINDS",
    "OBJECT_KINDS",
    "available_atlases",
    "available_textures",
    "excluded_world_z",
    "generate",
    "speckle_field",
]

CLASSES = ("object",)
TEMPLATE_DIR = "/usr/share/mricron/templates"

# name -> file in TEMPLATE_DIR
LABEL_ATLASES = {
    "AICHAmc": "AICHAmc.nii.gz",
    "HarvardOxford-cort": "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz",
    "JHU-WhiteMatter": "JHU-WhiteMatter-labels-1mm.nii.gz",
    "brodmann": "brodmann.nii.gz",
    "jhu189": "jhu189.nii.gz",
    "natbrainlab": "natbrainlab.nii.gz",
    "inia19-NeuroMaps": "inia19-NeuroMaps.nii.gz",
}
T1_TEXTURES = {"ch2bet": "ch2bet.nii.gz", "inia19-t1": "inia19-t1-brain.nii.gz"}
# label atlas -> T1 image on the same voxel grid (checked when loaded)
REAL_PAIRS = {"inia19-NeuroMaps": "inia19-t1", "brodmann": "ch2bet"}
# Everything on or near the Colin27 brain: axial slices outside the benchmark slabs only.
MNI_SOURCES = frozenset(
    ["AICHAmc", "HarvardOxford-cort", "JHU-WhiteMatter", "brodmann", "jhu189", "natbrainlab"]
    + ["ch2bet"]
)

# Axial slice numbers (AAL / ch2 voxel k, inclusive) of the colin27_aal test and validation
# slabs under the default AalConfig; tests/test_data_domain_random.py recomputes them from
# builders.AalConfig and builders.slab_splits, so a change there fails loudly.
BENCHMARK_SLABS = {"test": (63, 70), "validation": (91, 97)}
EXCLUSION_MARGIN_MM = 6.0
_AAL_FILE = "aal.nii.gz"
# ch2 / aal affine, used for the slab positions when aal.nii.gz is absent.
_COLIN27_AFFINE = np.array(
    [[1.0, 0, 0, -90.0], [0, 1.0, 0, -125.0], [0, 0, 1.0, -71.0], [0, 0, 0, 1.0]]
)

SHAPE_KINDS = ("star", "concave", "ellipse", "polygon", "bar", "tube", "annulus")
# objects of interest: the shapes, and objects made of parts (:func:`_parts`)
OBJECT_KINDS = SHAPE_KINDS + ("parts",)
_SIDE_RANGE = (96, 160)  # px, multiples of 8
_MIN_AREA = 30  # px, atlas objects
_SPECKLE_SHARE = 0.25  # of the grey images; the real source has none
_MIN_EXTENT = 8  # px, bounding-box extent of every object
_LUMA = np.array([0.299, 0.587, 0.114])
_EIGHT = np.ones((3, 3), bool)


# --------------------------------------------------------------------------
# Template volumes (lazy, cached per process)
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class _Volume:
    name: str
    data: np.ndarray  # (I, J, K) labels (int32) or intensities (float32)
    affine: np.ndarray  # (4, 4) voxel -> world mm
    zooms: tuple  # mm per voxel along I, J, K
    mni: bool


def available_atlases(template_dir: str = TEMPLATE_DIR) -> tuple[str, ...]:
    """Names of :data:`LABEL_ATLASES` whose file exists (nothing is read)."""
    return tuple(
        n for n, f in LABEL_ATLASES.items() if os.path.isfile(os.path.join(template_dir, f))
    )


def available_textures(template_dir: str = TEMPLATE_DIR) -> tuple[str, ...]:
    """Names of :data:`T1_TEXTURES` whose file exists (nothing is read)."""
    return tuple(n for n, f in T1_TEXTURES.items() if os.path.isfile(os.path.join(template_dir, f)))


def _axis_aligned(affine: np.ndarray) -> bool:
    r = np.asarray(affine)[:3, :3]
    return bool(np.allclose(r, np.diag(np.diag(r))) and np.all(np.diag(r) != 0))


@functools.cache
def _volume(template_dir: str, name: str) -> _Volume:
    import nibabel as nib

    fname = LABEL_ATLASES.get(name) or T1_TEXTURES[name]
    img = nib.load(os.path.join(template_dir, fname))
    if name in LABEL_ATLASES:
        data = np.rint(np.asanyarray(img.dataobj)).astype(np.int32)
    else:
        data = np.asarray(img.dataobj, np.float32)
    mni = name in MNI_SOURCES
    if mni and not _axis_aligned(img.affine):
        # The exclusion assumes array axis 2 is world z; refuse anything else.
        raise ValueError(f"{fname}: affine is not axis-aligned, cannot exclude the benchmark slabs")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return _Volume(name, data, np.asarray(img.affine, np.float64), zooms, mni)


@functools.cache
def excluded_world_z(template_dir: str = TEMPLATE_DIR) -> tuple[tuple[float, float], ...]:
    """World z intervals (mm) no MNI/Colin27 slice may touch.

    Each is a benchmark slab of :data:`BENCHMARK_SLABS` (voxel extents, through
    the affine of ``aal.nii.gz``, or the Colin27 one when the file is absent)
    widened by :data:`EXCLUSION_MARGIN_MM` on both sides.
    """
    path = os.path.join(template_dir, _AAL_FILE)
    affine = _COLIN27_AFFINE
    if os.path.isfile(path):
        import nibabel as nib

        affine = np.asarray(nib.load(path).affine, np.float64)  # header only
    if not _axis_aligned(affine):
        raise ValueError(f"{path}: affine is not axis-aligned")
    dz = abs(affine[2, 2])
    out = []
    for k0, k1 in BENCHMARK_SLABS.values():
        z = sorted(affine[2, 2] * k + affine[2, 3] for k in (k0, k1))
        out.append((z[0] - dz / 2 - EXCLUSION_MARGIN_MM, z[1] + dz / 2 + EXCLUSION_MARGIN_MM))
    return tuple(out)


def _slice_world_z(vol: _Volume, index: int) -> tuple[float, float]:
    """World z extent (mm) of axial slice ``index`` (array axis 2)."""
    a = vol.affine
    z = a[2, 2] * index + a[2, 3]
    return (z - abs(a[2, 2]) / 2, z + abs(a[2, 2]) / 2)


@functools.cache
def _usable_slices(template_dir: str, name: str, axis: int) -> np.ndarray:
    """Slice indices along ``axis`` with enough brain and, for MNI sources, outside the
    benchmark slabs (and only axis 2 for those)."""
    vol = _volume(template_dir, name)
    if vol.mni and axis != 2:
        return np.zeros(0, np.int64)
    others = tuple(a for a in range(3) if a != axis)
    area = (vol.data > 0).sum(axis=others)
    ok = area >= 0.3 * area.max()
    if vol.mni:
        bands = excluded_world_z(template_dir)
        for k in np.nonzero(ok)[0]:
            lo, hi = _slice_world_z(vol, int(k))
            if any(hi > b0 and lo < b1 for b0, b1 in bands):
                ok[k] = False
    return np.nonzero(ok)[0]


# --------------------------------------------------------------------------
# Small numerical helpers
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _log_uniform(rng, lo, hi) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


@functools.lru_cache(maxsize=512)
def _interp_matrix(n_out: int, n_in: int, cubic: bool) -> np.ndarray:
    """(n_out, n_in) weights resampling a 1-D signal with aligned pixel centres:
    linear interpolation or a cubic B-spline (smooth, slightly blurring), clamped
    at the ends, rows summing to 1."""
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    t = np.abs(x[:, None] - np.arange(n_in)[None, :])
    if cubic:
        wts = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    else:
        wts = np.maximum(1 - t, 0.0)
    wts = wts / wts.sum(1, keepdims=True)
    wts.flags.writeable = False
    return wts


def _resize(a: np.ndarray, shape, cubic: bool = False) -> np.ndarray:
    """Resample a 2-D array (or (H, W, C)) to ``shape`` (H', W') by separable weights."""
    wr = _interp_matrix(shape[0], a.shape[0], cubic)
    wc = _interp_matrix(shape[1], a.shape[1], cubic)
    if a.ndim == 2:
        return wr @ a @ wc.T
    return np.einsum("ij,jkc,lk->ilc", wr, a, wc, optimize=True)


def _smooth_noise(rng, h, w, cell: float) -> np.ndarray:
    """Zero-mean, unit-std random field varying over about ``cell`` px."""
    g = rng.standard_normal((max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)))
    f = _resize(g, (h, w), cubic=True)
    f -= f.mean()
    return f / (f.std() + 1e-8)


def speckle_field(rng, shape, looks: int, corr: float) -> np.ndarray:
    """Fully developed speckle: an amplitude field (H, W) with mean square 1.

    Ultrasound (like OCT or radar) records the coherent sum of many scatterers per
    resolution cell, so its image is the tissue's reflectivity times this field: the
    magnitude of a complex Gaussian field (Rayleigh distributed, coefficient of
    variation 0.52), correlated over ``corr`` px (Gaussian smoothing, standing for the
    point spread function) and averaged in intensity over ``looks`` independent
    realisations (compounding; the coefficient of variation falls about as
    1 / sqrt(looks)).
    """
    h, w = shape
    if looks < 1:
        raise ValueError(f"speckle_field: looks must be >= 1, got {looks}")
    intensity = np.zeros((h, w))
    for _ in range(int(looks)):
        re, im = (ndimage.gaussian_filter(rng.standard_normal((h, w)), corr) for _ in range(2))
        intensity += re**2 + im**2
    return np.sqrt(intensity / intensity.mean())


def _speckle_cv(looks: int) -> float:
    """Coefficient of variation of ``speckle_field``'s amplitude: sqrt(I), I ~ Gamma(L, 1/L)."""
    mean = np.exp(gammaln(looks + 0.5) - gammaln(looks)) / np.sqrt(looks)
    return float(np.sqrt(max(1.0 - mean**2, 0.0)) / mean)


def _window(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    h, w = mask.shape
    return (
        slice(max(rows[0] - pad, 0), min(rows[-1] + pad + 1, h)),
        slice(max(cols[0] - pad, 0), min(cols[-1] + pad + 1, w)),
    )


def _sides_touched(mask: np.ndarray) -> int:
    return int(mask[0].any()) + int(mask[-1].any()) + int(mask[:, 0].any()) + int(mask[:, -1].any())


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask, structure=_EIGHT)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def _valid_object(mask: np.ndarray, min_area: int) -> bool:
    """Non-empty, at least ``_MIN_EXTENT`` px bounding box, on at most one image border."""
    if int(mask.sum()) < min_area:
        return False
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    extent = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    return extent >= _MIN_EXTENT and _sides_touched(mask) <= 1


def _ring(mask: np.ndarray, width: int, sl) -> np.ndarray:
    """Pixels within ``width`` px outside ``mask`` (restricted to window ``sl``)."""
    m = mask[sl]
    return ndimage.binary_dilation(m, _EIGHT, iterations=width) & ~m


# --------------------------------------------------------------------------
# Procedural shapes
# --------------------------------------------------------------------------
def _fourier_radius(rng, theta, n, amp, decay, k0=2):
    """1 + sum_k a_k cos(k theta + p_k) with a random spectrum."""
    k = np.arange(k0, k0 + n)
    a = amp * rng.uniform(0.4, 1.0, n) / (k / k0) ** decay
    p = rng.uniform(0, 2 * np.pi, n)
    out = np.ones_like(theta)
    for kk, aa, pp in zip(k, a, p):
        out += aa * np.cos(kk * theta + pp)
    return out


def _frame(h, w, cy, cx, angle):
    yy, xx = _grid(h, w)
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    return c * dx + s * dy, -s * dx + c * dy


def _star(rng, h, w, cy, cx, extent, concave: bool) -> np.ndarray:
    u, v = _frame(h, w, cy, cx, rng.uniform(0, np.pi))
    aspect = rng.uniform(1.0, 1.6)
    u = u / aspect
    r, th = np.hypot(u, v), np.arctan2(v, u)
    if concave:
        rad = _fourier_radius(rng, th, int(rng.integers(2, 5)), rng.uniform(0.35, 0.6), 0.4)
    else:
        rad = _fourier_radius(rng, th, int(rng.integers(2, 6)), rng.uniform(0.05, 0.2), 1.2)
    rad = np.maximum(rad, 0.12 * rad.max())
    return r <= rad * (extent / 2) / (aspect * rad.max())


def _ellipse(rng, h, w, cy, cx, extent) -> np.ndarray:
    u, v = _frame(h, w, cy, cx, rng.uniform(0, np.pi))
    a = extent / 2
    b = max(a / rng.uniform(1.0, 4.0), 2.0)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _polygon(rng, h, w, cy, cx, extent) -> np.ndarray:
    """Convex polygon or a star polygon (sharp inward corners), even-odd rule."""
    if rng.uniform() < 0.5:
        n = int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        ang = ang[0] + np.cumsum(np.r_[0, np.maximum(np.diff(ang), 0.4)])  # no slivers
        ang = ang * 2 * np.pi / (ang[-1] - ang[0] + rng.uniform(0.4, 1.0))
        rad = rng.uniform(0.85, 1.0, n)
    else:
        n = int(rng.integers(4, 8))
        ang = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False) + rng.normal(0, 0.08, 2 * n)
        rad = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.35, 0.7))
    rot = rng.uniform(0, 2 * np.pi)
    vy = cy + rad * np.sin(ang + rot) * extent / 2
    vx = cx + rad * np.cos(ang + rot) * extent / 2
    yy, xx = _grid(h, w)
    inside = np.zeros((h, w), bool)
    for i in range(len(vy)):
        y0, x0, y1, x1 = vy[i], vx[i], vy[i - 1], vx[i - 1]
        if y0 == y1:
            continue
        cross = (y0 > yy) != (y1 > yy)
        x_at = x0 + (x1 - x0) * (yy - y0) / (y1 - y0)
        inside ^= cross & (xx < x_at)
    return inside


def _bar(rng, h, w, cy, cx, extent) -> np.ndarray:
    u, v = _frame(h, w, cy, cx, rng.uniform(0, np.pi))
    width = rng.uniform(3.0, 6.0) if rng.uniform() < 0.6 else rng.uniform(3.0, max(3.5, extent / 3))
    return (np.abs(u) <= extent / 2) & (np.abs(v) <= width / 2)


def _tube(rng, h, w, cy, cx, extent) -> np.ndarray:
    """Curved tube: a smooth random path of length ~extent, 3-10 px wide."""
    length = extent * rng.uniform(1.0, 1.6)
    n = max(int(length / 0.5), 4)
    s = np.arange(n) * 0.5
    bend = rng.uniform(-1, 1) * 2.5 / length  # radians per px
    ang = rng.uniform(0, 2 * np.pi) + bend * s + np.cumsum(rng.normal(0, 0.02, n))
    py, px = np.cumsum(0.5 * np.sin(ang)), np.cumsum(0.5 * np.cos(ang))
    py, px = py - py.mean() + cy, px - px.mean() + cx
    width = rng.uniform(3.0, 5.0) if rng.uniform() < 0.5 else rng.uniform(3.0, 10.0)
    pad = int(width) + 2
    r0, r1 = max(int(py.min()) - pad, 0), min(int(py.max()) + pad + 1, h)
    c0, c1 = max(int(px.min()) - pad, 0), min(int(px.max()) + pad + 1, w)
    out = np.zeros((h, w), bool)
    if r1 <= r0 or c1 <= c0:
        return out
    iy, ix = np.round(py).astype(int), np.round(px).astype(int)
    ok = (iy >= r0) & (iy < r1) & (ix >= c0) & (ix < c1)
    line = np.zeros((r1 - r0, c1 - c0), bool)
    line[iy[ok] - r0, ix[ok] - c0] = True
    if line.any():
        out[r0:r1, c0:c1] = ndimage.distance_transform_edt(~line) <= width / 2
    return out


def _annulus(rng, h, w, cy, cx, extent) -> np.ndarray:
    outer = _star(rng, h, w, cy, cx, extent, concave=False)
    frac = rng.uniform(0.3, 0.65)
    off = rng.uniform(-0.15, 0.15, 2) * extent * (1 - frac) / 2
    inner = _star(rng, h, w, cy + off[0], cx + off[1], extent * frac, concave=False)
    return outer & ~inner


def _parts(rng, h, w, cy, cx, extent) -> tuple[np.ndarray, list[np.ndarray]]:
    """An outer shape and one or two inner regions inside it (clipped to it; an inner
    region may reach the outer edge): ``(outer mask, [part masks])``. The whole outer
    shape is the object; each part gets its own label, so its own intensity."""
    outer = _shape(rng, ("star", "concave", "ellipse")[int(rng.integers(3))], h, w, cy, cx, extent)
    parts = []
    for _ in range(int(rng.integers(1, 3))):
        frac = rng.uniform(0.25, 0.7)
        off = rng.uniform(-0.3, 0.3, 2) * extent * (1 - frac)
        inner = _star(rng, h, w, cy + off[0], cx + off[1], extent * frac, concave=False)
        parts.append(inner & outer)
    return outer, parts


def _shape(rng, kind, h, w, cy, cx, extent) -> np.ndarray:
    if kind in ("star", "concave"):
        return _star(rng, h, w, cy, cx, extent, concave=kind == "concave")
    return {
        "ellipse": _ellipse,
        "polygon": _polygon,
        "bar": _bar,
        "tube": _tube,
        "annulus": _annulus,
    }[kind](rng, h, w, cy, cx, extent)


def _elastic_coords(rng, h, w, amplitude: float):
    """Pixel coordinates displaced by a smooth random field of about ``amplitude`` px."""
    yy, xx = _grid(h, w)
    if amplitude <= 0:
        return yy, xx
    cell = rng.uniform(16, 48)
    return (
        yy + amplitude * _smooth_noise(rng, h, w, cell),
        xx + amplitude * _smooth_noise(rng, h, w, cell),
    )


def _lookup(a: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Nearest-neighbour sample of 2-D ``a`` (edge-clamped)."""
    ri = np.clip(np.rint(rows).astype(np.intp), 0, a.shape[0] - 1)
    ci = np.clip(np.rint(cols).astype(np.intp), 0, a.shape[1] - 1)
    return a[ri, ci]


def _procedural_labels(rng, h, w):
    """Label map (h, w) int32, number of labels, objects [(label, kind)], similar-pairs,
    parts {object label: part labels}."""
    side = min(h, w)
    n_bg = int(rng.integers(1, 5))
    if n_bg > 1:
        cell = rng.uniform(20, 80)
        fields = np.stack([_smooth_noise(rng, h, w, cell) for _ in range(n_bg)])
        labels = np.argmax(fields, axis=0).astype(np.int32)
    else:
        labels = np.zeros((h, w), np.int32)
    nxt = n_bg
    # Background structures: anywhere, any size, may leave the image.
    for _ in range(int(rng.integers(0, 6))):
        kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
        ext = _log_uniform(rng, 10, 1.2 * side)
        m = _shape(rng, kind, h, w, rng.uniform(0, h), rng.uniform(0, w), ext)
        labels[m] = nxt
        nxt += 1
    objects, similar, parts = [], {}, {}
    for _ in range(int(rng.integers(1, 5))):
        kind = OBJECT_KINDS[int(rng.integers(len(OBJECT_KINDS)))]
        lo = {"annulus": 18.0, "tube": 14.0, "parts": 18.0}.get(kind, float(_MIN_EXTENT))
        if rng.uniform() < 0.15:  # almost the whole image
            ext = rng.uniform(0.7, 0.97) * side
        else:
            ext = _log_uniform(rng, lo, 0.95 * side)
        cy = rng.uniform(min(ext / 2, h / 2), max(h - ext / 2, h / 2)) + rng.normal(0, 3)
        cx = rng.uniform(min(ext / 2, w / 2), max(w - ext / 2, w / 2)) + rng.normal(0, 3)
        if rng.uniform() < 0.3:  # a touching neighbour, later given a similar intensity
            phi = rng.uniform(0, 2 * np.pi)
            n_ext = ext * rng.uniform(0.4, 1.2)
            dist = (ext + n_ext) / 2 * rng.uniform(0.7, 1.0)
            nk = ("star", "ellipse", "polygon")[int(rng.integers(3))]
            m = _shape(rng, nk, h, w, cy + dist * np.sin(phi), cx + dist * np.cos(phi), n_ext)
            labels[m] = nxt
            similar[nxt + 1] = nxt
            nxt += 1
        if kind == "parts":
            m, inner = _parts(rng, h, w, cy, cx, ext)
        else:
            m, inner = _shape(rng, kind, h, w, cy, cx, ext), []
        labels[m] = nxt
        objects.append((nxt, kind))
        lab = nxt
        nxt += 1
        for p in inner:
            labels[p] = nxt
            parts.setdefault(lab, []).append(nxt)
            nxt += 1
    amp = rng.uniform(0.0, 3.0) if rng.uniform() < 0.7 else 0.0
    if amp > 0:
        rows, cols = _elastic_coords(rng, h, w, amp)
        labels = _lookup(labels, rows, cols)
    return labels, nxt, objects, similar, parts


def _extract(labels, objects, min_area, parts):
    """Masks of the objects of interest that are valid (largest component each; an
    object with parts is the union of its labels)."""
    masks, kept = [], []
    for lab, kind in objects:
        m = np.isin(labels, [lab, *parts.get(lab, ())])
        if not m.any():
            continue
        m = _largest_component(m)
        if _valid_object(m, min_area):
            masks.append(m)
            kept.append((lab, kind))
    return masks, kept


# --------------------------------------------------------------------------
# Atlas slices
# --------------------------------------------------------------------------
def _slice_geometry(rng, vol: _Volume, axis: int, index: int, h: int, w: int, zoom_max: float):
    """Random crop of slice ``index`` (scaled, rotated, maybe flipped and deformed).

    Returns ``(slice, rows, cols, spacing)``: the 2-D slice, the (h, w) coordinates
    in its voxels each output pixel samples, and the output pixel size (2,) in mm;
    None when the slice is empty. The voxels are isotropic in-plane for every
    template, so rotation does not change the pixel size.
    """
    sl = _take(vol.data, index, axis)
    nz = sl > 0
    if not nz.any():
        return None
    rows, cols = np.nonzero(nz.any(1))[0], np.nonzero(nz.any(0))[0]
    ext = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    side = max(h, w)
    lo = min(side / zoom_max, 1.1 * ext)
    span = _log_uniform(rng, lo, 1.1 * ext)  # voxels along the longer image side
    p = span / side * np.exp(rng.uniform(-0.15, 0.15, 2))  # voxels per px (row, col)
    cy = rng.uniform(rows[0] + 0.2 * (rows[-1] - rows[0]), rows[-1] - 0.2 * (rows[-1] - rows[0]))
    cx = rng.uniform(cols[0] + 0.2 * (cols[-1] - cols[0]), cols[-1] - 0.2 * (cols[-1] - cols[0]))
    er, ec = _elastic_coords(rng, h, w, rng.uniform(0, 2.5) if rng.uniform() < 0.6 else 0.0)
    dr, dc = (er - h / 2 + 0.5) * p[0], (ec - w / 2 + 0.5) * p[1]
    if rng.uniform() < 0.5:
        dc = -dc
    a = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(a), np.sin(a)
    in_plane = [vol.zooms[i] for i in range(3) if i != axis]
    spacing = np.array([p[0] * in_plane[0], p[1] * in_plane[1]], np.float32)
    return sl, cy + c * dr - s * dc, cx + s * dr + c * dc, spacing


def _take(vol: np.ndarray, index: int, axis: int) -> np.ndarray:
    """Slice ``index`` along ``axis`` as a view (``np.take`` copies through fancy indexing)."""
    return vol[(slice(None),) * axis + (index,)]


def _pick_slice(rng, template_dir, name):
    vol = _volume(template_dir, name)
    axes = [a for a in range(3) if len(_usable_slices(template_dir, name, a))]
    if not axes:
        return None
    axis = int(axes[int(rng.integers(len(axes)))])
    idx = _usable_slices(template_dir, name, axis)
    return vol, axis, int(idx[int(rng.integers(len(idx)))])


def _slice_meta(vol: _Volume, axis: int, index: int) -> dict:
    meta = {"name": vol.name, "axis": axis, "slice": index, "mni": vol.mni}
    if axis == 2:
        meta["world_z"] = _slice_world_z(vol, index)
    else:  # only inia19: the whole slice spans the volume's z range
        z = [vol.affine[2, 2] * k + vol.affine[2, 3] for k in (0, vol.data.shape[2] - 1)]
        meta["world_z"] = (min(z) - abs(vol.affine[2, 2]) / 2, max(z) + abs(vol.affine[2, 2]) / 2)
    return meta


def _atlas_objects(rng, labels, min_area, n_max):
    """Largest component of up to ``n_max`` random labels (not 0) that make valid objects."""
    cands = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        sub = labels[sl] == lab
        if sub.sum() < min_area:
            continue
        m = np.zeros(labels.shape, bool)
        m[sl] = _largest_component(sub)
        if _valid_object(m, min_area):
            cands.append((lab, m))
    order = rng.permutation(len(cands))
    return [cands[i] for i in order[:n_max]]


def _t1_texture(rng, template_dir, h, w):
    """A real T1 crop (h, w), zero mean / unit std over the brain, and its slice meta."""
    names = available_textures(template_dir)
    name = names[int(rng.integers(len(names)))]
    pick = _pick_slice(rng, template_dir, name)
    if pick is None:
        return None, None
    vol, axis, index = pick
    geo = _slice_geometry(rng, vol, axis, index, h, w, zoom_max=4.0)
    if geo is None:
        return None, None
    sl, rows, cols, _ = geo
    t = ndimage.map_coordinates(sl, np.stack([rows, cols]), order=1, mode="constant")
    brain = t > 0
    if brain.mean() < 0.2:
        return None, None
    t = np.where(brain, t, np.median(t[brain]))
    t = (t - t.mean()) / (t.std() + 1e-8)
    return t, _slice_meta(vol, axis, index)


# --------------------------------------------------------------------------
# Appearance
# --------------------------------------------------------------------------
def _render(rng, scene: _Scene, channels, sigma_n, texture):
    """SynthSeg-style image (h, w, C) float, roughly 0-255, before degradation.

    Each label gets a random mean (per channel), white-noise std and texture
    amplitudes; an object of interest gets its mean set against the mean of its
    3-px surroundings for a random contrast, in units of the noise and texture std
    there (1-40, log-uniform), and each of its parts against the object's (1-20); some
    edges fade over part of their length.
    Returns the image and, per object, the fraction of its edge faded out.
    """
    labels, n_labels, masks = scene.labels, scene.n_labels, scene.masks
    obj_labels, similar, parts = scene.obj_labels, scene.similar, scene.parts
    h, w = labels.shape
    mu = rng.uniform(10, 245, (n_labels, channels))
    sd = rng.uniform(0, 12, n_labels) * (rng.uniform(size=n_labels) < 0.7)
    wts = np.zeros((n_labels, 2))
    if rng.uniform() < 0.6:  # low-frequency texture, different per label
        wts = rng.normal(0, rng.uniform(2, 12), (n_labels, 2))
    amp = np.zeros(n_labels)
    if texture is not None:
        amp = rng.uniform(5, 25) * rng.uniform(0, 1, n_labels)
    var = sd**2 + (wts**2).sum(1) + amp**2  # per-label intensity variance
    for lab, m in zip(obj_labels, masks):
        sl = _window(m, 4)
        ring_labels = labels[sl][_ring(m, 3, sl)]
        if not ring_labels.size:
            ring_labels = np.zeros(1, np.intp)
        ring_mu = mu[ring_labels].mean(0)
        sig = np.sqrt(sigma_n**2 + 0.5 * (var[ring_labels].mean() + var[lab]))
        delta = _log_uniform(rng, 1.0, 40.0) * sig
        mu[lab] = _step(rng, ring_mu, delta, channels)
        for p in parts.get(lab, ()):
            mu[p] = _step(rng, mu[lab], _log_uniform(rng, 1.0, 20.0) * sig, channels)
        if lab in similar:  # keep the touching neighbour similar to the object's final level
            mu[similar[lab]] = np.clip(mu[lab] + rng.normal(0, 0.5, channels) * sig, 3, 252)
    img = mu[labels] + (sd[labels] * rng.standard_normal((h, w)))[..., None]
    if wts.any():
        fields = [_smooth_noise(rng, h, w, rng.uniform(3, 25)) for _ in range(2)]
        img += (wts[labels, 0] * fields[0] + wts[labels, 1] * fields[1])[..., None]
    if texture is not None:
        img += (amp[labels] * texture)[..., None]
    weak = []
    for m in masks:
        weak.append(_fade_edge(rng, img, m) if rng.uniform() < 0.35 else 0.0)
    return img, weak


def _step(rng, level, delta, channels) -> np.ndarray:
    """A mean ``delta`` away from ``level`` (C,), either polarity (the one that fits in
    0-255 when only one does); in colour along a random direction, a quarter of them
    with no luminance change."""
    if channels == 3:
        d = rng.normal(0, 1, 3)
        if rng.uniform() < 0.25:  # colour edge without luminance edge
            d -= (d @ _LUMA) / (_LUMA @ _LUMA) * _LUMA
        elif rng.uniform() < 0.5:
            d = 1.0 + rng.normal(0, 0.2, 3)
        d /= np.abs(d).max() + 1e-8
    else:
        d = np.ones(1)
    sign = 1.0 if rng.uniform() < 0.5 else -1.0
    for s in (sign, -sign):
        target = level + s * delta * d
        if np.all((target > 3) & (target < 252)):
            break
    return np.clip(target, 3, 252)


def _fade_edge(rng, img, mask) -> float:
    """Blend both sides of part of ``mask``'s edge to their middle level (in place).

    Returns the fraction of the boundary where the edge is mostly gone.
    """
    sl = _window(mask, 12)
    m = mask[sl]
    sub = img[sl]
    d_out = ndimage.distance_transform_edt(~m)
    d_in = ndimage.distance_transform_edt(m)
    ring_out = (d_out > 0) & (d_out <= 3)
    ring_in = m & (d_in <= 3)
    if not ring_out.any() or not ring_in.any():
        return 0.0
    mid = 0.5 * (sub[ring_out].mean(0) + sub[ring_in].mean(0))
    ys, xs = np.nonzero(m)
    cy, cx = ys.mean(), xs.mean()
    yy, xx = np.mgrid[sl[0], sl[1]]
    th = np.arctan2(yy - cy, xx - cx)
    vis = np.ones_like(th)
    for _ in range(int(rng.integers(1, 3))):
        c = rng.uniform(-np.pi, np.pi)
        width = rng.uniform(0.3, 0.9)
        dth = np.angle(np.exp(1j * (th - c)))
        vis *= 1.0 - rng.uniform(0.7, 1.0) * np.exp(-0.5 * (dth / width) ** 2)
    decay = rng.uniform(2.0, 6.0)
    wgt = (1.0 - vis) * np.exp(-np.where(m, d_in - 0.5, d_out - 0.5) / decay)
    sub += wgt[..., None] * (mid - sub)
    edge = m & (d_in <= 1)
    return float(np.mean(vis[edge] < 0.3)) if edge.any() else 0.0


def _bias(rng, h, w, strength) -> np.ndarray:
    """Smooth multiplicative inhomogeneity, exp(strength * field in [-1, 1])."""
    f = _smooth_noise(rng, h, w, rng.uniform(40, 120))
    return np.exp(strength * f / (np.abs(f).max() + 1e-8))


def _degrade(rng, img, sigma_n, rician: bool, speckle: tuple[int, float] | None = None):
    """Bias field, blur, speckle ``(looks, corr px)`` if given, partial volume, noise,
    gamma; returns (h, w, C) uint8."""
    h, w, c = img.shape
    if rng.uniform() < 0.8:
        img = img * _bias(rng, h, w, rng.uniform(0.1, 0.5))[..., None]
    blur = rng.uniform(0.0, 1.5)
    if blur > 0.3:
        img = ndimage.gaussian_filter(img, (blur, blur, 0))
    if speckle is not None:  # one field for all channels, as one transducer sees it
        img = img * speckle_field(rng, (h, w), *speckle)[..., None]
    f = rng.uniform(1.0, 3.0) if rng.uniform() < 0.5 else 1.0
    if f > 1.2:  # partial volume: acquire coarse, display fine
        small = (max(int(round(h / f)), 8), max(int(round(w / f)), 8))
        img = _resize(_resize(img, small), (h, w))
    if rician:
        img = np.sqrt(
            (img + rng.normal(0, sigma_n, img.shape)) ** 2 + rng.normal(0, sigma_n, img.shape) ** 2
        )
    else:
        img = img + rng.normal(0, sigma_n, img.shape)
    x = np.clip(img, 0, 255) / 255.0
    x = x ** np.exp(rng.normal(0, 0.25))
    return np.clip(np.rint(255 * x), 0, 255).astype(np.uint8)


def _contrast(img8: np.ndarray, mask: np.ndarray) -> tuple[float, float, int]:
    """Edge contrast of ``mask``: (luminance, max over channels, polarity).

    The 3 px inside the boundary against the 3 px outside it,
    ``|mean_in - mean_out| / sqrt((var_in + var_out) / 2)``, so smooth shading
    across a large object does not count as noise.
    """
    sl = _window(mask, 4)
    m = mask[sl]
    ring = _ring(mask, 3, sl)
    inner = m & ~ndimage.binary_erosion(m, _EIGHT, iterations=3)
    sub = img8[sl].astype(np.float64)
    vals = np.concatenate([sub @ _LUMA[:, None] / _LUMA.sum(), sub], axis=-1)
    a, b = vals[inner], vals[ring]
    if not len(a) or not len(b):
        return 0.0, 0.0, 1
    diff = a.mean(0) - b.mean(0)
    c = np.abs(diff) / np.sqrt(0.5 * (a.var(0) + b.var(0)) + 1e-6)
    return float(c[0]), float(c[1:].max()), 1 if diff[0] >= 0 else -1


def _visible_edge_fraction(t: np.ndarray, mask: np.ndarray, step: float) -> float:
    """Fraction of ``mask``'s boundary pixels where the local mean of ``t`` just inside
    differs from the one just outside by at least ``step``."""
    sl = _window(mask, 6)
    m = mask[sl].astype(np.float64)
    sub = t[sl]
    g = lambda x: ndimage.gaussian_filter(x, 1.5)
    inside = g(sub * m) / (g(m) + 1e-6)
    outside = g(sub * (1 - m)) / (g(1 - m) + 1e-6)
    edge = mask[sl] & ~ndimage.binary_erosion(mask[sl], _EIGHT)
    return float(np.mean(np.abs(inside - outside)[edge] >= step)) if edge.any() else 0.0


def _smooth_object(labels: np.ndarray, mask: np.ndarray, lab: int, sigma: float) -> np.ndarray:
    """Smooth the staircase of an upsampled atlas object (in place in ``labels``).

    Pixels the smoothed mask gains take ``lab``; pixels it loses take the label of
    the nearest pixel outside the object. Returns the new mask.
    """
    sl = _window(mask, int(2 * sigma) + 2)
    m = mask[sl]
    sm = ndimage.gaussian_filter(m.astype(np.float64), sigma) > 0.5
    sub = labels[sl]
    if (~m).any():
        _, (iy, ix) = ndimage.distance_transform_edt(m, return_indices=True)
        lost = m & ~sm
        sub[lost] = sub[iy[lost], ix[lost]]
    sub[sm & ~m] = lab
    out = np.zeros_like(mask)
    out[sl] = sm
    return out


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------
@dataclasses.dataclass
class _Scene:
    """A label map and its objects of interest, before rendering: ``similar`` {label:
    touching neighbour drawn at a similar level}, ``parts`` {object label: its part
    labels} (both empty for atlas scenes)."""

    labels: np.ndarray
    n_labels: int
    masks: list
    obj_labels: list
    kinds: list
    spacing: np.ndarray
    similar: dict
    parts: dict


def _procedural(rng, h, w) -> _Scene:
    for _ in range(20):
        labels, n, objects, similar, parts = _procedural_labels(rng, h, w)
        masks, kept = _extract(labels, objects, 16, parts)
        if masks:
            spacing = np.full(2, _log_uniform(rng, 0.2, 2.0), np.float32)
            obj_labels, kinds = [lab for lab, _ in kept], [k for _, k in kept]
            return _Scene(labels, n, masks, obj_labels, kinds, spacing, similar, parts)
    raise RuntimeError("procedural label maps kept failing")  # practically unreachable


def _atlas_labels(rng, template_dir, names, h, w):
    name = names[int(rng.integers(len(names)))]
    pick = _pick_slice(rng, template_dir, name)
    if pick is None:
        return None
    vol, axis, index = pick
    geo = _slice_geometry(rng, vol, axis, index, h, w, zoom_max=2.5)
    if geo is None:
        return None
    sl, rows, cols, spacing = geo
    raw = _lookup(sl, rows, cols)
    values, inv = np.unique(raw, return_inverse=True)
    labels = inv.reshape(h, w).astype(np.int32)
    if values[0] != 0:  # keep 0 = the atlas's background
        labels += 1
    n = int(labels.max()) + 1
    in_plane = [vol.zooms[i] for i in range(3) if i != axis]
    zoom = float(np.mean(np.asarray(in_plane) / spacing))  # output px per atlas voxel
    return vol, axis, index, rows, cols, spacing, labels, n, zoom


def _tissue_classes(rng, labels, n, found):
    """Merge the labels that are not objects into 2-5 random tissue classes.

    Atlas slices have dozens of regions; with one intensity each, an object's
    surroundings are a patchwork and its contrast is not controlled. Real images
    look more like a few tissues with structures in them.
    """
    n_tissue = int(rng.integers(2, 6))
    lut = rng.integers(0, n_tissue, n)
    for j, (lab, _) in enumerate(found):
        lut[lab] = n_tissue + j
    return lut[labels], n_tissue + len(found), [(n_tissue + j, m) for j, (_, m) in enumerate(found)]


def _smoothed_objects(labels, found, zoom):
    """``found`` [(label, mask)] with upsampling staircases smoothed, still valid."""
    if zoom < 1.3:
        return found
    for lab, m in found:
        _smooth_object(labels, m, lab, 0.45 * zoom)
    out = []
    for lab, _ in found:
        m = labels == lab
        if m.any():
            m = _largest_component(m)
            if _valid_object(m, _MIN_AREA):
                out.append((lab, m))
    return out


def _atlas_scene(rng, template_dir, names, h, w, meta):
    """The scene of an atlas slice, or None without objects."""
    got = _atlas_labels(rng, template_dir, names, h, w)
    if got is None:
        return None
    vol, axis, index, _, _, spacing, labels, n, zoom = got
    found = _atlas_objects(rng, labels, _MIN_AREA, int(rng.integers(1, 5)))
    found = _smoothed_objects(labels, found, zoom)
    if not found:
        return None
    if rng.uniform() < 0.7:
        labels, n, found = _tissue_classes(rng, labels, n, found)
    meta["source"] = "atlas"
    meta["atlas"] = _slice_meta(vol, axis, index)
    masks = [m for _, m in found]
    return _Scene(
        labels, n, masks, [lab for lab, _ in found], ["atlas"] * len(masks), spacing, {}, {}
    )


def generate(
    seed: int,
    split: str,
    index: int,
    *,
    atlases: bool = True,
    template_dir: str = TEMPLATE_DIR,
) -> dict:
    """Example ``index`` of ``split``.

    Returns a dict with ``image`` (H, W, 3) uint8 (grey replicated), ``masks``
    (N, H, W) uint8 {0, 1} (objects of interest, 1 <= N <= 4), ``classes`` (N,)
    int32 (all 0, :data:`CLASSES`), ``spacing`` (2,) float32 mm (row, col) and
    ``meta``: ``source`` ("procedural" | "atlas" | "real"), ``atlas`` and
    ``texture`` (slice dicts with name, axis, slice, mni, world_z (lo, hi) mm, or
    None), ``rgb``, ``kinds`` / ``polarity`` / ``extent`` ((rows, cols) px) /
    ``area`` (px) / ``contrast`` / ``contrast_rgb`` / ``weak_edge`` per object,
    ``noise_std`` (0-255 scale), ``speckle_looks`` (0: no speckle).
    """
    rng = synthetic.example_rng(seed, split, index)
    h = int(rng.integers(_SIDE_RANGE[0] // 8, _SIDE_RANGE[1] // 8 + 1)) * 8
    w = int(rng.integers(_SIDE_RANGE[0] // 8, _SIDE_RANGE[1] // 8 + 1)) * 8
    rgb = bool(rng.uniform() < 0.4)
    channels = 3 if rgb else 1
    sigma_n = _log_uniform(rng, 1.5, 14.0)
    rician = bool(not rgb and rng.uniform() < 0.4)
    # Ultrasound-like speckle in a share of the synthetic images (grey only): the
    # objects' contrast is then set against the speckle's grey-level spread at mid
    # grey as well as the additive noise, so that their edges stay findable.
    speckle = None
    if not rgb and rng.uniform() < _SPECKLE_SHARE:
        speckle = (int(rng.integers(1, 5)), float(rng.uniform(0.5, 2.0)))
    names = available_atlases(template_dir) if atlases else ()
    textures = available_textures(template_dir) if atlases else ()
    pairs = [a for a in names if REAL_PAIRS.get(a) in textures]
    u = rng.uniform()
    meta = {"atlas": None, "texture": None, "rgb": rgb, "noise_std": sigma_n, "speckle_looks": 0}

    img8 = None
    if pairs and u < 0.15:
        img8, masks, spacing, kinds = _real_example(rng, template_dir, pairs, h, w, meta, rgb)
    if img8 is None:
        scene = _atlas_scene(rng, template_dir, names, h, w, meta) if names and u < 0.5 else None
        if scene is None:
            scene = _procedural(rng, h, w)
            meta["source"] = "procedural"
        masks, kinds, spacing = scene.masks, scene.kinds, scene.spacing
        texture = None
        if textures and rng.uniform() < 0.3:
            texture, meta["texture"] = _t1_texture(rng, template_dir, h, w)
        sigma_r = sigma_n
        if speckle is not None:
            sigma_r = float(np.hypot(sigma_n, 128.0 * _speckle_cv(speckle[0])))
            meta["speckle_looks"] = speckle[0]
        img, weak = _render(rng, scene, channels, sigma_r, texture)
        img8 = _degrade(rng, img, sigma_n, rician, speckle)
        meta["weak_edge"] = weak
    else:
        meta["weak_edge"] = [0.0] * len(masks)
    if img8.shape[-1] == 1:
        img8 = np.repeat(img8, 3, axis=-1)
    con = [_contrast(img8, m) for m in masks]
    extents = []
    for m in masks:
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        extents.append((int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)))
    meta.update(
        kinds=list(kinds),
        polarity=[c[2] for c in con],
        contrast=[c[0] for c in con],
        contrast_rgb=[c[1] for c in con],
        extent=extents,
        area=[int(m.sum()) for m in masks],
    )
    return {
        "image": img8,
        "masks": np.stack(masks).astype(np.uint8),
        "classes": np.zeros(len(masks), np.int32),
        "spacing": np.asarray(spacing, np.float32),
        "meta": meta,
    }


def _real_example(rng, template_dir, pairs, h, w, meta, rgb):
    """A real T1 crop with objects from its own label map whose edges the T1 shows."""
    for _ in range(4):
        got = _atlas_labels(rng, template_dir, pairs, h, w)
        if got is None:
            continue
        vol, axis, index, rows, cols, spacing, labels, _, zoom = got
        t1vol = _volume(template_dir, REAL_PAIRS[vol.name])
        if t1vol.data.shape != vol.data.shape or not np.allclose(t1vol.affine, vol.affine):
            return None, None, None, None
        t1 = ndimage.map_coordinates(
            _take(t1vol.data, index, axis), np.stack([rows, cols]), order=1, mode="constant"
        )
        brain = t1 > 0
        if brain.mean() < 0.15:
            continue
        lo, hi = np.percentile(t1[brain], [1, 99])
        t1n = np.clip((t1 - lo) / (hi - lo + 1e-8), 0, 1.2)
        # Atlas regions rarely follow T1 edges everywhere (neighbouring cortical areas
        # look alike): keep those whose edge the T1 shows over most of its length.
        found = [
            (lab, m)
            for lab, m in _atlas_objects(rng, labels, _MIN_AREA, 40)
            if _visible_edge_fraction(t1n, m, 0.1) >= 0.65
        ]
        found = [m for _, m in _smoothed_objects(labels, found[: int(rng.integers(1, 5))], zoom)]
        if not found:
            continue
        channels = 3 if rgb else 1
        a = rng.uniform(0, 70, channels)
        b = rng.uniform(170, 255, channels)
        if rng.uniform() < 0.35:  # inverted contrast (T2-like)
            a, b = b, a
        img = a + (b - a) * t1n[..., None]
        img = np.where(brain[..., None], img, rng.uniform(0, 40, channels))
        meta["source"] = "real"
        meta["atlas"] = _slice_meta(vol, axis, index)
        meta["texture"] = _slice_meta(t1vol, axis, index)
        sigma_n = meta["noise_std"] = _log_uniform(rng, 1.0, 8.0)
        img8 = _degrade(rng, img, sigma_n, rician=False)
        return img8, found, spacing, ["real"] * len(found)
    return None, None, None, None
