"""TFDS builders (no TensorFlow needed): synthetic sets, volumes, REFUGE, user data, Colin27/AAL.

Every builder writes ``array_record`` files and shares one feature set (see
``docs/data.md``)::

    image    (H, W, C) uint8          C = 1 (grey) or 3 (RGB)
    masks    (N, H, W) uint8 {0, 1}   one binary mask per OBJECT (objects may nest/overlap)
    classes  (N,) int32               object k's class: index into metadata["class_names"]
    spacing  (2,) float32             pixel size (row, col) in mm (1.0 and
                                      metadata["spacing_unit"] == "px" where unknown)
    id       text                     unique example id
    case     text                     patient / volume / source image the example comes from

Metadata (``builder.info.metadata``): ``class_names`` (list), ``spacing_unit``
("mm" or "px") and, after building, ``object_stats`` per split (objects kept,
objects dropped as too small, extra components dropped, images/slices without
objects).

Importing this module registers the builders with TFDS under the names
``synthetic_prostate``, ``synthetic_fundus``, ``medical_volumes``,
``refuge_fundus``, ``user_segmentation`` and ``colin27_aal``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from dlset_jax import readers
from dlset_jax.data import synthetic
from dlset_jax.readers import DataError, ObjectStats

__all__ = [
    "SyntheticConfig",
    "SyntheticProstate",
    "SyntheticFundus",
    "VolumeConfig",
    "MedicalVolumes",
    "RefugeConfig",
    "RefugeFundus",
    "UserConfig",
    "UserSegmentation",
    "AalConfig",
    "Colin27Aal",
    "AAL_DEEP_GREY",
    "BUILDERS",
    "split_cases",
    "slab_splits",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_VERSION = tfds.core.Version("1.0.0")


def _features(channels: int) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Tensor(
                shape=(None, None, channels), dtype=np.uint8, encoding="zlib"
            ),
            "masks": tfds.features.Tensor(
                shape=(None, None, None), dtype=np.uint8, encoding="zlib"
            ),
            "classes": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "spacing": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "id": tfds.features.Text(),
            "case": tfds.features.Text(),
        }
    )


def _example(image, masks, classes, spacing, ex_id: str, case: str) -> dict:
    return {
        "image": np.ascontiguousarray(image, np.uint8),
        "masks": np.ascontiguousarray(masks, np.uint8),
        "classes": np.asarray(classes, np.int32),
        "spacing": np.asarray(spacing, np.float32),
        "id": ex_id,
        "case": case,
    }


class _Base(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared info and bookkeeping of object statistics per split."""

    VERSION = _VERSION
    CHANNELS = 1
    SPACING_UNIT = "mm"

    def _class_names(self) -> list[str]:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").strip().split("\n")[0],
            features=_features(self._channels()),
            metadata=tfds.core.MetadataDict(
                class_names=list(self._class_names()),
                spacing_unit=self.SPACING_UNIT,
                object_stats={},
            ),
        )

    def _channels(self) -> int:
        return self.CHANNELS

    def _record_stats(self, split: str, stats: ObjectStats) -> None:
        self.info.metadata.setdefault("object_stats", {})[split] = stats.as_dict()
        log.info("%s/%s %s: %s", self.name, self.builder_config.name, split, stats.as_dict())
        if stats.kept == 0:  # TFDS cannot write an empty split
            raise DataError(f"{self.name}: split {split!r} has no objects ({stats.as_dict()})")

    def _manual_dir(self, dl_manager) -> pathlib.Path:
        """The manual directory; missing or empty -> DataError with the instructions."""
        try:
            return pathlib.Path(os.fspath(dl_manager.manual_dir))
        except AssertionError as e:  # TFDS: "does not exist or is empty" + instructions
            raise DataError(str(e)) from e


# --------------------------------------------------------------------------
# Synthetic data sets
# --------------------------------------------------------------------------
@dataclasses.dataclass(kw_only=True)
class SyntheticConfig(tfds.core.BuilderConfig):
    """Sizes of the generated splits and the generator seed."""

    num_train: int = 300
    num_validation: int = 40
    num_test: int = 80
    seed: int = 0


def _synthetic_configs(default_sizes):
    n_tr, n_va, n_te = default_sizes
    return [
        SyntheticConfig(
            name="default",
            description=f"{n_tr}/{n_va}/{n_te} examples, seed 0",
            num_train=n_tr,
            num_validation=n_va,
            num_test=n_te,
        ),
        SyntheticConfig(
            name="small",
            description="64/16/16 examples, seed 0",
            num_train=64,
            num_validation=16,
            num_test=16,
        ),
        SyntheticConfig(
            name="tiny",
            description="6/2/2 examples (tests)",
            num_train=6,
            num_validation=2,
            num_test=2,
        ),
    ]


class _SyntheticBase(_Base, skip_registration=True):
    GENERATOR = None
    CLASS_NAMES: tuple[str, ...] = ()

    def _class_names(self):
        return self.CLASS_NAMES

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        sizes = {"train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}
        return {s: self._generate_examples(s, n) for s, n in sizes.items() if n > 0}

    def _generate_examples(self, split: str, n: int):
        cfg = self.builder_config
        gen = type(self).GENERATOR
        stats = ObjectStats()
        for i in range(n):
            ex = gen(synthetic.example_rng(cfg.seed, split, i))
            stats.kept += len(ex["classes"])
            ex_id = f"{split}_{i:05d}"
            yield (
                ex_id,
                _example(ex["image"], ex["masks"], ex["classes"], ex["spacing"], ex_id, ex_id),
            )
        self._record_stats(split, stats)


class SyntheticProstate(_SyntheticBase):
    """Synthetic MR-like prostate slices (grey, one gland per slice), generated locally."""

    BUILDER_CONFIGS = _synthetic_configs((300, 40, 80))
    CHANNELS = 1
    CLASS_NAMES = synthetic.PROSTATE_CLASSES
    GENERATOR = staticmethod(synthetic.prostate_slice)


class SyntheticFundus(_SyntheticBase):
    """Synthetic RGB fundus crops with optic disc and cup (two nested classes), generated locally."""

    BUILDER_CONFIGS = _synthetic_configs((200, 40, 80))
    CHANNELS = 3
    CLASS_NAMES = synthetic.FUNDUS_CLASSES
    GENERATOR = staticmethod(synthetic.fundus_crop)


# --------------------------------------------------------------------------
# Volumes (prostate MR and similar)
# --------------------------------------------------------------------------
@dataclasses.dataclass(kw_only=True)
class VolumeConfig(tfds.core.BuilderConfig):
    """How volumes become 2-D examples.

    Attributes:
      class_values: ordered ``((class name, (label values...)), ...)``; a class
        is the union of its label values (nesting = overlapping value sets).
      axis: array axis to slice along (NIfTI i, j, k: 2 = axial for RAS data).
      rot90: rotate each slice by 90 degrees (counter-clockwise, ``np.rot90``)
        so RAS axial slices show anterior up; the spacing follows the rotation.
      channel: for 4-D images (e.g. Decathlon T2 + ADC), the channel to use.
      min_area: objects with fewer pixels are dropped (counted).
      components: "largest" | "all" | "union" (see readers.objects_from_label_map).
      split_fractions: train / validation / test fractions of the VOLUMES.
      split_seed: seed of the volume permutation.
      percentiles: intensity clipping range per volume before mapping to uint8.
    """

    class_values: tuple = (("prostate", (1, 2)),)
    axis: int = 2
    rot90: bool = True
    channel: int = 0
    min_area: int = 20
    components: str = "largest"
    split_fractions: tuple = (0.7, 0.1, 0.2)
    split_seed: int = 0
    percentiles: tuple = (0.5, 99.5)


def split_cases(
    cases: Sequence[str], fractions=(0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, list[str]]:
    """Seeded split of case (patient/volume) names: every case in exactly one split.

    Each split gets at least one case when there are at least three.
    """
    cases = sorted(cases)
    n = len(cases)
    if n < 3:
        raise DataError(f"need at least 3 volumes to make train/validation/test splits, found {n}")
    f = np.asarray(fractions, np.float64)
    f = f / f.sum()
    n_val = max(1, int(round(f[1] * n)))
    n_test = max(1, int(round(f[2] * n)))
    n_train = n - n_val - n_test
    if n_train < 1:
        n_train, n_test = 1, n - 1 - n_val
    perm = np.random.default_rng(seed).permutation(n)
    order = [cases[i] for i in perm]
    return {
        "train": sorted(order[:n_train]),
        "validation": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def _slice_volume(image, label, axis, rot90, zooms):
    """Yield (index, image slice, label slice, spacing (row, col))."""
    in_plane = [a for a in range(3) if a != axis]
    sp = (zooms[in_plane[0]], zooms[in_plane[1]])
    if rot90:
        sp = (sp[1], sp[0])
    image = np.ascontiguousarray(np.moveaxis(image, axis, 0))
    label = np.ascontiguousarray(np.moveaxis(label, axis, 0))
    for i in range(image.shape[0]):
        im, lb = image[i], label[i]
        if rot90:
            im, lb = np.rot90(im), np.rot90(lb)
        yield i, im, lb, np.asarray(sp, np.float32)


def _load_pair(image_path, label_path, channel: int):
    image, zooms = readers.read_volume(image_path)
    label, lzooms = readers.read_volume(label_path)
    if image.ndim == 4:
        if not 0 <= channel < image.shape[3]:
            raise DataError(
                f"{image_path}: channel {channel} out of range for a 4-D volume of shape {image.shape}"
            )
        image = image[..., channel]
    elif image.ndim > 4:
        raise DataError(
            f"{image_path}: expected a 3-D (or 4-D multi-channel) volume, got shape {image.shape}"
        )
    if label.ndim == 4 and label.shape[3] == 1:
        label = label[..., 0]
    if label.shape != image.shape[:3]:
        raise DataError(
            f"{label_path}: label volume shape {label.shape} differs from its image "
            f"{image_path} shape {image.shape[:3]}"
        )
    if np.issubdtype(label.dtype, np.floating):
        label = np.rint(label)
    return image, label.astype(np.int64), zooms[:3]


class MedicalVolumes(_Base):
    """2-D slices of 3-D image/label volume pairs (e.g. prostate MR), split by volume."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put pairs of image and label volumes (NIfTI .nii/.nii.gz; .nrrd/.mha/.mhd with SimpleITK)
in the manual directory, either as
  <manual_dir>/imagesTr/<case>.nii.gz  and  <manual_dir>/labelsTr/<case>.nii.gz
(the Medical Segmentation Decathlon layout, e.g. Task05_Prostate), or as
  <manual_dir>/images/<case>.nii.gz    and  <manual_dir>/labels/<case>.nii.gz
Image and label of a case share the file name. Which label values form which class
comes from the builder config (default: class "prostate" = values {1, 2}).
"""
    BUILDER_CONFIGS = [
        VolumeConfig(
            name="prostate", description="whole gland = label values 1 and 2 (Decathlon PZ + TZ)"
        ),
    ]

    def _class_names(self):
        return [name for name, _ in self.builder_config.class_values]

    def _find_pairs(self, root: pathlib.Path) -> dict[str, tuple[pathlib.Path, pathlib.Path]]:
        for im_dir, lb_dir in (("imagesTr", "labelsTr"), ("images", "labels")):  # noqa: B007 (used after the loop)
            if (root / im_dir).is_dir():
                break
        else:
            raise DataError(
                f"{root}: no 'imagesTr/' or 'images/' folder.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        pairs = {}
        for p in sorted((root / im_dir).iterdir()):
            if p.name.startswith("."):
                continue
            case = readers.strip_suffix(p.name, readers.VOLUME_SUFFIXES)
            if case is None:
                continue
            lab = [root / lb_dir / (case + s) for s in readers.VOLUME_SUFFIXES]
            lab = [q for q in lab if q.exists()]
            if not lab:
                raise DataError(f"{p}: no label volume {root / lb_dir / case}.* for this image")
            pairs[case] = (p, lab[0])
        if not pairs:
            raise DataError(
                f"{root / im_dir}: no volumes found.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        return pairs

    def _split_generators(self, dl_manager):
        root = self._manual_dir(dl_manager)
        pairs = self._find_pairs(root)
        cfg = self.builder_config
        split = split_cases(list(pairs), cfg.split_fractions, cfg.split_seed)
        return {s: self._generate_examples(s, [(c, *pairs[c]) for c in split[s]]) for s in SPLITS}

    def _generate_examples(self, split, items):
        cfg = self.builder_config
        stats = ObjectStats()
        for case, image_path, label_path in items:
            image, label, zooms = _load_pair(image_path, label_path, cfg.channel)
            image8 = (
                image
                if image.dtype == np.uint8
                else readers.intensity_to_uint8(image, *cfg.percentiles)
            )
            for i, im, lb, sp in _slice_volume(image8, label, cfg.axis, cfg.rot90, zooms):
                masks, classes, st = readers.objects_from_label_map(
                    lb, cfg.class_values, min_area=cfg.min_area, components=cfg.components
                )
                stats.add(st)
                if len(classes) == 0:
                    continue
                ex_id = f"{case}/{cfg.axis}:{i:04d}"
                yield ex_id, _example(im[..., None], masks, classes, sp, ex_id, case)
        self._record_stats(split, stats)


# --------------------------------------------------------------------------
# REFUGE
# --------------------------------------------------------------------------
@dataclasses.dataclass(kw_only=True)
class RefugeConfig(tfds.core.BuilderConfig):
    """crop_size: side (px) of a square crop centred on the disc; 0 keeps the whole image."""

    crop_size: int = 512
    min_area: int = 10


def _refuge_label(gt: np.ndarray) -> np.ndarray:
    """REFUGE map (0 cup, 128 rim, 255 background) -> 2 = cup, 1 = rim, 0 = background."""
    return np.where(gt < 64, 2, np.where(gt < 192, 1, 0)).astype(np.uint8)


def _crop_square(arr, cy, cx, size):
    """Square crop of side ``size`` centred at (cy, cx), zero padded outside."""
    y0, x0 = int(round(cy)) - size // 2, int(round(cx)) - size // 2
    out = np.zeros((size, size) + arr.shape[2:], arr.dtype)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + size, arr.shape[0]), min(x0 + size, arr.shape[1])
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = arr[sy0:sy1, sx0:sx1]
    return out


class RefugeFundus(_Base):
    """REFUGE fundus photographs: optic disc and optic cup as two classes, official split."""

    CHANNELS = 3
    SPACING_UNIT = "px"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Register at https://refuge.grand-challenge.org and arrange the release as
  <manual_dir>/train/images/**/<name>.jpg        <manual_dir>/train/masks/**/<name>.bmp
  <manual_dir>/validation/images/**/<name>.jpg   <manual_dir>/validation/masks/**/<name>.bmp
  <manual_dir>/test/images/**/<name>.jpg         <manual_dir>/test/masks/**/<name>.bmp
(e.g. train/images <- REFUGE-Training400/Training400 (Glaucoma/ and Non-Glaucoma/ may stay),
train/masks <- Annotation-Training400/Disc_Cup_Masks; validation/images <- REFUGE-Validation400,
validation/masks <- REFUGE-Validation400-GT/Disc_Cup_Masks; test likewise from Test400 and
REFUGE-Test-GT). Masks: 0 = optic cup, 128 = disc rim, 255 = background; matched to images by
file name without extension.
"""
    BUILDER_CONFIGS = [
        RefugeConfig(
            name="disc_crop", description="512 x 512 crops centred on the disc (as in the paper)"
        ),
        RefugeConfig(name="full", description="whole photographs", crop_size=0),
    ]
    CLASS_VALUES = (("optic_disc", (1, 2)), ("optic_cup", (2,)))

    def _class_names(self):
        return [n for n, _ in self.CLASS_VALUES]

    def _split_generators(self, dl_manager):
        root = self._manual_dir(dl_manager)
        out = {}
        for s in SPLITS:
            im_dir, mk_dir = root / s / "images", root / s / "masks"
            if not im_dir.is_dir() or not mk_dir.is_dir():
                raise DataError(
                    f"{root / s}: expected folders images/ and masks/.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
                )
            masks = {}
            for p in sorted(mk_dir.rglob("*")):
                stem = readers.strip_suffix(p.name, readers.IMAGE_SUFFIXES)
                if p.is_file() and stem is not None:
                    masks[stem] = p
            images = [
                p
                for p in sorted(im_dir.rglob("*"))
                if p.is_file() and readers.strip_suffix(p.name, readers.IMAGE_SUFFIXES) is not None
            ]
            if not images:
                raise DataError(f"{im_dir}: no images.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
            pairs = []
            for p in images:
                stem = readers.strip_suffix(p.name, readers.IMAGE_SUFFIXES)
                if stem not in masks:
                    raise DataError(f"{p}: no ground-truth map {mk_dir}/**/{stem}.bmp")
                pairs.append((stem, p, masks[stem]))
            out[s] = self._generate_examples(s, pairs)
        return out

    def _generate_examples(self, split, pairs):
        cfg = self.builder_config
        stats = ObjectStats()
        for stem, image_path, mask_path in pairs:
            image = readers.read_image(image_path, channels=3)
            if image.dtype != np.uint8:
                raise DataError(
                    f"{image_path}: expected an 8-bit RGB photograph, got {image.dtype}"
                )
            gt = readers.read_mask(mask_path)
            if gt.shape != image.shape[:2]:
                raise DataError(
                    f"{mask_path}: mask shape {gt.shape} differs from its image {image_path} {image.shape[:2]}"
                )
            label = _refuge_label(gt)
            if cfg.crop_size:
                disc = label > 0
                if disc.any():
                    ys, xs = np.nonzero(disc)
                    cy, cx = ys.mean(), xs.mean()
                else:
                    cy, cx = image.shape[0] / 2, image.shape[1] / 2
                image = _crop_square(image, cy, cx, cfg.crop_size)
                label = _crop_square(label, cy, cx, cfg.crop_size)
            masks, classes, st = readers.objects_from_label_map(
                label, self.CLASS_VALUES, min_area=cfg.min_area, components="largest"
            )
            stats.add(st)
            if len(classes) == 0:
                continue
            yield stem, _example(image, masks, classes, (1.0, 1.0), stem, stem)
        self._record_stats(split, stats)


# --------------------------------------------------------------------------
# Generic user data (2-D images + label maps)
# --------------------------------------------------------------------------
@dataclasses.dataclass(kw_only=True)
class UserConfig(tfds.core.BuilderConfig):
    """Generic 2-D data: see docs/data.md.

    Attributes:
      class_values: ordered ``((class name, (mask values...)), ...)``; default:
        one class "object" = any non-zero value.
      channels: 1 (grey) or 3 (RGB); images are converted.
      components: "largest" | "all" | "union" per class.
      min_area: objects with fewer pixels are dropped (counted).
      spacing: pixel size (row, col) mm of every image, or None (unknown: distances
        are reported in px); ``spacing.json`` in the manual directory
        ({"<name>": [row, col]}) gives it per image (then in mm).
      split_fractions, split_seed: used when there are no split folders.
    """

    class_values: tuple = (("object", tuple(range(1, 256))),)
    channels: int = 3
    components: str = "largest"
    min_area: int = 10
    spacing: tuple | None = None
    split_fractions: tuple = (0.7, 0.1, 0.2)
    split_seed: int = 0


class UserSegmentation(_Base):
    """Your own 2-D images with masks or label maps of matching names (see docs/data.md)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put images and masks with matching file names (extension may differ) in
  <manual_dir>/{train,validation,test}/images/<name>.(png|jpg|bmp|tif)
  <manual_dir>/{train,validation,test}/masks/<name>.(png|bmp|tif)
or, to have them split 70/10/20 (seeded), in <manual_dir>/images/ and <manual_dir>/masks/.
A mask is a grey label map: 0 = background, other values as declared in the config's
class_values (default: any non-zero value is one object of class "object").
Optional <manual_dir>/spacing.json: {"<name>": [row_mm, col_mm], ...}.
"""
    BUILDER_CONFIGS = [UserConfig(name="default", description="binary masks, RGB images")]

    def _class_names(self):
        return [n for n, _ in self.builder_config.class_values]

    def _channels(self):
        return self.builder_config.channels

    @staticmethod
    def _pairs(im_dir: pathlib.Path, mk_dir: pathlib.Path):
        masks = {}
        for p in sorted(mk_dir.iterdir()):
            stem = readers.strip_suffix(p.name, readers.IMAGE_SUFFIXES)
            if p.is_file() and stem is not None:
                masks[stem] = p
        pairs = []
        for p in sorted(im_dir.iterdir()):
            stem = readers.strip_suffix(p.name, readers.IMAGE_SUFFIXES)
            if not p.is_file() or stem is None:
                continue
            if stem not in masks:
                raise DataError(f"{p}: no mask {mk_dir}/{stem}.* for this image")
            pairs.append((stem, p, masks[stem]))
        return pairs

    def _split_generators(self, dl_manager):
        root = self._manual_dir(dl_manager)
        cfg = self.builder_config
        spacing = {}
        if (root / "spacing.json").exists():
            try:
                spacing = json.loads((root / "spacing.json").read_text())
            except (OSError, ValueError) as e:
                raise DataError(f"{root / 'spacing.json'}: cannot read ({e})") from e
        # Without a physical pixel size distances are in pixels, and say so.
        known = cfg.spacing is not None or bool(spacing)
        self.info.metadata["spacing_unit"] = "mm" if known else "px"
        if all((root / s / "images").is_dir() for s in SPLITS):
            groups = {s: self._pairs(root / s / "images", root / s / "masks") for s in SPLITS}
        elif (root / "images").is_dir() and (root / "masks").is_dir():
            pairs = {
                stem: (stem, i, m) for stem, i, m in self._pairs(root / "images", root / "masks")
            }
            names = split_cases(list(pairs), cfg.split_fractions, cfg.split_seed)
            groups = {s: [pairs[n] for n in names[s]] for s in SPLITS}
        else:
            raise DataError(
                f"{root}: no images/ + masks/ folders.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        return {s: self._generate_examples(s, g, spacing) for s, g in groups.items()}

    def _generate_examples(self, split, pairs, spacing):
        cfg = self.builder_config
        stats = ObjectStats()
        for stem, image_path, mask_path in pairs:
            image = readers.read_image(image_path, channels=cfg.channels)
            if image.dtype != np.uint8:
                image = readers.intensity_to_uint8(image)
            label = readers.read_mask(mask_path)
            if label.shape != image.shape[:2]:
                raise DataError(
                    f"{mask_path}: mask shape {label.shape} differs from its image {image_path} {image.shape[:2]}"
                )
            masks, classes, st = readers.objects_from_label_map(
                label, cfg.class_values, min_area=cfg.min_area, components=cfg.components
            )
            stats.add(st)
            if len(classes) == 0:
                continue
            sp = spacing.get(stem, cfg.spacing if cfg.spacing is not None else (1.0, 1.0))
            yield stem, _example(image, masks, classes, sp, stem, stem)
        self._record_stats(split, stats)


# --------------------------------------------------------------------------
# Colin27 + AAL (Debian mricron-data): a real MR set anyone can install
# --------------------------------------------------------------------------
AAL_DEEP_GREY = (71, 72, 73, 74, 75, 76, 77, 78, 37, 38, 41, 42)
AAL_TEMPLATE_DIR = "/usr/share/mricron/templates"


@dataclasses.dataclass(kw_only=True)
class AalConfig(tfds.core.BuilderConfig):
    """Colin27 T1 + AAL labels as 2-D objects.

    Attributes:
      labels: AAL label numbers used as classes (None = all 116).
      axis: 2 = axial. min_area: px. components: "largest" per label and slice.
      pattern, gap: the slices holding objects, from the lowest to the highest,
        are cut into consecutive slabs ``(split, number of slices)`` taken
        cyclically from ``pattern``; ``gap`` slices are dropped wherever the
        split changes, so no slice of one split is within ``gap`` slices of
        another split's. The default keeps 174 of the 261 deep-grey objects:
        train 98, validation 16, test 60 (slices 46-57 and 76-85 train, 63-70
        test, 91-97 validation).
    """

    labels: tuple | None = AAL_DEEP_GREY
    axis: int = 2
    min_area: int = 100
    components: str = "largest"
    pattern: tuple = (("train", 12), ("test", 8), ("train", 10), ("validation", 7))
    gap: int = 5


def slab_splits(
    indices: Sequence[int], pattern: Sequence[tuple[str, int]], gap: int
) -> dict[int, str]:
    """Assign slice indices to splits by slabs with gaps.

    Walks from ``min(indices)`` to ``max(indices)``: slab ``k`` is
    ``pattern[k % len(pattern)] = (split, length)``; when the next slab's split
    differs, ``gap`` slices are skipped first. Returns ``{index: split}`` for the
    given indices that fall in a slab (the others lie in gaps).
    """
    if not indices:
        return {}
    if any(n < 1 for _, n in pattern) or gap < 0:
        raise ValueError(f"slab lengths must be >= 1 and gap >= 0, got {pattern}, {gap}")
    lo, hi = min(indices), max(indices)
    wanted = set(indices)
    out, z, k = {}, lo, 0
    while z <= hi:
        split, n = pattern[k % len(pattern)]
        out.update({i: split for i in range(z, min(z + n, hi + 1)) if i in wanted})
        z += n
        k += 1
        if pattern[k % len(pattern)][0] != split:
            z += gap
    return out


def read_aal_names(path) -> dict[int, str]:
    names = {}
    try:
        for line in pathlib.Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                names[int(parts[0])] = parts[1]
    except OSError as e:
        raise DataError(f"{path}: cannot read AAL names ({e})") from e
    return names


class Colin27Aal(_Base):
    """Colin27 T1 MR with AAL atlas regions as objects (Debian mricron-data), split by slabs."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Install Debian's mricron-data (apt-get install mricron-data): it provides
{AAL_TEMPLATE_DIR}/ch2.nii.gz, aal.nii.gz and aal.nii.txt, which are used by default.
Elsewhere, copy those three files into the manual directory.
"""
    BUILDER_CONFIGS = [
        AalConfig(
            name="deep_grey",
            description="12 deep grey labels (caudate, putamen, pallidum, thalamus, hippocampus, amygdala)",
        ),
        AalConfig(name="all", description="all 116 AAL regions", labels=None),
    ]

    def _names(self) -> dict[int, str]:
        # Names are part of the metadata; the label file may be absent when the
        # builder is only constructed (the numbers are used then).
        src = self._source_dir(None)
        names = read_aal_names(src / "aal.nii.txt") if src is not None else {}
        labels = self.builder_config.labels or tuple(range(1, 117))
        return {lab: names.get(lab, f"aal_{lab}") for lab in labels}

    def _class_names(self):
        return list(self._names().values())

    def _source_dir(self, dl_manager) -> pathlib.Path | None:
        cands = []
        if dl_manager is not None and dl_manager._manual_dir is not None:  # pylint: disable=protected-access
            cands.append(pathlib.Path(os.fspath(dl_manager._manual_dir)))  # pylint: disable=protected-access
        cands.append(pathlib.Path(AAL_TEMPLATE_DIR))
        for c in cands:
            if (c / "ch2.nii.gz").exists() and (c / "aal.nii.gz").exists():
                return c
        return None

    def _split_generators(self, dl_manager):
        src = self._source_dir(dl_manager)
        if src is None:
            raise DataError(f"Colin27/AAL files not found.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        cfg = self.builder_config
        image, label, zooms = _load_pair(src / "ch2.nii.gz", src / "aal.nii.gz", 0)
        image8 = image if image.dtype == np.uint8 else readers.intensity_to_uint8(image)
        class_values = [(name, (lab,)) for lab, name in self._names().items()]
        per_slice, stats_all = {}, ObjectStats()
        for i, im, lb, sp in _slice_volume(image8, label, cfg.axis, True, zooms):
            masks, classes, st = readers.objects_from_label_map(
                lb, class_values, min_area=cfg.min_area, components=cfg.components
            )
            if len(classes):
                per_slice[i] = (im, masks, classes, sp, st)
            else:
                stats_all.add(st)
        assign = slab_splits(sorted(per_slice), cfg.pattern, cfg.gap)
        groups = {s: [i for i in sorted(per_slice) if assign.get(i) == s] for s in SPLITS}
        return {
            s: self._generate_examples(s, [(i, per_slice[i]) for i in g])
            for s, g in groups.items()
            if g
        }

    def _generate_examples(self, split, items):
        stats = ObjectStats()
        for i, (im, masks, classes, sp, st) in items:
            stats.add(st)
            ex_id = f"colin27/{self.builder_config.axis}:{i:04d}"
            yield ex_id, _example(im[..., None], masks, classes, sp, ex_id, "colin27")
        self._record_stats(split, stats)


BUILDERS = {
    "synthetic_prostate": SyntheticProstate,
    "synthetic_fundus": SyntheticFundus,
    "medical_volumes": MedicalVolumes,
    "refuge_fundus": RefugeFundus,
    "user_segmentation": UserSegmentation,
    "colin27_aal": Colin27Aal,
}


# --------------------------------------------------------------------------
# Domain-randomised set (procedural shapes + mricron-data atlases, SynthSeg-style)
# --------------------------------------------------------------------------
# Imported here rather than at the top so the section can be read (and removed) on its own.
from dlset_jax.data import domain_random  # noqa: E402


@dataclasses.dataclass(kw_only=True)
class DomainRandomConfig(SyntheticConfig):
    """:class:`SyntheticConfig` plus ``atlases``: use the mricron-data atlases and T1
    images when installed (False: procedural label maps only, for the ablation)."""

    atlases: bool = True


class DomainRandom(_SyntheticBase):
    """Domain-randomised images (random intensities on procedural and atlas label maps), generated locally.

    Grey examples are stored as 3 identical channels. ``case`` names the label-map
    source (``procedural``, ``atlas:<name>``, ``real:<name>``);
    ``metadata["atlases"]`` lists the atlases that were installed and used.
    """

    # A new version whenever `domain_random.generate` draws different images, so that a
    # data set built by an older generator is rebuilt rather than silently reused.
    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "Procedural, atlas and real sources.",
        "1.1.0": "Ultrasound-like speckle in a quarter of the grey synthetic images.",
        "1.2.0": "Procedural objects made of parts (inner regions of their own intensity).",
    }

    BUILDER_CONFIGS = [
        DomainRandomConfig(
            name="default",
            description="2000/200/400 examples, seed 0, atlases when installed",
            num_train=2000,
            num_validation=200,
            num_test=400,
        ),
        DomainRandomConfig(
            name="procedural",
            description="2000/200/400 examples, seed 0, procedural label maps only",
            num_train=2000,
            num_validation=200,
            num_test=400,
            atlases=False,
        ),
        DomainRandomConfig(
            name="small",
            description="64/16/16 examples, seed 0",
            num_train=64,
            num_validation=16,
            num_test=16,
        ),
        DomainRandomConfig(
            name="tiny",
            description="6/2/2 examples (tests)",
            num_train=6,
            num_validation=2,
            num_test=2,
        ),
    ]
    CHANNELS = 3
    CLASS_NAMES = domain_random.CLASSES

    def _split_generators(self, dl_manager):
        used = list(domain_random.available_atlases()) if self.builder_config.atlases else []
        if self.builder_config.atlases and not used:
            log.warning(
                "%s: mricron-data not installed (%s): procedural label maps only",
                self.name,
                domain_random.TEMPLATE_DIR,
            )
        # The content depends on what is installed; record it with the data set.
        self.info.metadata["atlases"] = used
        return super()._split_generators(dl_manager)

    def _generate_examples(self, split: str, n: int):
        cfg = self.builder_config
        stats = ObjectStats()
        for i in range(n):
            ex = domain_random.generate(cfg.seed, split, i, atlases=cfg.atlases)
            stats.kept += len(ex["classes"])
            meta = ex["meta"]
            case = meta["source"] + (f":{meta['atlas']['name']}" if meta["atlas"] else "")
            ex_id = f"{split}_{i:05d}"
            yield (
                ex_id,
                _example(ex["image"], ex["masks"], ex["classes"], ex["spacing"], ex_id, case),
            )
        self._record_stats(split, stats)


BUILDERS["domain_random"] = DomainRandom
