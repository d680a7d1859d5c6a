"""Segment new images from four clicks: a trained model, an image, extreme points.

    seg = Segmenter.from_workdir("workdirs/default")            # latest checkpoint
    out = seg.segment(image, [[(x_l, y_l), (x_r, y_r), (x_t, y_t), (x_b, y_b)]])
    out.objects[0].mask                                         # (H, W) bool

The path is the evaluation's, with the same functions: `targets.crop_inputs` (crop
around the clicks, normalise) -> `inference.predict_crops` (guidance channel, network,
evolution) -> `inference.paste_back` -> `phi <= threshold`. The threshold is the run's
(`checkpoint.load`: the one chosen on validation when the run swept it).

The image contract (what the model was trained on, `config.data.image_kinds`):
  * grey images: `(H, W)` or `(H, W, 1)`, or `(H, W, 3)` with three equal channels;
    colour images: `(H, W, 3)`. A grey image given to a model that saw only colour, or
    a colour image to a model that saw only grey, is an error that says so (grey
    examples of a model trained on both were stored with the grey value in all three
    channels, and are given to it that way). `(H, W, 2)` and `(H, W, 4)` arrays are
    ambiguous (grey + alpha? RGBA? two or four channels?): an error; drop the alpha
    channel first (the file readers do that for PNG files that declare one).
  * intensities: values in [0, 255] that are whole numbers (uint8, or any integer or
    float dtype holding such values) are used as they are, as the data sets store
    them; anything else (uint16, CT/MR intensities, floats in [0, 1]) is mapped to
    [0, 255] by clipping at the 0.5 / 99.5 percentiles of the whole image
    (`readers.intensity_to_uint8`, the builders' rule for non-uint8 files). Which
    mapping was applied is in `Segmentation.intensity`.

Points: `(x, y)` = (column, row) pixel coordinates, pixel centres at integers, four
per object in the order left, right, top, bottom. The order given says which point is
which: a person clicking the extreme points of a thin or diagonal structure is often a
pixel or two off, and that is accepted. Refused: a point outside the image, a left
point to the right of the right point (or a top point below the bottom point), and four
points within one pixel of each other (nothing to segment). Points on one line (a thin
structure) are accepted with a warning in the object's summary. `reorder=True` sorts
four unordered points (the left-most is "left", ...) when that is unambiguous.

Corrective clicks (a model trained with `clicks.enabled`): after the four points, each
object may get positive clicks (a missed part of the object) and negative clicks
(leaked background), `(x, y, sign)` image px with sign +1 / -1, in the order clicked
(`segment(..., corrections=...)`, or an `Annotation` and `refine`). The crop stays the
one of the four points: a positive click outside it is an error (move the extreme
points instead); a negative click outside it changes nothing (a warning). A model
without click channels refuses corrections with a message that says so
(`check_accepts`, which callers can run before any compute). Errors name objects as a
person counts them ("object 1" first), or by the caller's own numbers
(`segment(..., object_ids=...)`) when it segments some of its objects per call.

Memory grows with the objects, not with the image: each object keeps its level set and
mask only inside its crop box (`ObjectResult.window`); `mask` / `phi` / `baseline_mask`
build full-image arrays on demand.

Batching: all objects of one call go through ONE jit-compiled call, the batch padded to
a bucket size (`bucket_size`, doubled until the objects fit), so repeated calls with
1..bucket_size objects reuse one compiled program (`Segmenter.trace_count`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from dlset_jax import checkpoint, hostmem, inference, metrics, models, outlines, readers, targets
from dlset_jax import config as config_lib

__all__ = [
    "POINT_NAMES",
    "Annotation",
    "check_corrections",
    "IMAGE_KINDS",
    "ObjectResult",
    "Segmentation",
    "Segmenter",
    "check_points",
    "prepare_image",
    "overlay_image",
    "score_objects",
]

POINT_NAMES = ("left", "right", "top", "bottom")
IMAGE_KINDS = ("grey", "rgb")


# ----------------------------------------------------------------- inputs


def prepare_image(image, image_kinds: Sequence[str] = IMAGE_KINDS, percentiles=(0.5, 99.5)):
    """An image as the model takes it, and what was done to it (see the module doc).

    Args:
      image: `(H, W)`, `(H, W, 1)` or `(H, W, 3)`, integer or float.
      image_kinds: what the model was trained on: ("grey",), ("rgb",) or both.

    Returns:
      `(img, facts)`: `img` `(H, W, C)` with C = 1 (grey) or 3, values in [0, 255];
      `facts` = {"kind": "grey" | "rgb", "intensity": "as stored" | "percentiles ..."}.

    Raises:
      ValueError naming the problem.
    """
    img = np.asarray(image)
    given = img.shape
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"image must be (H, W) grey or (H, W, 3) RGB, got shape {given}")
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise ValueError(f"image of shape {given} is too small: it needs at least 2 x 2 px")
    if img.shape[-1] in (2, 4):
        raise ValueError(
            f"image of shape {img.shape} is ambiguous ({img.shape[-1]} channels: with an "
            "alpha channel? as separate channels?): give (H, W) grey or (H, W, 3) RGB, "
            "e.g. image[..., :3] for RGBA or image[..., 0] for grey + alpha"
        )
    if img.shape[-1] not in (1, 3):
        raise ValueError(f"image must have 1 (grey) or 3 (RGB) channels, got shape {img.shape}")
    if img.dtype == bool or not (
        np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)
    ):
        raise ValueError(f"image must be an integer or float array, got dtype {img.dtype}")
    if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
        raise ValueError(f"image has {int((~np.isfinite(img)).sum())} NaN/inf values")
    grey = img.shape[-1] == 1 or bool(np.all(img == img[..., :1]))
    kind = "grey" if grey else "rgb"
    kinds = tuple(image_kinds)
    if kind not in kinds:
        want = " and ".join(kinds)
        raise ValueError(
            f"this model was trained on {want} images only and was given a {kind} image "
            f"of shape {img.shape}: convert it first"
            + (" (e.g. to grey by its luminance)" if kind == "rgb" else " (e.g. to RGB)")
        )
    if grey and kinds == ("grey",):
        img = img[..., :1]
    elif img.shape[-1] == 1:  # a grey image for a model that also saw colour
        img = np.repeat(img, 3, axis=-1)
    if img.dtype == np.uint8:
        return img, {"kind": kind, "intensity": "as stored (uint8)"}
    lo, hi = float(img.min()), float(img.max())
    if lo >= 0 and hi <= 255 and bool(np.all(img == np.round(img))):
        return img.astype(np.uint8), {
            "kind": kind,
            "intensity": "as stored (whole numbers in [0, 255])",
        }
    out = readers.intensity_to_uint8(img, *percentiles)
    return out, {
        "kind": kind,
        "intensity": f"clipped at the {percentiles[0]:g} / {percentiles[1]:g} percentiles of the image",
    }


def _fmt_pt(p) -> str:
    return f"(x={float(p[0]):g}, y={float(p[1]):g})"


def _object_ids(object_ids, n: int) -> list:
    """How errors name `n` objects: the caller's ids, or 1..n as a person counts."""
    ids = list(range(1, n + 1)) if object_ids is None else list(object_ids)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} object ids for {n} objects")
    return ids


# How far (px) a point may lie past the one that should be extreme on that side before
# `check_points` warns.
EXTREME_SLACK = 2.0


def check_points(points, image_shape, *, obj: Any = 1, reorder: bool = False):
    """Validates (and with `reorder`, orders) the four extreme points of one object.

    Args:
      points: `(4, 2)` `(x, y)` pixel coordinates, order left, right, top, bottom.
      image_shape: `(H, W)` or `(H, W, C)`.
      obj: how the object is named in error messages (its number from 1, or a name).
      reorder: the points are unordered: name them by their coordinates (left-most =
        left, ...) when that is unambiguous.

    Returns:
      `(points, warnings)`: float64 `(4, 2)` in the order left, right, top, bottom, and
      a list of strings (e.g. collinear points).

    Raises:
      ValueError naming the object and the point.
    """
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"object {obj}: points must be four (x, y) numbers, got {points!r}") from e
    if pts.shape != (4, 2):
        raise ValueError(
            f"object {obj}: expected 4 points (x, y) in the order left, right, top, "
            f"bottom, got an array of shape {pts.shape}"
        )
    if not np.isfinite(pts).all():
        raise ValueError(f"object {obj}: points must be finite, got {pts.tolist()}")
    h, w = int(image_shape[0]), int(image_shape[1])
    for j, p in enumerate(pts):
        if not (0 <= p[0] <= w - 1 and 0 <= p[1] <= h - 1):
            raise ValueError(
                f"object {obj}: point {j} ({POINT_NAMES[j]}) {_fmt_pt(p)} lies outside the "
                f"image (H={h}, W={w}: x must be in [0, {w - 1}], y in [0, {h - 1}])"
            )
    if np.ptp(pts[:, 0]) <= 1 and np.ptp(pts[:, 1]) <= 1:
        raise ValueError(
            f"object {obj}: the four points lie within one pixel of each other "
            f"({', '.join(_fmt_pt(p) for p in pts)}): click the object's left-, right-, "
            "top- and bottom-most points"
        )
    if reorder:
        pts = _reorder(pts, obj)
    if pts[0, 0] > pts[1, 0]:
        raise ValueError(
            f"object {obj}: point 0 (left) {_fmt_pt(pts[0])} is to the right of point 1 "
            f"(right) {_fmt_pt(pts[1])}; give the points in the order left, right, top, "
            "bottom (or reorder=True / --reorder for unordered points)"
        )
    if pts[2, 1] > pts[3, 1]:
        raise ValueError(
            f"object {obj}: point 2 (top) {_fmt_pt(pts[2])} is below point 3 (bottom) "
            f"{_fmt_pt(pts[3])}; give the points in the order left, right, top, bottom "
            "(or reorder=True / --reorder for unordered points)"
        )
    warnings = []
    # each point the extreme of its side: another point well past it means the points
    # are not the object's extremes, or not in the order left, right, top, bottom
    # (a pixel or two is a click's usual miss on a diagonal edge)
    for j, (axis, sign) in enumerate(((0, -1), (0, 1), (1, -1), (1, 1))):
        past = sign * (pts[:, axis] - pts[j, axis])
        k = int(np.argmax(past))
        if past[k] > EXTREME_SLACK:
            side = ("left of", "right of", "above", "below")[j]
            warnings.append(
                f"point {k} ({POINT_NAMES[k]}) lies {past[k]:g} px {side} point {j} "
                f"({POINT_NAMES[j]}): are these the object's extreme points, in the order "
                "left, right, top, bottom?"
            )
    # on one line: every three of the points span (nearly) no area
    spans = [
        (pts[b, 0] - pts[a, 0]) * (pts[c, 1] - pts[a, 1])
        - (pts[b, 1] - pts[a, 1]) * (pts[c, 0] - pts[a, 0])
        for a, b, c in ((0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3))
    ]
    if max(abs(v) for v in spans) < 1.0:
        warnings.append(
            "the four points are (nearly) on one line: segmented as a thin structure "
            f"({np.ptp(pts[:, 0]) + 1:g} x {np.ptp(pts[:, 1]) + 1:g} px box)"
        )
    return pts, warnings


def _reorder(pts: np.ndarray, obj) -> np.ndarray:
    roles = [
        int(np.argmin(pts[:, 0])),
        int(np.argmax(pts[:, 0])),
        int(np.argmin(pts[:, 1])),
        int(np.argmax(pts[:, 1])),
    ]
    extreme = [pts[:, 0].min(), pts[:, 0].max(), pts[:, 1].min(), pts[:, 1].max()]
    coord = [0, 0, 1, 1]
    unique = all(np.sum(pts[:, coord[r]] == extreme[r]) == 1 for r in range(4))
    if len(set(roles)) == 4 and unique:
        return pts[roles]
    raise ValueError(
        f"object {obj}: the order of the points cannot be recovered unambiguously (the "
        "left-, right-, top- and bottom-most points must be four different points, each "
        "strictly extreme); give them in the order left, right, top, bottom"
    )


def check_corrections(clicks, image_shape, *, obj: Any = 1) -> np.ndarray:
    """Validates one object's corrective clicks.

    Args:
      clicks: `(K, 3)` `(x, y, sign)` image px, sign +1 (positive) or -1 (negative);
        None or empty for none.
      image_shape: `(H, W)` or `(H, W, C)`.

    Returns:
      float64 `(K, 3)`.

    Raises:
      ValueError naming the object and the click.
    """
    if clicks is None:
        return np.zeros((0, 3))
    try:
        c = np.asarray(clicks, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"object {obj}: corrective clicks must be (x, y, sign) triples, got {clicks!r}"
        ) from e
    if c.size == 0:
        return np.zeros((0, 3))
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(
            f"object {obj}: corrective clicks must have shape (K, 3) (x, y, sign), got {c.shape}"
        )
    if not np.isfinite(c).all():
        raise ValueError(f"object {obj}: corrective clicks must be finite, got {c.tolist()}")
    h, w = int(image_shape[0]), int(image_shape[1])
    for j, (x, y, sign) in enumerate(c):
        if sign not in (1.0, -1.0):
            raise ValueError(
                f"object {obj}: corrective click {j + 1} has sign {sign:g}; use +1 (positive: "
                "part of the object) or -1 (negative: background)"
            )
        if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
            raise ValueError(
                f"object {obj}: corrective click {j + 1} (x={x:g}, y={y:g}) lies outside the "
                f"image (H={h}, W={w}: x must be in [0, {w - 1}], y in [0, {h - 1}])"
            )
    return c


@dataclasses.dataclass
class Annotation:
    """The clicks of one object: four extreme points, then corrective clicks in order.

        ann = Annotation(points)             # (4, 2) left, right, top, bottom
        ann.add(x, y)                        # a missed part of the object
        ann.add(x, y, positive=False)        # leaked background
        seg.refine(image, ann).mask

    `clicks` holds `(x, y, sign)` image px (sign +1 / -1).
    """

    points: Any
    clicks: list = dataclasses.field(default_factory=list)
    class_name: str | None = None

    def add(self, x: float, y: float, positive: bool = True) -> Annotation:
        self.clicks.append((float(x), float(y), 1.0 if positive else -1.0))
        return self

    def undo(self) -> Annotation:
        """Removes the last corrective click (the four points stay)."""
        if not self.clicks:
            raise ValueError("no corrective click to undo")
        self.clicks.pop()
        return self

    @property
    def corrections(self) -> np.ndarray:
        return np.asarray(self.clicks, np.float64).reshape(-1, 3)


# The default bucket: one object, doubled as needed (1, 2, 4, 8, ...). Most calls segment
# one object (a click in the tool, a slice of a propagation, an object of a benchmark),
# and every padded object costs a whole crop's compute: with 8, one object took 206 ms
# instead of 26 (`make train`'s model, 2-core machine); doubling from 1 compiles at most
# log2(n) + 1 programs for calls of up to n objects.
BUCKET_SIZE = 1


def _bucket(n: int, bucket_size: int) -> int:
    size = bucket_size
    while size < n:
        size *= 2
    return size


# ----------------------------------------------------------------- outputs


@dataclasses.dataclass
class ObjectResult:
    """One segmented object.

    Attributes:
      index: position in the call's `points_list` (label value in `label_map` is index+1).
      class_name: the class given for it (or None).
      points: `(4, 2)` `(x, y)` image px as used (after `reorder`), left, right, top, bottom.
      box: `(y0, x0, y1, x1)` crop box in image px, end-exclusive (may leave the image).
      image_shape: `(H, W)` of the image.
      window: `(y0, x0, y1, x1)`, the box's part inside the image.
      phi_window: float32 final level set on the window's pixels (negative inside).
      threshold: mask = `phi <= threshold`.
      area_px: pixels in the mask; area_mm2: `area_px * row_mm * col_mm` with a spacing.
      crop_points: `(4, 2)` the points in crop px.
      corrections: `(K, 3)` the corrective clicks used, `(x, y, sign)` image px.
      warnings: what the user should know about the clicks (e.g. collinear points).
      trajectory: `(T+1, R, R)` level sets of the evolution in crop px (`return_trajectory`).
      network: crop-level arrays (`return_network_outputs`): `image` (R, R, 3) normalised
        crop, `guidance` (R, R), `phi0` (R, R), `motion` (R, R, 2) (y, x), `g` (R, R),
        `logits` (R, R, 2), `phi_t` (R, R).
    """

    index: int
    class_name: str | None
    points: np.ndarray
    box: np.ndarray
    image_shape: tuple[int, int]
    window: tuple[int, int, int, int]
    phi_window: np.ndarray
    threshold: float
    area_px: int
    area_mm2: float | None
    crop_points: np.ndarray
    corrections: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 3)))
    warnings: list[str] = dataclasses.field(default_factory=list)
    trajectory: np.ndarray | None = None
    network: dict | None = None

    @property
    def mask_window(self) -> np.ndarray:
        return self.phi_window <= self.threshold

    @property
    def mask(self) -> np.ndarray:
        """`(H, W)` bool in the image's own resolution (allocated on each access)."""
        out = np.zeros(self.image_shape, bool)
        y0, x0, y1, x1 = self.window
        out[y0:y1, x0:x1] = self.mask_window
        return out

    @property
    def phi(self) -> np.ndarray:
        """`(H, W)` float32 level set, `inference.BACKGROUND_PHI` off the box."""
        out = np.full(self.image_shape, inference.BACKGROUND_PHI, np.float32)
        y0, x0, y1, x1 = self.window
        out[y0:y1, x0:x1] = self.phi_window
        return out

    def contours(self) -> list[np.ndarray]:
        """The mask's outline: the closed `phi = threshold` lines of the level set,
        each `(N, 2)` `(x, y)` image px, sub-pixel (`outlines.level_lines`)."""
        return outlines.level_lines(self.phi_window, self.threshold, self.window[:2])

    @property
    def baseline_mask(self) -> np.ndarray:
        """`(H, W)` bool, the filled four-point polygon (`targets.polygon_mask`)."""
        return targets.polygon_mask(self.points, self.image_shape)

    def summary(self) -> dict:
        """JSON-ready facts (no arrays)."""
        _, poly = targets.polygon_mask_window(self.points, self.image_shape)
        return {
            "object": self.index + 1,
            "class": self.class_name,
            "points": [[float(x), float(y)] for x, y in self.points],
            "box": {k: int(v) for k, v in zip(("y0", "x0", "y1", "x1"), self.box, strict=True)},
            "area_px": int(self.area_px),
            "area_mm2": None if self.area_mm2 is None else float(self.area_mm2),
            "baseline_area_px": int(poly.sum()),
            "corrections": [
                {"x": float(x), "y": float(y), "kind": "positive" if s > 0 else "negative"}
                for x, y, s in self.corrections
            ],
            "warnings": list(self.warnings),
        }


@dataclasses.dataclass
class Segmentation:
    """All objects of one image; `timings` in seconds (`compiled`: this call compiled).

    `threshold` / `threshold_source`: the mask threshold and where it came from;
    `intensity`: how the image was mapped to the model's input (`prepare_image`).
    """

    objects: list[ObjectResult]
    image_shape: tuple[int, int]
    spacing: tuple[float, float] | None
    threshold: float
    threshold_source: str
    intensity: dict
    timings: dict

    def label_map(self, dtype=None) -> np.ndarray:
        """`(H, W)` labels: 0 background, object k (k = 1..N, call order) = k.

        Objects are painted in order, so a later object wins where masks overlap (give
        an inner object, e.g. the optic cup, after the outer one).
        """
        n = len(self.objects)
        dtype = dtype or (np.uint8 if n < 256 else np.uint16)
        out = np.zeros(self.image_shape, dtype)
        for o in self.objects:
            y0, x0, y1, x1 = o.window
            out[y0:y1, x0:x1][o.mask_window] = o.index + 1
        return out


# ----------------------------------------------------------------- the model


class Segmenter:
    """A trained model ready to segment images from extreme points.

    Args:
      config: the training config (ml_collections.ConfigDict).
      variables: `{"params", "batch_stats"}`.
      bucket_size: the batch is padded to this many objects (doubled while more are
        given), so calls with different numbers of objects share one compilation.
      threshold: mask = `phi <= threshold`; default `config.levelset.threshold`
        (`from_workdir` passes the run's choice).
      check: verify that `variables` fit the model of `config`.
    """

    def __init__(
        self,
        config,
        variables,
        *,
        bucket_size: int = BUCKET_SIZE,
        threshold: float | None = None,
        threshold_source: str | None = None,
        check: bool = True,
        step: int | None = None,
        workdir: str | None = None,
    ):
        if bucket_size < 1:
            raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
        self.config = config
        self.model = models.create_model(config.model)
        self.resolution = int(config.data.resolution)
        if check:
            checkpoint.check_variables(self.model, variables, self.resolution)
        self.variables = jax.device_put(jax.tree.map(np.asarray, variables))
        self.bucket_size = int(bucket_size)
        if threshold is None:
            threshold = config.levelset.threshold
            threshold_source = threshold_source or "config levelset.threshold"
        if not np.isfinite(float(threshold)):  # NaN would give an empty mask, silently
            raise ValueError(
                f"threshold must be a finite number (level set value, crop px), got {threshold!r}"
            )
        self.threshold = float(threshold)
        self.threshold_source = threshold_source or "given"
        self.image_kinds = tuple(config.data.image_kinds)
        self.step = step
        self.workdir = workdir
        self.trace_count = 0  # how many times the batched prediction was traced (= compiled)
        self._fn = jax.jit(self._predict)

    @classmethod
    def from_workdir(
        cls,
        workdir: str,
        step: int | None = None,
        threshold: float | None = None,
        honour_width: float | None = None,
        points_width: float | None = None,
        **kwargs,
    ) -> Segmenter:
        """A checkpoint of a training workdir (default: the latest) with its config and
        the run's threshold (`checkpoint.load`), unless `threshold` is given.

        `honour_width` / `points_width` replace the run's `clicks.honour_width` /
        `clicks.points_width` (how the answer is made to agree with the corrective
        clicks / to contain the four extreme points: inference-time choices; 0 = off).
        """
        run = checkpoint.load(workdir, step)
        source = run.threshold_source if threshold is None else "given"
        config = run.config
        widths = {"honour_width": honour_width, "points_width": points_width}
        if any(v is not None for v in widths.values()):
            config = config.copy_and_resolve_references()
            for name, v in widths.items():
                if v is not None:
                    config.clicks[name] = float(v)
            config_lib.validate(config)
        return cls(
            config,
            run.variables,
            step=run.step,
            workdir=workdir,
            threshold=run.threshold if threshold is None else threshold,
            threshold_source=source,
            check=False,  # checkpoint.load checked them
            **kwargs,
        )

    @property
    def takes_corrections(self) -> bool:
        """Whether the model takes corrective clicks beyond the four (`clicks.enabled`)."""
        return bool(self.config.clicks.enabled)

    @property
    def max_corrections(self) -> int:
        """Corrective clicks per object the model takes (0 without click channels)."""
        return int(self.config.clicks.max_clicks) if self.takes_corrections else 0

    def _predict(self, variables, image, points, clicks, honour_points):
        # Always with the trajectory (T+1 small crops per object) and the click slots:
        # one compiled program serves every call.
        self.trace_count += 1  # Python side effect: runs only while tracing
        return inference.predict_crops(
            variables,
            image,
            points,
            clicks,
            model=self.model,
            config=self.config,
            return_trajectory=True,
            threshold=self.threshold,
            honour_points=honour_points,
        )

    def check_accepts(self, corrections, object_ids=None) -> None:
        """Raises ValueError naming the first object with corrective clicks when this
        model takes none, or with more than it takes; `segment` calls it, callers that
        want the refusal before any compute call it first.

        Args:
          corrections: one entry per object, None or a sequence of clicks.
          object_ids: how the errors name each object (default 1, 2, ...).
        """
        corrections = list(corrections)
        for obj, c in zip(_object_ids(object_ids, len(corrections)), corrections, strict=True):
            k = 0 if c is None else len(c)
            if k and not self.takes_corrections:
                raise ValueError(
                    f"object {obj}: this model takes no corrective clicks (it was trained "
                    "without click channels, clicks.enabled=False in its config): give only "
                    "the four extreme points, or use a model trained with clicks "
                    "(configs/default.py:interactive)"
                )
            if k > self.max_corrections:
                raise ValueError(
                    f"object {obj}: {k} corrective clicks; this model takes at most "
                    f"{self.max_corrections} per object (clicks.max_clicks)"
                )

    def _crop_corrections(self, clicks, box, obj):
        """Checked image-px clicks -> the crop's `(K, 3)` slots, and warnings."""
        out = np.zeros((int(self.config.clicks.max_clicks), 3), np.float32)
        if len(clicks) == 0:
            return out, []
        crop = targets.points_to_crop(clicks[:, :2], box, self.resolution)
        r = self.resolution - 1
        warnings, k = [], 0
        for j, ((cx, cy), sign) in enumerate(zip(crop, clicks[:, 2], strict=True)):
            inside = -0.5 <= cx <= r + 0.5 and -0.5 <= cy <= r + 0.5
            if not inside and sign > 0:
                x, y = clicks[j, :2]
                raise ValueError(
                    f"object {obj}: positive click {j + 1} (x={x:g}, y={y:g}) lies outside the "
                    f"object's crop box {tuple(int(v) for v in box)} (y0, x0, y1, x1) around "
                    "its four points: move the extreme points to include it"
                )
            if not inside:
                warnings.append(f"negative click {j + 1} lies outside the crop box: no effect")
                continue
            out[k] = (cx, cy, sign)
            k += 1
        return out, warnings

    def preprocess(self, image, points) -> dict:
        """One object's network inputs (`targets.crop_inputs`, as in training).

        `image` must already be prepared (`prepare_image`), `points` checked.
        Returns `image` (R, R, 3) normalised crop, `points` (4, 2) crop px, `box`.
        """
        d = self.config.data
        return targets.crop_inputs(
            image,
            points,
            relax=int(d.relax),
            relax_fraction=float(d.relax_fraction),
            resolution=self.resolution,
            contrast_floor=float(d.contrast_floor),
        )

    # ---- the call

    def segment(
        self,
        image,
        points_list,
        spacing=None,
        classes=None,
        *,
        return_trajectory: bool = False,
        return_network_outputs: bool = False,
        reorder: bool = False,
        corrections=None,
        object_ids=None,
        honour_points: bool = True,
    ) -> Segmentation:
        """Segments the objects of one image from their four extreme points each.

        Args:
          image: `(H, W)` grey or `(H, W, 3)` RGB, integer or float (the module doc
            says how channels and intensities are taken).
          points_list: one `(4, 2)` array of `(x, y)` per object (left, right, top,
            bottom), or a single `(4, 2)` array for one object.
          spacing: pixel size `(row_mm, col_mm)`, or one number for square pixels; gives
            `area_mm2` (and mm distances in `score_objects`).
          classes: optional class name per object (kept in the results).
          return_trajectory: keep the `(T+1, R, R)` evolution of each object.
          return_network_outputs: keep the crop-level network inputs and outputs.
          reorder: the points of each object are unordered (see `check_points`).
          corrections: one entry per object, None or `(K, 3)` corrective clicks
            `(x, y, sign)` image px (see the module doc); None for none at all.
          object_ids: how errors name each object, e.g. the caller's own numbers when
            it segments some of its objects per call (default 1, 2, ...).
          honour_points: the points are a person's clicks, which the answer is made
            to contain (`clicks.points_width`); False for points derived by a program
            (a neighbouring slice's answer), which are only the network's guidance.

        Returns:
          Segmentation with one ObjectResult per object, in the order given.

        Raises:
          ValueError: bad points or clicks, naming the object by `object_ids` or as a
            person counts them ("object 1" is the first; `ObjectResult.index` counts
            from 0).
        """
        t0 = time.perf_counter()
        img, facts = prepare_image(image, self.image_kinds)
        h, w = img.shape[:2]
        try:
            single = np.asarray(points_list, dtype=np.float64).shape == (4, 2)
        except (TypeError, ValueError):  # ragged: several objects, checked one by one below
            single = False
        points_list = [points_list] if single else list(points_list)
        n = len(points_list)
        if n == 0:
            raise ValueError("no objects: give at least one set of four points")
        if classes is None:
            classes = [None] * n
        classes = list(classes)
        if len(classes) != n:
            raise ValueError(f"{len(classes)} class names for {n} objects")
        ids = _object_ids(object_ids, n)
        sp = _as_spacing(spacing)
        checked = [
            check_points(p, (h, w), obj=k, reorder=reorder)
            for k, p in zip(ids, points_list, strict=True)
        ]
        if corrections is None:
            corrections = [None] * n
        corrections = list(corrections)
        if len(corrections) != n:
            raise ValueError(f"corrective clicks for {len(corrections)} objects, {n} objects")
        corrections = [
            check_corrections(c, (h, w), obj=k) for k, c in zip(ids, corrections, strict=True)
        ]
        self.check_accepts(corrections, ids)
        items = [self.preprocess(img, p) for p, _ in checked]
        crop_clicks = [
            self._crop_corrections(c, it["box"], k)
            for k, c, it in zip(ids, corrections, items, strict=True)
        ]
        size = _bucket(n, self.bucket_size)
        pad = [items[0]] * (size - n)
        batch_img = np.stack([it["image"] for it in items + pad])
        batch_pts = np.stack([it["points"] for it in items + pad])
        batch_clicks = np.stack([c for c, _ in crop_clicks] + [crop_clicks[0][0]] * (size - n))
        t1 = time.perf_counter()
        traces = self.trace_count
        honour = np.full((size,), float(honour_points), np.float32)
        out = self._fn(self.variables, batch_img, batch_pts, batch_clicks, honour)
        keys = (
            ["phi_t"]
            + (["trajectory"] if return_trajectory else [])
            + (["phi0", "motion", "g", "logits"] if return_network_outputs else [])
        )
        out = jax.device_get({k: out[k] for k in keys})  # slicing on the host: no extra programs
        if self.trace_count > traces:  # a new bucket was compiled: drop the compiler's scratch
            hostmem.release_freed_memory()
        t2 = time.perf_counter()
        results = []
        for k, ((p, warns), it) in enumerate(zip(checked, items, strict=True)):
            window, phi_win = targets.paste_back_window(out["phi_t"][k, ..., 0], it["box"], (h, w))
            area = int((phi_win <= self.threshold).sum())
            res = ObjectResult(
                index=k,
                class_name=classes[k],
                points=p,
                box=np.asarray(it["box"], np.int64),
                image_shape=(h, w),
                window=window,
                phi_window=phi_win,
                threshold=self.threshold,
                area_px=area,
                area_mm2=None if sp is None else area * sp[0] * sp[1],
                crop_points=it["points"],
                corrections=corrections[k],
                warnings=list(warns) + crop_clicks[k][1] + ([] if area else ["the mask is empty"]),
            )
            if return_trajectory:
                res.trajectory = np.asarray(out["trajectory"][:, k, ..., 0])
            if return_network_outputs:
                guid = inference.guidance_map(it["points"], self.resolution, self.config)
                res.network = {
                    "image": it["image"],
                    "guidance": guid,
                    "phi0": out["phi0"][k, ..., 0],
                    "motion": out["motion"][k],
                    "g": out["g"][k, ..., 0],
                    "logits": out["logits"][k],
                    "phi_t": out["phi_t"][k, ..., 0],
                }
            results.append(res)
        t3 = time.perf_counter()
        timings = {
            "preprocess_s": t1 - t0,
            "network_s": t2 - t1,
            "postprocess_s": t3 - t2,
            "total_s": t3 - t0,
            "batch": size,
            "compiled": self.trace_count > traces,
        }
        return Segmentation(
            objects=results,
            image_shape=(h, w),
            spacing=sp,
            threshold=self.threshold,
            threshold_source=self.threshold_source,
            intensity=facts,
            timings=timings,
        )

    def refine(self, image, annotation: Annotation, spacing=None, **kwargs) -> ObjectResult:
        """One object from its annotation: the four points and the corrective clicks."""
        return self.segment(
            image,
            [annotation.points],
            spacing,
            [annotation.class_name],
            corrections=[annotation.corrections],
            **kwargs,
        ).objects[0]


def _as_spacing(spacing):
    if spacing is None:
        return None
    sp = np.atleast_1d(np.asarray(spacing, np.float64)).ravel()
    if sp.size == 1:
        sp = np.repeat(sp, 2)
    if sp.size != 2 or not np.isfinite(sp).all() or (sp <= 0).any():
        raise ValueError(
            f"spacing must be one or two positive numbers (row_mm, col_mm), got {spacing!r}"
        )
    return float(sp[0]), float(sp[1])


# ----------------------------------------------------------------- scoring


def score_objects(segmentation: Segmentation, gt_masks: Sequence[np.ndarray]) -> list[dict]:
    """The evaluation's metrics (`metrics.score_object`) of each object against its mask.

    Distances are in mm when the segmentation has a spacing, else in px. Each record
    also has `baseline_dsc` (the four-point polygon) and the object's class.
    """
    if len(gt_masks) != len(segmentation.objects):
        raise ValueError(
            f"{len(gt_masks)} ground-truth masks for {len(segmentation.objects)} objects"
        )
    sp = segmentation.spacing or (1.0, 1.0)
    records = []
    for o, gt in zip(segmentation.objects, gt_masks):
        gt = np.asarray(gt)
        if gt.shape != segmentation.image_shape:
            raise ValueError(
                f"object {o.index}: ground truth of shape {gt.shape}, image "
                f"{segmentation.image_shape}"
            )
        gt = gt != 0 if gt.dtype != bool else gt
        if not gt.any():
            raise ValueError(f"object {o.index}: empty ground-truth mask")
        rec = metrics.score_object(o.phi, gt, o.points, sp, segmentation.threshold)
        rec = {k: v for k, v in rec.items() if not k.startswith("bf_curve_")}
        rec.update(
            object=o.index + 1,
            **({"class": o.class_name} if o.class_name else {}),
            units="mm" if segmentation.spacing else "px",
        )
        records.append(rec)
    return records


# ----------------------------------------------------------------- pictures

PALETTE = (
    (255, 64, 64),
    (64, 200, 255),
    (255, 200, 0),
    (120, 255, 120),
    (255, 120, 255),
    (255, 150, 60),
    (160, 120, 255),
    (0, 220, 180),
)


def overlay_image(
    image,
    segmentation: Segmentation,
    *,
    min_size: int = 384,
    max_scale: int = 8,
    show_baseline: bool = False,
) -> np.ndarray:
    """RGB uint8 picture: the image, each object's contour and its four clicks.

    Small images are enlarged by an integer factor (nearest neighbour) to at least
    `min_size` px on the long side (at most `max_scale` times), so the contour stays
    on the image's own pixel grid. Object k has colour `PALETTE[k % len(PALETTE)]`;
    the clicks are discs with a white rim. `show_baseline` adds the four-point
    polygon's outline (thin, grey).
    """
    from PIL import Image, ImageDraw, ImageFont
    from scipy import ndimage

    img, _ = prepare_image(image)
    img = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img
    h, w = img.shape[:2]
    s = int(min(max_scale, max(1, math.ceil(min_size / max(h, w)))))
    big = np.kron(img, np.ones((s, s, 1), np.uint8)) if s > 1 else img.copy()
    cross = ndimage.generate_binary_structure(2, 1)
    thick = 1 if s < 2 else 2

    def edge(mask):
        m = np.kron(mask.astype(np.uint8), np.ones((s, s), np.uint8)).astype(bool)
        e = m & ~ndimage.binary_erosion(m, cross, border_value=0)
        return ndimage.binary_dilation(e, cross, iterations=thick - 1) if thick > 1 else e

    for o in segmentation.objects:
        if show_baseline:
            big[edge(o.baseline_mask)] = (170, 170, 170)
    for o in segmentation.objects:
        big[edge(o.mask)] = PALETTE[o.index % len(PALETTE)]
    pil = Image.fromarray(big)
    draw = ImageDraw.Draw(pil)
    r = max(3.0, 1.8 * s)
    try:
        font = ImageFont.load_default(size=max(12, 5 * s))
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    for o in segmentation.objects:
        color = PALETTE[o.index % len(PALETTE)]
        for x, y in o.points:
            cx, cy = (x + 0.5) * s - 0.5, (y + 0.5) * s - 0.5
            draw.ellipse(
                [cx - r, cy - r, cx + r, cy + r],
                fill=color,
                outline=(255, 255, 255),
                width=max(1, int(r // 3)),
            )
        label = f"{o.index + 1}" + (f" {o.class_name}" if o.class_name else "")
        y0, x0 = int(o.box[0]), int(o.box[1])
        fs = max(12, 5 * s)
        tx = min(max(0, x0 * s), max(0, w * s - fs * len(label) // 2))
        ty = min(max(0, y0 * s - fs - 2), max(0, h * s - fs - 2))
        draw.text((tx + 1, ty + 1), label, fill=(0, 0, 0), font=font)
        draw.text((tx, ty), label, fill=color, font=font)
    return np.asarray(pil)
