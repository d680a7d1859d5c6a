"""Segment new images from four clicks: a trained model, an image, extreme points.

    seg = Segmenter.from_workdir("workdirs/default")            # latest checkpoint
    out = seg.segment(image, [[(x_l, y_l), (x_r, y_r), (x_t, y_t), (x_b, y_b)]])
    out.objects[0].mask                                         # (H, W) bool

Preprocessing is the input pipeline's evaluation path, step for step and with the
same functions (`dlset_jax.data.pipeline.process_object` without the targets):
`targets.crop_box(points, relax)` -> `targets.crop_and_resize(image, box, R)` ->
`pipeline.normalize_image` -> guidance channel from `targets.points_to_crop(points)`
by `pipeline.guidance_channel_np`. The network and the evolution are
`evaluate.predict_crops`; the crop's level set goes back into the image with
`targets.paste_back` (positive background outside the box) and the mask is
`phi <= threshold`, exactly as in `evaluate.run_evaluation`.

Intensities: a uint8 image is used as it is (the data sets store uint8); any other
dtype (uint16 PNG/TIFF, float, DICOM/NIfTI intensities) is mapped to [0, 255] by
`readers.intensity_to_uint8` (clip at the 0.5 / 99.5 percentiles of the whole image),
as the data set builders do for such files. Grey images are replicated to three
channels, RGB is used as it is, an alpha channel is dropped.

Points: `(x, y)` = (column, row) pixel coordinates, pixel centres at integers, four
per object in the order left, right, top, bottom (README conventions). A point
outside the image (x outside [0, W-1] or y outside [0, H-1]) is always an error.
Points out of order are an error by default; with `reorder=True` they are put in
order when that is unambiguous: the left-most, right-most, top-most and bottom-most
points are four DIFFERENT points, each strictly extreme in its coordinate. Otherwise
(e.g. two points share the smallest x) a ValueError names the object and the points.

Batching: all objects of one call go through ONE jit-compiled call of
`evaluate.predict_crops`, the batch padded to a bucket size (`bucket_size`, doubled
until the objects fit), so repeated calls with 1..bucket_size objects reuse one
compiled program (`Segmenter.trace_count` counts the compilations).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from dlset_jax import evaluate, hostmem, targets
from dlset_jax.data import pipeline, readers

__all__ = [
    "POINT_NAMES",
    "CheckpointMismatchError",
    "ObjectResult",
    "Segmentation",
    "Segmenter",
    "check_points",
    "check_variables",
    "image_to_uint8_range",
    "load_model",
    "overlay_image",
    "score_objects",
]

POINT_NAMES = ("left", "right", "top", "bottom")


class CheckpointMismatchError(ValueError):
    """The checkpoint's arrays do not fit the model built from its config."""


# ----------------------------------------------------------------- inputs


def image_to_uint8_range(image, percentiles=(0.5, 99.5)) -> np.ndarray:
    """`(H, W)` / `(H, W, C)` image -> `(H, W, C)` (C = 1 or 3) with values in [0, 255].

    uint8 is kept; other real dtypes go through `readers.intensity_to_uint8` (the
    builders' rule for non-uint8 files). An alpha channel (C = 4, or 2 for grey +
    alpha) is dropped.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[0] < 2 or img.shape[1] < 2:
        raise ValueError(f"image must be (H, W) grey or (H, W, 3) RGB, got shape {img.shape}")
    if img.shape[-1] == 4:
        img = img[..., :3]
    elif img.shape[-1] == 2:
        img = img[..., :1]
    if img.shape[-1] not in (1, 3):
        raise ValueError(f"image must have 1 (grey) or 3 (RGB) channels, got shape {img.shape}")
    if img.dtype == bool or not (
        np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)
    ):
        raise ValueError(f"image must be an integer or float array, got dtype {img.dtype}")
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
        raise ValueError(f"image has {int((~np.isfinite(img)).sum())} NaN/inf values")
    return readers.intensity_to_uint8(img, *percentiles)


def _fmt_pt(p) -> str:
    return f"(x={float(p[0]):g}, y={float(p[1]):g})"


def check_points(points, image_shape, *, obj: Any = 0, reorder: bool = False) -> np.ndarray:
    """Validates (and with `reorder`, orders) the four extreme points of one object.

    Args:
      points: `(4, 2)` `(x, y)` pixel coordinates, order left, right, top, bottom.
      image_shape: `(H, W)` or `(H, W, C)`.
      obj: how the object is named in error messages (its index or a name).
      reorder: put points given in another order in order when unambiguous (see the
        module doc); without it, points out of order raise.

    Returns:
      float64 `(4, 2)`, in the order left, right, top, bottom.

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
                f"object {obj}: point {j} ({POINT_NAMES[j]}) {_fmt_pt(p)} lies outside the image "
                f"(H={h}, W={w}: x must be in [0, {w - 1}], y in [0, {h - 1}])"
            )
    problem = _order_problem(pts)
    if problem is None:
        return pts
    if reorder:
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
            f"object {obj}: {problem}, and the order cannot be recovered unambiguously "
            "(the left-, right-, top- and bottom-most points must be four different "
            "points, each strictly extreme)"
        )
    raise ValueError(
        f"object {obj}: {problem}; give the points in the order left, right, top, "
        "bottom (or let them be reordered: reorder=True / --reorder)"
    )


def _order_problem(pts: np.ndarray) -> str | None:
    """None when `pts` are in the order left, right, top, bottom, else what is wrong."""
    checks = (
        (0, 0, np.argmin, "left-most", "smaller x"),
        (1, 0, np.argmax, "right-most", "larger x"),
        (2, 1, np.argmin, "top-most", "smaller y"),
        (3, 1, np.argmax, "bottom-most", "larger y"),
    )
    for j, c, arg, what, how in checks:
        k = int(arg(pts[:, c]))
        if pts[k, c] != pts[j, c]:  # ties with the extreme are fine
            return (
                f"point {j} ({POINT_NAMES[j]}) {_fmt_pt(pts[j])} is not the {what} point: "
                f"point {k} ({POINT_NAMES[k]}) {_fmt_pt(pts[k])} has a {how}"
            )
    return None


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
      mask: `(H, W)` bool, `phi <= threshold`, in the image's own resolution.
      phi: `(H, W)` float32 final level set (negative inside; `BACKGROUND_PHI` off the box).
      baseline_mask: `(H, W)` bool, the filled four-point polygon (`targets.polygon_mask`).
      area_px: pixels in `mask`; area_mm2: `area_px * row_mm * col_mm` when the spacing is known.
      crop_points: `(4, 2)` the points in crop px.
      trajectory: `(T+1, R, R)` level sets of the evolution in crop px (`return_trajectory`).
      network: crop-level arrays (`return_network_outputs`): `image` (R, R, 3) normalised
        crop, `guidance` (R, R), `phi0` (R, R), `motion` (R, R, 2) (y, x), `g` (R, R),
        `logits` (R, R, 2), `phi_t` (R, R).
    """

    index: int
    class_name: str | None
    points: np.ndarray
    box: np.ndarray
    mask: np.ndarray
    phi: np.ndarray
    baseline_mask: np.ndarray
    area_px: int
    area_mm2: float | None
    crop_points: np.ndarray
    trajectory: np.ndarray | None = None
    network: dict | None = None

    def summary(self) -> dict:
        """JSON-ready facts (no arrays)."""
        return {
            "object": self.index + 1,
            "class": self.class_name,
            "points": [[float(x), float(y)] for x, y in self.points],
            "box": {k: int(v) for k, v in zip(("y0", "x0", "y1", "x1"), self.box)},
            "area_px": int(self.area_px),
            "area_mm2": None if self.area_mm2 is None else float(self.area_mm2),
            "baseline_area_px": int(self.baseline_mask.sum()),
        }


@dataclasses.dataclass
class Segmentation:
    """All objects of one image; `timings` in seconds (`compiled`: this call compiled)."""

    objects: list[ObjectResult]
    image_shape: tuple[int, int]
    spacing: tuple[float, float] | None
    threshold: float
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
            out[o.mask] = o.index + 1
        return out


# ----------------------------------------------------------------- the model


def _shapes(tree) -> dict:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in flat}


def check_variables(model, variables, resolution: int, where: str = "checkpoint") -> None:
    """Raises CheckpointMismatchError when `variables` do not fit `model`."""
    expected = jax.eval_shape(lambda: model.init_variables(jax.random.key(0), resolution))
    for col in ("params", "batch_stats"):
        want, got = _shapes(expected.get(col, {})), _shapes(variables.get(col, {}))
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        if missing or extra:
            what = (
                f"model expects {col}{missing[0]} which the {where} lacks"
                if missing
                else f"{where} has {col}{extra[0]} which the model lacks"
            )
            raise CheckpointMismatchError(
                f"{where} does not match the model built from its config: {what} "
                f"({len(missing)} missing, {len(extra)} unexpected arrays)"
            )
        for k in want:
            if want[k] != got[k]:
                raise CheckpointMismatchError(
                    f"{where} does not match the model built from its config: {col}{k} has shape "
                    f"{got[k]} in the checkpoint, the model expects {want[k]}"
                )


def load_model(workdir: str, step: int | None = None):
    """`(config, variables, step)` of a checkpoint of `workdir` (default: the latest).

    Raises FileNotFoundError (no checkpoint), `config.ConfigError` (a saved config that
    does not validate), CheckpointMismatchError (arrays that do not fit the model).
    """
    import ml_collections

    from dlset_jax import checkpoint as ckpt_lib
    from dlset_jax import config as config_lib

    ckdir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckdir):
        raise FileNotFoundError(
            f"no checkpoints under {workdir!r} (expected {ckdir}/): train "
            "first (python train.py --workdir ...)"
        )
    checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
    try:
        latest = checkpointer.latest_step()
        if latest is None:
            raise FileNotFoundError(f"no finished checkpoint in {ckdir}")
        step = latest if step is None else int(step)
        if step not in checkpointer.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {ckdir} (available: {checkpointer.all_steps()})"
            )
        try:
            raw = checkpointer.restore_config(step)
        except Exception as e:  # orbax raises several types for a damaged item
            raise FileNotFoundError(
                f"checkpoint {step} in {ckdir} has no readable config ({type(e).__name__})"
            ) from e
        config = ml_collections.ConfigDict(raw)
        try:
            config_lib.validate(config)
        except config_lib.ConfigError as e:
            raise config_lib.ConfigError(
                f"config saved with checkpoint {step} in {ckdir}: {e}"
            ) from e
        try:
            variables = checkpointer.restore_variables(step)
        except Exception as e:
            raise CheckpointMismatchError(
                f"cannot restore the arrays of checkpoint {step} in "
                f"{ckdir} ({type(e).__name__}: {str(e)[:200]})"
            ) from e
    finally:
        checkpointer.close()
    return config, variables, step


class Segmenter:
    """A trained model ready to segment images from extreme points.

    Args:
      config: the training config (ml_collections.ConfigDict), e.g. from `load_model`.
      variables: `{"params", "batch_stats"}`.
      bucket_size: the batch is padded to this many objects (doubled while more are
        given), so calls with different numbers of objects share one compilation.
      threshold: mask = `phi <= threshold`; default `config.levelset.threshold`.
      check: verify that `variables` fit the model of `config`.
    """

    def __init__(
        self,
        config,
        variables,
        *,
        bucket_size: int = 8,
        threshold: float | None = None,
        check: bool = True,
        step: int | None = None,
        workdir: str | None = None,
    ):
        from dlset_jax import models

        if bucket_size < 1:
            raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
        self.config = config
        self.model = models.create_model(config.model)
        self.resolution = int(config.data.resolution)
        if check:
            check_variables(self.model, variables, self.resolution)
        self.variables = jax.device_put(jax.tree.map(np.asarray, variables))
        self.bucket_size = int(bucket_size)
        self.threshold = float(config.levelset.threshold if threshold is None else threshold)
        self.step = step
        self.workdir = workdir
        self.trace_count = 0  # how many times the batched prediction was traced (= compiled)
        self._fn = jax.jit(self._predict)

    @classmethod
    def from_workdir(cls, workdir: str, step: int | None = None, **kwargs) -> Segmenter:
        """Restores a checkpoint of a training workdir (default: the latest) with its config."""
        config, variables, step = load_model(workdir, step)
        return cls(config, variables, step=step, workdir=workdir, **kwargs)

    def _predict(self, variables, image, guidance):
        # Always with the trajectory (T+1 small crops per object): one compiled program
        # serves calls with and without `return_trajectory`.
        self.trace_count += 1  # Python side effect: runs only while tracing
        return evaluate.predict_crops(
            variables, image, guidance, model=self.model, config=self.config, return_trajectory=True
        )

    # ---- preprocessing (the pipeline's evaluation path)

    def preprocess(self, image, points) -> dict:
        """One object's network inputs: the pipeline's eval preprocessing.

        `image` must already be in [0, 255] (`image_to_uint8_range`), `points` checked.
        Returns `image` (R, R, 3) normalised crop, `guidance` (R, R, 1), `box`, `crop_points`.
        """
        d, r = self.config.data, self.resolution
        box = targets.crop_box(points, image.shape, relax=int(d.relax))
        crop = targets.crop_and_resize(image, box, r, order=1)
        cpts = targets.points_to_crop(points, box, r)
        return {
            "image": pipeline.normalize_image(crop),
            "guidance": pipeline.guidance_channel_np(
                cpts, r, r, d.guidance, float(d.sigma), d.cm_variant
            ),
            "box": np.asarray(box, np.int64),
            "crop_points": cpts,
        }

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
    ) -> Segmentation:
        """Segments the objects of one image from their four extreme points each.

        Args:
          image: `(H, W)` grey or `(H, W, 3)` RGB (`(H, W, 1)`, RGBA accepted), uint8 or
            any real dtype (see the module doc for the intensity mapping).
          points_list: one `(4, 2)` array of `(x, y)` per object (left, right, top,
            bottom), or a single `(4, 2)` array for one object.
          spacing: pixel size `(row_mm, col_mm)`, or one number for square pixels; gives
            `area_mm2` (and mm distances in `score_objects`).
          classes: optional class name per object (kept in the results).
          return_trajectory: keep the `(T+1, R, R)` evolution of each object.
          return_network_outputs: keep the crop-level network inputs and outputs.
          reorder: order points given in another order (when unambiguous).

        Returns:
          Segmentation with one ObjectResult per object, in the order given.
        """
        t0 = time.perf_counter()
        img = image_to_uint8_range(image)
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
        sp = _as_spacing(spacing)
        checked = [
            check_points(p, (h, w), obj=k, reorder=reorder) for k, p in enumerate(points_list)
        ]
        items = [self.preprocess(img, p) for p in checked]
        size = _bucket(n, self.bucket_size)
        pad = [items[0]] * (size - n)
        batch_img = np.stack([it["image"] for it in items + pad])
        batch_gd = np.stack([it["guidance"] for it in items + pad])
        t1 = time.perf_counter()
        traces = self.trace_count
        out = self._fn(self.variables, batch_img, batch_gd)
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
        for k, (p, it) in enumerate(zip(checked, items)):
            phi = targets.paste_back(
                out["phi_t"][k, ..., 0], it["box"], (h, w), background=evaluate.BACKGROUND_PHI
            )
            mask = phi <= self.threshold
            area = int(mask.sum())
            res = ObjectResult(
                index=k,
                class_name=classes[k],
                points=p,
                box=it["box"],
                mask=mask,
                phi=phi,
                baseline_mask=targets.polygon_mask(p, (h, w)),
                area_px=area,
                area_mm2=None if sp is None else area * sp[0] * sp[1],
                crop_points=it["crop_points"],
            )
            if return_trajectory:
                res.trajectory = np.asarray(out["trajectory"][:, k, ..., 0])
            if return_network_outputs:
                res.network = {
                    "image": it["image"],
                    "guidance": it["guidance"][..., 0],
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
            timings=timings,
        )


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
    """The evaluation's metrics (`evaluate.score_object`) of each object against its mask.

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
        rec = evaluate.score_object(o.phi, gt, o.points, sp, segmentation.threshold)
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

    img = image_to_uint8_range(image)
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
