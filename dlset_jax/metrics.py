"""Segmentation metrics for 2-D binary masks (paper section 4.1, method.md "Metrics").

Pure numpy/scipy; no JAX.  Every function takes two masks ``pred`` (the
segmentation S) and ``gt`` (the reference G) of identical shape ``(H, W)``,
either ``bool`` or numeric with values in {0, 1}.  Distances honour an optional
pixel ``spacing=(sy, sx)`` in mm (row spacing, column spacing); without it they
are in pixels.

Definitions
-----------
Overlap (unitless fractions in [0, 1]):
    ``dice = 2|S n G| / (|S| + |G|)``, ``iou = |S n G| / |S u G|``.
Volume (percent):
    ``rvd = 100 * (|S| - |G|) / |G|`` (signed; negative = under-segmentation).
Contour:
    The contour of a mask is the set of mask pixels that have at least one
    4-neighbour (up, down, left, right) outside the mask, where pixels beyond
    the image border count as outside.  This is exactly medpy's surface
    (``mask XOR binary_erosion(mask, cross)`` with ``border_value=0``,
    connectivity 1), so a mask touching the image edge has a contour there.
Surface distances (mm with spacing, else pixels):
    For every contour pixel of S, the Euclidean distance (in physical units,
    via ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``) to the
    nearest contour pixel of G, and vice versa.  With ``d_SG`` and ``d_GS`` the
    two directed lists:
      * ``hausdorff`` = max(max d_SG, max d_GS)           (medpy ``hd``)
      * ``hd95``      = 95th percentile (numpy linear interpolation) of the
                        pooled list d_SG + d_GS              (medpy ``hd95``)
      * ``abd``       = mean of the pooled list d_SG + d_GS (medpy ``assd``,
                        the "average boundary distance" ABD of the paper).
Boundary F-measure (DAVIS-style, fractions in [0, 1]):
    A contour pixel of S is *matched* if some contour pixel of G lies within
    Euclidean distance ``tolerance`` **pixels** (``<=``, spacing is ignored so
    the tolerance is a resolution-relative quantity, as in DAVIS); recall
    symmetrically.  Matching is many-to-one (a distance-transform test, the
    same as DAVIS's dilation by a disc, not a one-to-one bipartite matching).
    ``precision = matched S px / |contour S|``, ``recall = matched G px /
    |contour G|``, ``f = 2 P R / (P + R)`` (0 when P + R = 0).  The contour
    here is the 4-neighbour contour above, not DAVIS's thinned ``seg2bmap``.

Empty-mask conventions (never a NaN)
------------------------------------
=====================  =============  =================  ==================
case                   dice / iou     hd / hd95 / abd    bf (P, R, F)
=====================  =============  =================  ==================
both empty             1.0            0.0                (1, 1, 1)
pred empty, gt not     0.0            +inf               (1, 0, 0)
gt empty, pred not     0.0            +inf               (0, 1, 0)
=====================  =============  =================  ==================
``rvd``: gt empty and pred empty -> 0.0; gt empty and pred non-empty -> +inf;
pred empty and gt non-empty -> -100.0 (by the formula).
The +inf distances mark a failed object rather than inventing a finite
penalty; :func:`summarize` excludes non-finite values from mean/std by
default and reports how many it dropped (``n_nonfinite``), and
:func:`format_table` prints that count next to the value, so failures are
never hidden silently.  Pass ``nonfinite="propagate"`` to get ``inf`` means.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from dlset_jax import targets as _targets

__all__ = [
    "contour",
    "dice",
    "iou",
    "rvd",
    "volume_overlap",
    "surface_distances",
    "hausdorff",
    "hd95",
    "abd",
    "boundary_fmeasure",
    "object_metrics",
    "batch_object_metrics",
    "summarize",
    "format_table",
    "METRIC_INFO",
]

# Small slack for the "<= tolerance" test of the boundary F-measure, so that a
# distance of exactly ``tolerance`` (e.g. sqrt(4) = 2) always counts as matched.
_TOL_EPS = 1e-9


# --------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------
def _as_mask(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.number)):
        raise ValueError(f"{name} must be a bool or 0/1 numeric mask, got dtype {a.dtype}")
    if a.size and not np.all((a == 0) | (a == 1)):
        raise ValueError(f"{name} must contain only 0 and 1 (or be bool); got other values")
    return a.astype(bool)


def _check_pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred)
    g = np.asarray(gt)
    if p.ndim != 2 or g.ndim != 2:
        raise ValueError(
            f"pred and gt must be 2-D (H, W) masks; got shapes {p.shape} and {g.shape}"
        )
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    return _as_mask(p, "pred"), _as_mask(g, "gt")


def _check_spacing(spacing: Any) -> tuple[float, float]:
    if spacing is None:
        return (1.0, 1.0)
    try:
        s = np.asarray(spacing, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"spacing must be a pair (sy, sx) of positive numbers, got {spacing!r}"
        ) from e
    if s.shape != (2,):
        raise ValueError(f"spacing must have length 2 (sy, sx) for 2-D masks, got {spacing!r}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing must be finite and positive, got {spacing!r}")
    return (float(s[0]), float(s[1]))


# --------------------------------------------------------------------------
# Overlap / volume
# --------------------------------------------------------------------------
def dice(pred: Any, gt: Any) -> float:
    """Dice similarity coefficient 2|S n G| / (|S| + |G|), a fraction in [0, 1].

    Both empty -> 1.0; exactly one empty -> 0.0.
    """
    p, g = _check_pair(pred, gt)
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, g).sum()) / denom


def iou(pred: Any, gt: Any) -> float:
    """Jaccard index |S n G| / |S u G|, a fraction in [0, 1].

    Both empty -> 1.0; exactly one empty -> 0.0.
    """
    p, g = _check_pair(pred, gt)
    union = int(np.logical_or(p, g).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, g).sum()) / union


def rvd(pred: Any, gt: Any) -> float:
    """Relative volume difference 100 * (|S| - |G|) / |G| in percent (signed).

    Pixel spacing cancels, so none is taken.  Empty gt: 0.0 if pred is also
    empty, else +inf.  Empty pred with non-empty gt gives -100.0.
    """
    p, g = _check_pair(pred, gt)
    ns, ng = int(p.sum()), int(g.sum())
    if ng == 0:
        return 0.0 if ns == 0 else math.inf
    return 100.0 * (ns - ng) / ng


def volume_overlap(pred: Any, gt: Any) -> dict[str, float]:
    """`dice`, `iou` and `rvd` of two `(S, H, W)` volumes (or `(H, W)` masks), counted
    over all voxels: the slices stacked into one `(S * H, W)` mask, so each is the 2-D
    definition above with voxel counts (volumetric DSC of a propagated structure)."""
    p, g = np.asarray(pred), np.asarray(gt)
    if p.ndim not in (2, 3) or p.shape != g.shape:
        raise ValueError(
            f"pred and gt must be (S, H, W) volumes or (H, W) masks of one shape; got "
            f"{p.shape} and {g.shape}"
        )
    p, g = p.reshape(-1, p.shape[-1]), g.reshape(-1, g.shape[-1])
    return {"dsc": dice(p, g), "iou": iou(p, g), "rvd": rvd(p, g)}


# --------------------------------------------------------------------------
# Contours and surface distances
# --------------------------------------------------------------------------
def contour(mask: Any) -> np.ndarray:
    """Boolean contour of a 2-D mask: mask pixels with a 4-neighbour outside.

    Pixels beyond the image border count as outside (same as medpy's surface
    with connectivity 1).  Returns a bool array of the mask's shape.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W); got shape {m.shape}")
    m = _as_mask(m, "mask")
    pad = np.pad(m, 1, mode="constant", constant_values=False)
    interior = pad[1:-1, 1:-1] & pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return m & ~interior


def edge_strength(image: Any, mask: Any, sigma: float = 0.7) -> float:
    """How strong an image edge a mask's boundary lies on.

    The mean gradient magnitude of ``image`` (Gaussian derivatives of width ``sigma``
    px, ``scipy.ndimage.gaussian_gradient_magnitude``, reflected at the border) over
    the pixels either side of the boundary: the mask's contour (above) and the
    outside pixels 4-adjacent to it. Intensity units per pixel; it compares masks on
    the same image (a reference label against a segmentation: which of them follows
    the edges the image shows). ``image`` ``(H, W)``, ``mask`` ``(H, W)``; an empty
    mask gives nan.
    """
    img = np.asarray(image, np.float64)
    m = _as_mask(np.asarray(mask), "mask")
    if img.shape != m.shape:
        raise ValueError(f"image {img.shape} and mask {m.shape} must have the same (H, W) shape")
    if not m.any():
        return math.nan
    pad = np.pad(m, 1, mode="constant", constant_values=False)
    touches = pad[:-2, 1:-1] | pad[2:, 1:-1] | pad[1:-1, :-2] | pad[1:-1, 2:]
    ring = contour(m) | (touches & ~m)
    grad = ndimage.gaussian_gradient_magnitude(img, float(sigma))
    return float(grad[ring].mean())


def _crop_union(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus a 1-px False frame.

    Exact for contours (outside-image == outside-mask) and for distances between
    contour pixels (all of them lie inside the crop); only saves time.
    """
    u = p | g
    rows = np.flatnonzero(u.any(axis=1))
    cols = np.flatnonzero(u.any(axis=0))
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return (
        np.pad(p[sl], 1, mode="constant", constant_values=False),
        np.pad(g[sl], 1, mode="constant", constant_values=False),
    )


def _directed(src_c: np.ndarray, dst_c: np.ndarray, sampling) -> np.ndarray:
    """Distance from each contour pixel of ``src_c`` to the nearest of ``dst_c``."""
    dt = ndimage.distance_transform_edt(~dst_c, sampling=sampling)
    return dt[src_c]


def surface_distances(
    pred: Any, gt: Any, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Directed contour-to-contour distances ``(d_pred_to_gt, d_gt_to_pred)``.

    Units: mm when ``spacing=(sy, sx)`` in mm is given, else pixels.  Returns
    ``None`` when either mask is empty (no contour to measure; see the module
    docstring for how the summary distances treat that case).
    """
    p, g = _check_pair(pred, gt)
    sp = _check_spacing(spacing)
    if not p.any() or not g.any():
        return None
    pc, gc = _crop_union(p, g)
    cp, cg = contour(pc), contour(gc)
    return _directed(cp, cg, sp), _directed(cg, cp, sp)


def _empty_distance(p: np.ndarray, g: np.ndarray) -> float | None:
    """0.0 if both empty, +inf if exactly one empty, None if both non-empty."""
    ep, eg = not p.any(), not g.any()
    if ep and eg:
        return 0.0
    if ep or eg:
        return math.inf
    return None


def _distance_summary(pred, gt, spacing) -> dict[str, float]:
    p, g = _check_pair(pred, gt)
    sp = _check_spacing(spacing)
    e = _empty_distance(p, g)
    if e is not None:
        return {"hd": e, "hd95": e, "abd": e}
    d1, d2 = surface_distances(p, g, sp)
    pooled = np.concatenate([d1, d2])
    return {
        "hd": float(max(d1.max(), d2.max())),
        "hd95": float(np.percentile(pooled, 95)),
        "abd": float(pooled.mean()),
    }


def hausdorff(pred: Any, gt: Any, spacing: Sequence[float] | None = None) -> float:
    """Symmetric Hausdorff distance between the two contours (mm, or px without spacing).

    Both empty -> 0.0; exactly one empty -> +inf.  Equals medpy ``hd``.
    """
    return _distance_summary(pred, gt, spacing)["hd"]


def hd95(pred: Any, gt: Any, spacing: Sequence[float] | None = None) -> float:
    """95th percentile of the pooled symmetric contour distances (mm, or px).

    Both empty -> 0.0; exactly one empty -> +inf.  Equals medpy ``hd95``.
    """
    return _distance_summary(pred, gt, spacing)["hd95"]


def abd(pred: Any, gt: Any, spacing: Sequence[float] | None = None) -> float:
    """Average symmetric boundary distance: mean of the pooled contour distances (mm, or px).

    Both empty -> 0.0; exactly one empty -> +inf.  Equals medpy ``assd``.
    """
    return _distance_summary(pred, gt, spacing)["abd"]


# --------------------------------------------------------------------------
# Boundary F-measure
# --------------------------------------------------------------------------
def boundary_fmeasure(pred: Any, gt: Any, tolerance: float = 1.0) -> tuple[float, float, float]:
    """DAVIS-style boundary (precision, recall, F), fractions in [0, 1].

    A contour pixel of one mask is matched when a contour pixel of the other
    lies within Euclidean distance ``tolerance`` (in pixels, ``<=``).  Empty
    cases: both empty -> (1, 1, 1); pred empty -> (1, 0, 0); gt empty -> (0, 1, 0).
    """
    p, g = _check_pair(pred, gt)
    tol = float(tolerance)
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(
            f"tolerance must be a finite non-negative number of pixels, got {tolerance!r}"
        )
    ep, eg = not p.any(), not g.any()
    if ep and eg:
        return 1.0, 1.0, 1.0
    if ep:
        return 1.0, 0.0, 0.0
    if eg:
        return 0.0, 1.0, 0.0
    pc, gc = _crop_union(p, g)
    cp, cg = contour(pc), contour(gc)
    d_pg = _directed(cp, cg, None)
    d_gp = _directed(cg, cp, None)
    precision = float(np.mean(d_pg <= tol + _TOL_EPS))
    recall = float(np.mean(d_gp <= tol + _TOL_EPS))
    s = precision + recall
    f = 0.0 if s == 0 else 2.0 * precision * recall / s
    return precision, recall, f


# --------------------------------------------------------------------------
# Per-object bundle, batching
# --------------------------------------------------------------------------
def _tol_name(t: float) -> str:
    t = float(t)
    return str(int(t)) if t.is_integer() else str(t).replace(".", "p")


def object_metrics(
    pred: Any,
    gt: Any,
    spacing: Sequence[float] | None = None,
    tolerances: Iterable[float] = (1, 2),
) -> dict[str, float]:
    """All metrics of one object, as a flat dict of Python floats.

    Keys: ``dsc``, ``iou`` (fractions), ``rvd`` (%), ``hd``, ``hd95``, ``abd``
    (mm with spacing, else px), and for every tolerance t (pixels)
    ``bf_t`` (F), ``bf_t_precision``, ``bf_t_recall`` (fractions); a
    non-integer tolerance such as 1.5 is named ``bf_1p5``.
    """
    p, g = _check_pair(pred, gt)
    out: dict[str, float] = {
        "dsc": dice(p, g),
        "iou": iou(p, g),
        "rvd": rvd(p, g),
    }
    out.update(_distance_summary(p, g, spacing))
    for t in tolerances:
        prec, rec, f = boundary_fmeasure(p, g, t)
        k = f"bf_{_tol_name(t)}"
        out[k] = f
        out[f"{k}_precision"] = prec
        out[f"{k}_recall"] = rec
    return out


def batch_object_metrics(
    items: Iterable[Sequence[Any]],
    tolerances: Iterable[float] = (1, 2),
) -> list[dict[str, float]]:
    """:func:`object_metrics` over ``(pred, gt)`` or ``(pred, gt, spacing)`` tuples."""
    tolerances = tuple(tolerances)
    out = []
    for i, it in enumerate(items):
        if len(it) == 2:
            pred, gt = it
            spacing = None
        elif len(it) == 3:
            pred, gt, spacing = it
        else:
            raise ValueError(
                f"item {i} must be (pred, gt) or (pred, gt, spacing), got length {len(it)}"
            )
        out.append(object_metrics(pred, gt, spacing=spacing, tolerances=tolerances))
    return out


# --------------------------------------------------------------------------
# Summaries and tables
# --------------------------------------------------------------------------
# key -> (display name, scale applied for display, unit)
METRIC_INFO: dict[str, tuple[str, float, str]] = {
    "dsc": ("DSC", 100.0, "%"),
    "iou": ("IoU", 100.0, "%"),
    "rvd": ("RVD", 1.0, "%"),
    "hd": ("HD", 1.0, "mm"),
    "hd95": ("HD95", 1.0, "mm"),
    "abd": ("ABD", 1.0, "mm"),
    # DSC of the filled quadrilateral through the four extreme points (evaluate.py).
    "baseline_dsc": ("4-point polygon DSC", 100.0, "%"),
}
_DISTANCE_KEYS = ("hd", "hd95", "abd")


def _info(key: str) -> tuple[str, float, str]:
    if key in METRIC_INFO:
        return METRIC_INFO[key]
    if key.startswith("bf_"):
        rest = key[3:]
        for suffix, label in (("_precision", "BF-P"), ("_recall", "BF-R")):
            if rest.endswith(suffix):
                return (f"{label}@{rest[: -len(suffix)].replace('p', '.')}px", 100.0, "%")
        return (f"BF@{rest.replace('p', '.')}px", 100.0, "%")
    return (key, 1.0, "")


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _stats(values: list[float], nonfinite: str, ddof: int) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if np.isnan(a).any():
        raise ValueError("metric values contain NaN; object_metrics never produces NaN")
    finite = a[np.isfinite(a)]
    n_nonfinite = int(a.size - finite.size)
    if n_nonfinite and (nonfinite == "propagate" or finite.size == 0):
        # Infinite mean with the sign of the infinities (+inf if they disagree,
        # which would otherwise be NaN); an all-inf group is infinite either way.
        signs = np.unique(np.sign(a[~np.isfinite(a)]))
        mean = float(signs[0]) * math.inf if signs.size == 1 else math.inf
        std = math.inf
    elif finite.size == 0:  # no values at all
        mean = std = 0.0
    else:
        mean = float(finite.mean())
        std = float(finite.std(ddof=ddof)) if finite.size > ddof else 0.0
    return {"mean": mean, "std": std, "n": int(a.size), "n_nonfinite": n_nonfinite}


def _summarize_group(records, exclude, nonfinite, ddof) -> dict[str, dict[str, float]]:
    keys: list[str] = []
    for r in records:
        for k, v in r.items():
            if k not in exclude and k not in keys and _is_number(v):
                keys.append(k)
    # Known metrics in paper order first, then the rest in first-seen order.
    known = [k for k in METRIC_INFO if k in keys]
    keys = known + [k for k in keys if k not in METRIC_INFO]
    out = {}
    for k in keys:
        vals = [float(r[k]) for r in records if k in r and _is_number(r[k])]
        out[k] = _stats(vals, nonfinite, ddof)
    return out


def summarize(
    records: Sequence[Mapping[str, Any]],
    group_key: str | None = None,
    *,
    nonfinite: str = "exclude",
    ddof: int = 0,
) -> dict[str, Any]:
    """Mean and standard deviation over objects of every numeric metric.

    ``records`` are dicts from :func:`object_metrics`, optionally carrying
    extra keys such as ``'class'``.  ``group_key`` names the grouping key;
    ``None`` means ``'class'`` if any record has it (no grouping otherwise).
    Values keep the units of the records (fractions for dsc/iou/bf, % for rvd).

    Non-finite values (the +inf of an empty mask) are excluded from mean/std
    when ``nonfinite="exclude"`` (default) and counted in ``n_nonfinite``;
    ``"propagate"`` makes the mean and std infinite instead.  ``ddof=0`` is the
    population std (numpy's default); NaN values raise ValueError.

    Returns ``{"overall": {metric: {"mean", "std", "n", "n_nonfinite"}},
    "groups": {group_value: {...same...}}, "group_key": key_or_None}``.
    """
    if nonfinite not in ("exclude", "propagate"):
        raise ValueError(f"nonfinite must be 'exclude' or 'propagate', got {nonfinite!r}")
    records = list(records)
    if group_key is None and any("class" in r for r in records):
        group_key = "class"
    exclude = {group_key} if group_key is not None else set()
    result: dict[str, Any] = {
        "overall": _summarize_group(records, exclude, nonfinite, ddof),
        "groups": {},
        "group_key": group_key,
    }
    if group_key is not None:
        groups: dict[Any, list] = {}
        for r in records:
            if group_key in r:
                groups.setdefault(r[group_key], []).append(r)
        for gval in sorted(groups, key=str):
            result["groups"][gval] = _summarize_group(groups[gval], exclude, nonfinite, ddof)
    return result


def _fmt_cell(st: Mapping[str, float] | None, scale: float, decimals: int) -> str:
    if st is None:
        return "-"

    def fmt(x: float) -> str:
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x * scale:.{decimals}f}"

    cell = f"{fmt(st['mean'])} ± {fmt(st['std'])}"
    if st.get("n_nonfinite"):
        cell += f" ({st['n_nonfinite']}/{st['n']} inf)"
    return cell


def format_table(
    summary: Mapping[str, Any],
    metrics: Sequence[str] | None = None,
    *,
    decimals: int = 1,
    distance_unit: str = "mm",
) -> str:
    """Markdown table ``| Metric | mean ± std |`` shaped like the paper's tables.

    DSC, IoU and boundary F are shown in % (fractions x 100), RVD in %, and
    HD/HD95/ABD in ``distance_unit`` (``"mm"`` when spacing was given, pass
    ``"px"`` otherwise).  With groups (e.g. REFUGE cup/disc) one column per
    group is added after the overall column.  A cell whose metric had
    non-finite values excluded shows the count, e.g. ``"7.4 ± 3.6 (1/50 inf)"``.
    ``metrics`` selects and orders rows (default: every metric in the summary).
    """
    overall = summary["overall"]
    groups = summary.get("groups") or {}
    keys = list(metrics) if metrics is not None else list(overall)
    header = ["Metric", "mean ± std" if not groups else "overall"] + [str(g) for g in groups]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|",
    ]
    for k in keys:
        name, scale, unit = _info(k)
        if k in _DISTANCE_KEYS:
            unit = distance_unit
        label = f"{name} ({unit})" if unit else name
        cells = [_fmt_cell(overall.get(k), scale, decimals)]
        cells += [_fmt_cell(gs.get(k), scale, decimals) for gs in groups.values()]
        lines.append("| " + " | ".join([label] + cells) + " |")
    return "\n".join(lines) + "\n"


# Tolerances (px) of the boundary F-measure curve in the reports (paper Fig. 3).
F_TOLERANCES = tuple(range(1, 11))


def score_object(
    phi_full: np.ndarray,
    gt: np.ndarray,
    points_full: np.ndarray,
    spacing,
    threshold: float,
    thresholds=(),
) -> dict:
    """Metrics of one object in the full image, plus the four-point baseline's DSC."""
    pred = phi_full <= threshold
    rec = object_metrics(pred, gt, spacing=tuple(float(s) for s in spacing), tolerances=(1, 2))
    for tol in F_TOLERANCES:
        rec[f"bf_curve_{tol}"] = boundary_fmeasure(pred, gt, tol)[2]
    rec["baseline_dsc"] = dice(_targets.polygon_mask(points_full, gt.shape), gt)
    for t in thresholds:
        rec[f"dsc_at_{t:g}"] = dice(phi_full <= t, gt)
    return rec
