"""The input pipeline: grain over a TFDS data source, one element per OBJECT.

Flow per object (docs/data.md, "Pipeline"):

1. The data set's images are flattened to objects: element ``i`` is
   ``(record, object)`` = ``index[i]`` (records in data-source order, objects in
   stored order); objects whose mask is empty are skipped and counted.
2. Training only, when ``augment``: a random horizontal flip, scale and
   rotation about the object's centre, applied to image (bilinear) and mask
   (nearest) together BEFORE the points are taken (only a window around the
   object is resampled; outside the image is zero).
3. Extreme points of the mask (left, right, top, bottom; ``(x, y)`` px): ties
   broken at random and each coordinate jittered by an integer in
   ``[-pert, pert]`` in training; exact (first pixel of a tie) in evaluation
   (``targets.extreme_points``).
4. The crop box ``targets.crop_box(points, relax)``, resized to ``resolution`` (zero
   padding outside the image): image bilinear, mask nearest.
5. ``targets.crop_inputs``: the image crop (a low-contrast one stretched to
   ``data.contrast_floor`` grey levels) normalised (``/255``, grey replicated to 3
   channels, ImageNet mean/std) and the points in crop px; the guidance channel is
   built from those points on the device (``inference.model_inputs``), by the same
   function for training, evaluation and prediction.
6. Targets on the crop: ``mask`` {0, 1}, ``sdt`` (truncated at ``dt_max``),
   ``dt`` and ``direction`` = ``targets.direction_field(dt)`` (d/dy, d/dx).

Every parameter comes from the config (``CropOptions.from_config``): the schema in
``dlset_jax/config.py`` is its one home.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import grain.python as grain
import numpy as np
from scipy import ndimage

from dlset_jax import targets

__all__ = [
    "CropOptions",
    "load_split",
    "TRAIN_KEYS",
    "EVAL_KEYS",
    "load_source",
    "load_extra_splits",
    "mix_objects",
    "ObjectMix",
    "object_index",
    "ObjectSource",
    "make_train_loader",
    "make_eval_iterator",
    "process_object",
]

log = logging.getLogger(__name__)

TRAIN_KEYS = ("image", "mask", "sdt", "dt", "direction", "points", "class_id")
EVAL_KEYS = TRAIN_KEYS + (
    "box",
    "image_shape",
    "full_mask",
    "spacing",
    "id",
    "record_index",
    "object_index",
    "valid",
)


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------
class DataSetNameError(ValueError):
    """A data set name (`data.name`, `data.extra_sets`) that no builder knows."""


def load_source(
    name: str, data_dir, split: str, *, build: bool = True, manual_dir=None, config=None
):
    """A TFDS random-access data source of one split, building the data set if needed.

    Args:
      name: a builder of ``dlset_jax.data.builders`` (``synthetic_prostate``,
        ``synthetic_fundus``, ``medical_volumes``, ``refuge_fundus``,
        ``user_segmentation``, ``colin27_aal``), optionally with a config
        (``"synthetic_prostate/tiny"``).
      data_dir: TFDS data directory (built data sets live under it).
      split: "train", "validation", "test" (TFDS split syntax such as
        "train[:10]" works too).
      build: build the data set when it is not there yet; with False a missing
        data set raises FileNotFoundError.
      manual_dir: directory with the user's files (real data sets); default
        ``<data_dir>/downloads/manual``.
      config: a BuilderConfig instance overriding the named config.

    Returns:
      ``tfds`` ArrayRecordDataSource (``len``, ``[i]`` -> dict of numpy arrays);
      its ``dataset_info.metadata["class_names"]`` names the classes.
    """
    import tensorflow_datasets as tfds

    from dlset_jax.data import builders

    base, _, cfg_name = name.partition("/")
    cls = builders.BUILDERS.get(base)
    if cls is None:
        raise DataSetNameError(f"unknown data set {name!r}; known: {sorted(builders.BUILDERS)}")
    kwargs: dict[str, Any] = {"data_dir": os.fspath(data_dir), "file_format": "array_record"}
    if config is not None:
        kwargs["config"] = config
    elif cfg_name:
        if cfg_name not in cls.builder_configs:
            raise DataSetNameError(
                f"unknown config {cfg_name!r} of {base}; known: {sorted(cls.builder_configs)}"
            )
        kwargs["config"] = cfg_name
    builder = cls(**kwargs)
    if not builder.is_prepared():
        if not build:
            raise FileNotFoundError(
                f"data set {name!r} is not built under {data_dir} (expected {builder.data_dir}); "
                "call load_source(..., build=True) to build it"
            )
        dl_config = tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir) if manual_dir else None
        )
        builder.download_and_prepare(download_config=dl_config)
    if split.split("[")[0] not in builder.info.splits:
        raise ValueError(f"{name}: no split {split!r}; available: {list(builder.info.splits)}")
    return builder.as_data_source(split=split)


def load_split(config, split: str):
    """``load_source`` for the data set the config names (``config.data``)."""
    d = config.data
    name = d.name + (f"/{d.builder_config}" if d.builder_config else "")
    return load_source(name, d.data_dir, split, build=d.build, manual_dir=d.manual_dir or None)


def load_extra_splits(config, split: str) -> list:
    """``load_source`` for each of ``data.extra_sets`` (built-in sets trained on beside
    ``data.name``; see ``mix_objects``)."""
    d = config.data
    return [load_source(n, d.data_dir, split, build=d.build) for n in d.extra_sets]


def object_index(source) -> tuple[np.ndarray, dict]:
    """``(M, 2)`` int64 ``(record, object)`` pairs of every non-empty object, and counts.

    Reads every record once. Objects whose mask has no foreground pixel are
    skipped and counted in ``stats["empty_objects"]`` (never a crash).
    """
    pairs = []
    stats = {"records": len(source), "objects": 0, "empty_objects": 0, "records_without_objects": 0}
    for r in range(len(source)):
        rec = source[r]
        masks = np.asarray(rec["masks"])
        if masks.shape[0] == 0:
            stats["records_without_objects"] += 1
        for k in range(masks.shape[0]):
            if masks[k].any():
                pairs.append((r, k))
            else:
                stats["empty_objects"] += 1
    stats["objects"] = len(pairs)
    if stats["empty_objects"]:
        log.warning("object_index: skipped %d objects without foreground", stats["empty_objects"])
    return np.asarray(pairs, np.int64).reshape(-1, 2), stats


class ObjectSource(grain.RandomAccessDataSource):
    """Random access to objects: element ``i`` = record ``index[i, 0]``, object ``index[i, 1]``."""

    def __init__(self, source, index: np.ndarray | None = None):
        self.source = source
        if index is None:
            index, self.stats = object_index(source)
        else:
            self.stats = {"objects": len(index)}
        self.index = np.asarray(index, np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        r, k = (int(v) for v in self.index[int(i)])
        rec = self.source[r]
        cid = np.asarray(rec["classes"])[k]
        sid = rec["id"]
        return {
            "image": np.asarray(rec["image"]),
            "mask": np.asarray(rec["masks"])[k] > 0,
            "class_id": np.int32(cid),
            "spacing": np.asarray(rec["spacing"], np.float32),
            "id": sid.decode() if isinstance(sid, bytes) else str(sid),
            "record_index": np.int64(r),
            "object_index": np.int64(k),
        }

    def __repr__(self):
        return f"ObjectSource({self.source!r}, objects={len(self)})"


class ObjectMix(grain.RandomAccessDataSource):
    """Several object sources as one: element ``i`` is element ``index[i, 1]`` of
    ``parts[index[i, 0]]``."""

    def __init__(self, parts, index: np.ndarray):
        self.parts = list(parts)
        self.index = np.asarray(index, np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        k, j = (int(v) for v in self.index[int(i)])
        return self.parts[k][j]

    def __repr__(self):
        return f"ObjectMix({self.parts!r}, objects={len(self)})"


def mix_objects(main, extras, share: float) -> ObjectMix:
    """``main``'s objects once each, and each of ``extras``' repeated (cyclically) or cut
    to an equal part of ``share`` of the result.

    With ``share`` s and ``main`` of N objects the extras together give
    ``round(s / (1 - s) * N)`` objects, so an epoch of the mix holds every object of
    ``main`` once and is s extras; the loader shuffles the whole mix each epoch.

    Args:
      main: an ``ObjectSource`` (the data set the run is named after).
      extras: ``ObjectSource``s, each non-empty.
      share: in [0, 1).
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"data.extra_share must be in [0, 1), got {share!r}")
    n_extra = round(share / (1.0 - share) * len(main))
    rows = [np.stack([np.zeros(len(main), np.int64), np.arange(len(main))], 1)]
    for k, src in enumerate(extras, start=1):
        if len(src) == 0:
            raise ValueError(f"data.extra_sets: {src!r} holds no object")
        n = n_extra // len(extras) + (k <= n_extra % len(extras))
        rows.append(np.stack([np.full(n, k, np.int64), np.arange(n) % len(src)], 1))
    return ObjectMix([main, *extras], np.concatenate(rows))


# --------------------------------------------------------------------------
# Per-object processing
# --------------------------------------------------------------------------
def _augment_window(image, mask, rng, *, scale_range, max_rotation_deg, flip, margin):
    """Flip/scale/rotate about the object centre; resample only a window around it.

    Returns (image window (h, w, C) float32, mask window (h, w) bool), i.e. a
    crop of the transformed full image (zero outside the original image) that
    contains the transformed object plus ``margin`` px on every side.
    """
    ys, xs = np.nonzero(mask)
    c = np.array([(ys.min() + ys.max()) / 2.0, (xs.min() + xs.max()) / 2.0])
    s = rng.uniform(*scale_range)
    th = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg))
    f = -1.0 if (flip and rng.uniform() < 0.5) else 1.0
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    fwd = s * rot @ np.diag([1.0, f])  # (y, x) -> (y, x), about c
    inv = np.linalg.inv(fwd)
    corners = np.array(
        [
            [ys.min() - 1, xs.min() - 1],
            [ys.min() - 1, xs.max() + 1],
            [ys.max() + 1, xs.min() - 1],
            [ys.max() + 1, xs.max() + 1],
        ],
        np.float64,
    )
    out = (corners - c) @ fwd.T + c
    lo = np.floor(out.min(0)) - margin
    hi = np.ceil(out.max(0)) + margin + 1
    shape = tuple(int(v) for v in (hi - lo))
    offset = c + inv @ (lo - c)
    img = np.asarray(image, np.float32)
    chans = [
        ndimage.affine_transform(
            img[..., k],
            inv,
            offset=offset,
            output_shape=shape,
            order=1,
            mode="grid-constant",
            cval=0.0,
        )
        for k in range(img.shape[-1])
    ]
    m = (
        ndimage.affine_transform(
            mask.astype(np.float32),
            inv,
            offset=offset,
            output_shape=shape,
            order=0,
            mode="grid-constant",
            cval=0.0,
        )
        > 0.5
    )
    if not m.any():  # a sliver that vanished under down-scaling: keep the untransformed object
        return None
    return np.stack(chans, axis=-1), m


@dataclasses.dataclass(frozen=True)
class CropOptions:
    """How an object becomes a training / evaluation example (all from the config).

    resolution: crop size R (px); relax, relax_fraction: crop margin (image px, and
    fraction of the object's longer side: ``targets.scaled_margin``); pert,
    pert_fraction: training jitter of the clicks, the same way; dt_max: SDT truncation
    (crop px); augment: random flip, scale in ``scale_range`` and rotation up to
    ``max_rotation_deg`` in training; contrast_floor: grey levels
    (``targets.stretch_contrast``, 0 = off).
    """

    resolution: int
    relax: int
    relax_fraction: float
    pert: int
    pert_fraction: float
    dt_max: float
    augment: bool
    scale_range: tuple[float, float]
    max_rotation_deg: float
    flip: bool
    contrast_floor: float = 0.0

    @classmethod
    def from_config(cls, config) -> CropOptions:
        d = config.data
        return cls(
            resolution=int(d.resolution),
            relax=int(d.relax),
            relax_fraction=float(d.relax_fraction),
            pert=int(d.pert),
            pert_fraction=float(d.pert_fraction),
            dt_max=float(d.dt_max),
            augment=bool(d.augment),
            scale_range=tuple(float(v) for v in d.augment_scale),
            max_rotation_deg=float(d.augment_rotation),
            flip=bool(d.augment_flip),
            contrast_floor=float(d.contrast_floor),
        )

    def __post_init__(self):
        for name, lo in (("resolution", 2), ("relax", 0), ("pert", 0)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        for name in ("relax_fraction", "pert_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not self.dt_max > 0:
            raise ValueError(f"dt_max must be > 0, got {self.dt_max}")


def process_object(
    image: np.ndarray,
    mask: np.ndarray,
    opts: CropOptions,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """One object -> network inputs and targets (steps 2-6 of the module doc).

    ``rng`` None means evaluation: exact points (first pixel of a tie), no
    augmentation, no jitter. Returns the TRAIN_KEYS (without class_id) plus ``box``
    (crop box in the coordinates of ``image``; after augmentation in those of the
    augmented window).
    """
    mask = np.asarray(mask) != 0
    img = np.asarray(image)
    train = rng is not None
    if train and opts.augment:
        ys, xs = np.nonzero(mask)
        corners = np.array([[xs.min(), ys.min()], [xs.max(), ys.max()]])
        # room for the largest margin and jitter the scaled object can get
        grow = opts.scale_range[1] * 1.5
        margin = (
            targets.scaled_margin(corners * grow, opts.relax, opts.relax_fraction)
            + targets.scaled_margin(corners * grow, opts.pert, opts.pert_fraction)
            + 2
        )
        res = _augment_window(
            img,
            mask,
            rng,
            scale_range=opts.scale_range,
            max_rotation_deg=opts.max_rotation_deg,
            flip=opts.flip,
            margin=margin,
        )
        if res is not None:
            img, mask = res
    pert = 0
    if train:
        ys, xs = np.nonzero(mask)
        corners = np.array([[xs.min(), ys.min()], [xs.max(), ys.max()]])
        pert = targets.scaled_margin(corners, opts.pert, opts.pert_fraction)
    pts = targets.extreme_points(mask, rng, pert)
    inputs = targets.crop_inputs(
        img,
        pts,
        relax=opts.relax,
        relax_fraction=opts.relax_fraction,
        resolution=opts.resolution,
        contrast_floor=opts.contrast_floor,
    )
    box, r = inputs["box"], opts.resolution
    mcrop = targets.crop_and_resize(mask, box, r, order=0) > 0.5
    if not mcrop.any():  # object thinner than a crop pixel: keep it visible
        soft = targets.crop_and_resize(mask.astype(np.float32), box, r, order=1)
        mcrop = soft >= soft.max()
    sdt, dt = targets.signed_distance(mcrop, dt_max=opts.dt_max)
    return {
        "image": inputs["image"],
        "mask": mcrop.astype(np.float32)[..., None],
        "sdt": sdt[..., None],
        "dt": dt[..., None],
        "direction": targets.direction_field(dt),
        "points": inputs["points"],
        "box": np.asarray(box, np.int64),
    }


class TrainTransform(grain.RandomMapTransform):
    """Per-object training example; randomness from grain's per-element rng."""

    def __init__(self, opts: CropOptions):
        self.opts = opts

    def random_map(self, element, rng: np.random.Generator):
        out = process_object(element["image"], element["mask"], self.opts, rng)
        out.pop("box")
        out["class_id"] = np.int32(element["class_id"])
        return out


class EvalTransform(grain.MapTransform):
    """Per-object evaluation example: exact points, plus what scoring in the image needs."""

    def __init__(self, opts: CropOptions):
        self.opts = opts

    def map(self, element):
        out = process_object(element["image"], element["mask"], self.opts)
        out.update(
            class_id=np.int32(element["class_id"]),
            image_shape=np.asarray(element["mask"].shape, np.int32),
            full_mask=np.asarray(element["mask"], np.uint8),
            spacing=element["spacing"],
            id=element["id"],
            record_index=element["record_index"],
            object_index=element["object_index"],
            valid=np.bool_(True),
        )
        return out


class _EvalBatch:
    """Stacks eval elements; pads the last batch to ``batch_size`` and the full masks to the largest."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def __call__(self, elements):
        n, bs = len(elements), self.batch_size
        elements = list(elements) + [elements[-1]] * (bs - n)
        keys = TRAIN_KEYS + ("box", "image_shape", "spacing", "record_index", "object_index")
        out = {k: np.stack([e[k] for e in elements]) for k in keys}
        out["valid"] = np.arange(bs) < n
        out["id"] = np.array([e["id"] for e in elements], dtype=object)
        hmax = max(e["full_mask"].shape[0] for e in elements)
        wmax = max(e["full_mask"].shape[1] for e in elements)
        full = np.zeros((bs, hmax, wmax), np.uint8)
        for i, e in enumerate(elements):
            h, w = e["full_mask"].shape
            full[i, :h, :w] = e["full_mask"]
        out["full_mask"] = full
        return out


def _check_batch_size(batch_size) -> None:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


def _ensure_absl_flags_parsed():
    """grain's worker processes read absl flags; parse them if the program did not."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _objects(source, shard_index: int, shard_count: int):
    objs = source if isinstance(source, (ObjectSource, ObjectMix)) else ObjectSource(source)
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    ds = grain.MapDataset.source(objs)
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(f"no objects in shard {shard_index}/{shard_count} of {objs!r}")
    return ds


def _to_iter(ds, worker_count: int, worker_buffer_size: int, read_threads: int):
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(read_threads * 2, 1))
    )
    if worker_count > 0:
        _ensure_absl_flags_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=worker_count, per_worker_buffer_size=worker_buffer_size
            )
        )
    return iter(it)


class _BatchShard(grain.MapDataset):
    """This process's rows of every global batch of a (transformed) element stream.

    Element ``j`` is the parent's element at global position
    ``(j // local) * (local * count) + index * local + j % local``: process
    ``index`` of ``count`` gets rows ``[index * local, (index + 1) * local)`` of
    each global batch. Random transforms upstream are seeded by the global
    position, so P processes together see exactly the batches, augmentation
    included, that one process with the global batch sees.
    """

    def __init__(self, parent: grain.MapDataset, index: int, count: int, local: int):
        super().__init__(parent)
        self._index, self._count, self._local = index, count, local

    def __len__(self) -> int:
        return (len(self._parent) // (self._local * self._count)) * self._local

    def _position(self, j: int) -> int:
        batch, row = divmod(int(j), self._local)
        return batch * self._local * self._count + self._index * self._local + row

    def __getitem__(self, j):
        if isinstance(j, slice):
            return self.slice(j)
        return self._parent[self._position(j)]

    def __str__(self) -> str:
        return f"_BatchShard({self._index}/{self._count}, local={self._local})"


def make_train_loader(
    source,
    opts: CropOptions,
    *,
    batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    num_steps: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    read_threads: int = 1,
):
    """Iterator over training batches (dicts of numpy arrays), checkpointable.

    All objects are shuffled per epoch (seeded), repeated ``num_epochs`` times
    (None: forever) and transformed with a per-element rng derived from ``seed``
    and the element's position in that stream. With ``shard_count`` P > 1 the
    stream is cut into global batches of ``P * batch_size`` and this process
    takes rows ``[shard_index * batch_size, (shard_index + 1) * batch_size)`` of
    each (only those elements are computed), so P processes together train on
    exactly the batches of a single process with the global batch size.
    ``batch_size`` is per process; the last partial batch is dropped. ``num_steps``
    caps the number of batches. Batch keys (B = batch_size, R = opts.resolution)::

        image (B,R,R,3) float32   mask (B,R,R,1) {0,1}
        sdt (B,R,R,1)   dt (B,R,R,1)   direction (B,R,R,2) (d/dy, d/dx)
        points (B,4,2) (x, y) crop px   class_id (B,) int32

    The returned grain ``DatasetIterator`` has ``get_state()`` / ``set_state()``:
    restoring a saved state into a fresh loader made with the same arguments
    continues with exactly the batches the original would have produced.
    ``worker_count > 0`` uses that many worker processes (spawned: call it from
    under ``if __name__ == "__main__":``); absl flags are marked parsed if
    the program has not parsed them.

    ``source``: a TFDS data source (``load_source``) or an :class:`ObjectSource`.
    """
    _check_batch_size(batch_size)
    ds = _objects(source, 0, 1)
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    ds = ds.seed(int(seed)).shuffle().repeat(num_epochs).random_map(TrainTransform(opts))
    if shard_count > 1:
        ds = _BatchShard(ds, int(shard_index), int(shard_count), int(batch_size))
    ds = ds.batch(batch_size, drop_remainder=True)
    if num_steps is not None:
        ds = ds[: int(num_steps)]
    return _to_iter(ds, worker_count, worker_buffer_size, read_threads)


def make_eval_iterator(
    source,
    opts: CropOptions,
    *,
    batch_size: int,
    shard_index: int = 0,
    shard_count: int = 1,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    read_threads: int = 1,
):
    """One pass over this shard's objects in index order, exact extreme points, no augmentation.

    Every batch has exactly ``batch_size`` rows (the last is padded by
    repeating its last object, with ``valid`` False on the padding), so a
    jitted step sees one shape. Keys: the training keys plus

        box (B,4) int64          crop box (y0, x0, y1, x1), end-exclusive, in ORIGINAL image px
        image_shape (B,2) int32  (H, W) of each object's image
        full_mask (B,Hmax,Wmax) uint8  the full-resolution mask, zero padded to the largest
                                 image of the batch: object b is full_mask[b, :H_b, :W_b]
        spacing (B,2) float32 mm (row, col)   id (B,) object (str)   valid (B,) bool
        record_index (B,), object_index (B,) int64: (record, object) in the data source
    """
    _check_batch_size(batch_size)
    ds = _objects(source, shard_index, shard_count).map(EvalTransform(opts))
    ds = ds.batch(batch_size, drop_remainder=False, batch_fn=_EvalBatch(batch_size))
    return _to_iter(ds, worker_count, worker_buffer_size, read_threads)
