"""The configuration schema: every field with its default, and its validation.

`configs/*.py` start from `base_config()` and override what they need; `validate`
runs before any compute, so a typo or a bad value stops the run with one clear line
instead of a traceback minutes later (and `define_config_flag` / `flags_parser` give
the entry points one line for a `--config.a.b=...` override of a field the schema
lacks). Each parameter has one home here (e.g. `dt_max` lives in `data.dt_max` and is
passed to both the SDT target and the evolution).
"""

from __future__ import annotations

import json
import sys

import ml_collections

BOUNDARY_LOSSES = ("eq8", "active_contour", "none")
GUIDANCE_MODES = ("heatmap", "heatmap+cm")
CM_VARIANTS = ("paper", "authors")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("step", "cosine")
SHIFT_MODES = ("example", "batch")
DEPTHS = (18, 34, 50, 101)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "synthetic_prostate"  # a name known to dlset_jax.data
    c.data.builder_config = ""  # TFDS builder config ("" = the builder's default)
    c.data.data_dir = "data/tfds"  # where TFDS data sets are built / read
    c.data.manual_dir = ""  # user-supplied raw data (REFUGE, volumes, own data)
    c.data.build = True  # build the data set if it is missing
    c.data.train_split = "train"
    # More built-in data sets trained on beside data.name (their train_split), each an
    # equal part of extra_share of the training objects (pipeline.mix_objects).
    c.data.extra_sets = ()
    c.data.extra_share = 0.0
    c.data.eval_split = "validation"
    c.data.test_split = "test"
    c.data.resolution = 128  # crop size fed to the network (px)
    # Crop margin around the clicks: max(relax px, relax_fraction * the box's longer
    # side), so that with a fraction the object fills the same share of every crop.
    c.data.relax = 10
    c.data.relax_fraction = 0.0  # 0 = the authors' fixed margin
    # Training jitter of the clicks, up to max(pert px, pert_fraction * longer side):
    # people click small objects within a pixel or two, large ones less precisely.
    c.data.pert = 5
    c.data.pert_fraction = 0.0  # 0 = the authors' fixed jitter
    # Grey levels: a crop whose 1-99 % intensity range spans fewer than contrast_floor
    # levels is stretched about its middle to that many (targets.stretch_contrast), so a
    # CT soft-tissue organ or a dim frame is seen at a contrast the model knows.
    c.data.contrast_floor = 0.0  # 0 = intensities as the image gives them (the authors')
    c.data.dt_max = 30.0  # SDT truncation, also the evolution's Dirac scale
    c.data.guidance = "heatmap+cm"  # "heatmap" = DELSE baseline, "heatmap+cm" = paper
    c.data.cm_variant = "paper"  # confidence map: "paper" (eq. 3) or "authors"
    c.data.sigma = 10.0  # heatmap Gaussian width (px, FWHM as DEXTR)
    # The images the model is trained on, part of its contract with users (see
    # segmenter.prepare_image): ("grey",), ("rgb",) or ("grey", "rgb").
    c.data.image_kinds = ("grey",)
    c.data.augment = True  # flip / scale / rotation in training
    c.data.augment_scale = (0.75, 1.25)  # random scale range
    c.data.augment_rotation = 20.0  # max rotation (degrees)
    c.data.augment_flip = True  # random horizontal flip
    c.data.num_workers = 0  # grain worker processes

    c.model = ml_collections.ConfigDict()
    c.model.depth = 101
    c.model.width = 64  # base width (64 = the standard ResNet)
    # RGB (grey replicated) + guidance (+ positive and negative click maps with clicks)
    c.model.in_channels = 4
    c.model.output_stride = 8
    c.model.frozen_backbone_bn = False  # the authors froze it (with ImageNet weights)
    c.model.compute_dtype = "float32"  # "bfloat16" for mixed precision on GPU/TPU
    c.model.fusion_channels = 128
    c.model.fusion_align_corners = False  # resize of the skip features to stride 2
    c.model.psp_channels = 128
    c.model.psp_bins = (1, 2, 3, 6)  # pyramid pooling grid sizes
    c.model.pretrained = ""  # torchvision ResNet weights (.pth/.npz/.safetensors)

    # Corrective clicks after the four extreme points (dlset_jax/corrections.py).
    c.clicks = ml_collections.ConfigDict()
    c.clicks.enabled = False  # the network takes positive / negative click maps
    c.clicks.max_clicks = 24  # click slots per object (one compiled program for all)
    c.clicks.sigma = 6.0  # FWHM of a click's Gaussian disc (crop px)
    # Training with simulated corrections (iterative, as RITM): this share of batches
    # gets 1..train_rounds rounds of "predict, click the deepest error".
    c.clicks.train_prob = 0.6
    c.clicks.train_rounds = 3
    # The level set is shifted by a Gaussian bump of this standard deviation (crop px)
    # at each click, so that the mask agrees with every click and the contour moves
    # along the edge beside it (corrections.honour_clicks); 0 = the network's answer
    # as it is (runs before 2026-12-05). The clicked point ends honour_margin px inside
    # (positive) or outside (negative).
    c.clicks.honour_width = 0.0
    c.clicks.honour_margin = 3.0
    # The four extreme points lie on the object: the same bump (standard deviation
    # points_width crop px, 0 = off) lowers the level set at each of them until it is
    # points_margin px inside, at inference (prediction, evaluation), not in training.
    # Needs no click channels.
    c.clicks.points_width = 0.0
    c.clicks.points_margin = 0.5

    c.levelset = ml_collections.ConfigDict()
    c.levelset.steps = 5  # T, train and test (paper)
    c.levelset.timestep = 5.0
    c.levelset.dirac_ratio = 0.3
    c.levelset.init_shift = 5.0  # training shift of phi0, uniform in [-s, s] px
    # "example": one shift per crop; "batch": one per batch (the authors' code).
    c.levelset.init_shift_per = "example"
    c.levelset.epsilon = -1.0  # Heaviside width (negative: H -> 1 inside)
    c.levelset.corners = "full"  # Neumann corners; "authors" = their quirk
    c.levelset.threshold = 0.0  # mask = phi <= threshold

    c.loss = ml_collections.ConfigDict()
    # Eq. 6 weighs object and background pixels by the other class's share (the
    # paper); False = plain BCE, which does not push the contour outwards.
    c.loss.balanced = True
    # weight of a soft Dice term on H(phi_T) (per example, 0..1) beside the BCE; 0 = the
    # paper's loss only
    c.loss.dice_weight = 0.0
    c.loss.boundary = "eq8"  # "eq8" (paper), "active_contour" (authors' code), "none"
    # eq. 8 is normalised per pixel ("mean"); 0.01 * 256**2 reproduces the authors'
    # weight 0.01 on pixel sums at their 256x256 crops, independent of resolution.
    c.loss.boundary_reduction = "mean"
    c.loss.boundary_weight = 655.36
    c.loss.active_contour_weight = 0.01  # the authors' factor on their AC loss
    c.loss.warmup_epochs = 5.0  # DELSE warm-up: SDT + motion losses, evolve from SDT

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"
    c.optim.learning_rate = 3e-4
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-6
    c.optim.head_lr_multiplier = 10.0
    # "step": x decay_factor every decay_every_epochs (the authors'); "cosine": linear
    # warm-up over warmup_fraction of the run, then cosine down to end_factor x the
    # rate at the last step (a schedule defined over the run's length).
    c.optim.schedule = "step"
    c.optim.decay_factor = 0.3
    c.optim.decay_every_epochs = 10
    c.optim.warmup_fraction = 0.0
    c.optim.end_factor = 0.01
    c.optim.clip_norm = 10.0

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 10  # global batch (all devices, all hosts)
    c.train.num_epochs = 100
    c.train.num_steps = -1  # > 0 overrides num_epochs
    c.train.log_every = 50
    c.train.eval_every = 1000  # steps; 0 = only at the end
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    # A workdir whose latest checkpoint initialises a fresh run (fine-tuning): its
    # parameters and BatchNorm statistics, the input convolution widened with zero
    # weights for input channels it lacks (e.g. click maps); not its optimiser or step.
    c.train.init_from = ""

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 16
    c.eval.max_objects = -1  # > 0 evaluates only the first N (periodic validation)
    c.eval.sweep_thresholds = False  # sweep the mask threshold on the validation split
    c.eval.sweep_range = (-6.0, 4.0, 1.0)
    c.eval.num_overlays = 8
    # After training, also segment the Colin27 + AAL real-MR test objects through the
    # Segmenter (where Debian's mricron-data is installed; see real_benchmark.py).
    c.eval.real_benchmark = False
    # After training, also score the held-out real images of other modalities found in
    # this directory (scripts/get_heldout_data.sh; see heldout.py); "" or absent: none.
    c.eval.heldout_dir = ""

    c.distributed = ml_collections.ConfigDict()
    c.distributed.initialize = False  # call jax.distributed.initialize() (multi-host)
    c.distributed.coordinator_address = ""  # empty: auto-detect (Slurm, TPU, ...)
    c.distributed.num_processes = -1
    c.distributed.process_id = -1
    c.distributed.cpu_collectives = ""  # "gloo" for CPU multi-process runs
    return c


def paper_training(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The paper's model and schedule (section 4.2) with the authors' optimiser.

    ResNet-101 at output stride 8 with frozen backbone BatchNorm (as the authors, with
    ImageNet weights), 256x256 crops, batch 10, 100 epochs, SGD (momentum 0.9, weight
    decay 1e-6) at 3e-4 decayed by 0.3 every 10 epochs, heads at 10x, clipping at 10,
    T = 5; the mask threshold is swept on the validation split as the authors did.
    Returns `c`, changed in place.
    """
    c.data.resolution = 256
    c.model.update(depth=101, output_stride=8, frozen_backbone_bn=True)
    c.optim.name = "sgd"
    c.train.update(batch_size=10, num_epochs=100, eval_every=2000, checkpoint_every=1000)
    c.eval.sweep_thresholds = True
    return c


def cpu_sized(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Model, optimiser and schedule sized for a 2-core CPU (the built-in data sets).

    ResNet-18 at half width, output stride 16, 64-channel heads on 128x128 crops, Adam
    at 1e-3 with a cosine schedule over the whole run: a model that trains to a useful
    accuracy in minutes. Returns `c`, changed in place.
    """
    c.data.resolution = 128
    # Stride 16 keeps the last stage at 8x8 instead of 16x16: about 30% less compute
    # for a 128-px crop; the heads still work at stride 2 through the skip fusion.
    c.model.update(depth=18, width=32, fusion_channels=64, psp_channels=64, output_stride=16)
    c.optim.update(name="adam", learning_rate=1e-3, head_lr_multiplier=1.0)
    c.optim.update(schedule="cosine", warmup_fraction=0.03)
    c.loss.warmup_epochs = 2.0
    c.train.update(batch_size=8, num_epochs=15, log_every=10, eval_every=0, checkpoint_every=50)
    c.eval.batch_size = 16
    return c


class ConfigError(ValueError):
    """A configuration value that cannot work; raised before any compute."""


# Fields that configs saved by earlier versions may hold and that no longer exist.
# eval.checkpoint_step and train.num_log_images were never read (eval.py / predict.py
# --step choose the checkpoint; the overlays logged are eval.num_overlays).
RETIRED_FIELDS = ("levelset.impl", "eval.checkpoint_step", "train.num_log_images")


def from_saved(saved: dict) -> ml_collections.ConfigDict:
    """A config saved with a checkpoint, completed with today's schema.

    Fields added to the schema since the run was saved take their defaults (each
    chosen so that it reproduces the earlier behaviour); retired fields are dropped.
    Unknown fields are kept, so that `validate` names them.
    """
    saved = json.loads(json.dumps(saved))  # a deep copy of plain values
    for path in RETIRED_FIELDS:
        *parents, leaf = path.split(".")
        node = saved
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)

    def merge(base, new):
        for k, v in new.items():
            if isinstance(v, dict) and isinstance(base.get(k), dict):
                merge(base[k], v)
            else:
                base[k] = v
        return base

    return ml_collections.ConfigDict(merge(base_config().to_dict(), saved))


def _unknown_fields(config, schema, prefix=""):
    for key in config.keys():
        path = f"{prefix}{key}"
        if key not in schema:
            yield path
        elif isinstance(config[key], ml_collections.ConfigDict):
            if not isinstance(schema[key], ml_collections.ConfigDict):
                yield path
            else:
                yield from _unknown_fields(config[key], schema[key], path + ".")


def validate(
    config: ml_collections.ConfigDict, *, device_count: int = 1, process_count: int = 1
) -> None:
    """Raises ConfigError naming the first problem found."""
    unknown = list(_unknown_fields(config, base_config()))
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")

    def need(cond, msg):
        if not cond:
            raise ConfigError(msg)

    d, m, ls, lo, o, t, e = (
        config.data,
        config.model,
        config.levelset,
        config.loss,
        config.optim,
        config.train,
        config.eval,
    )
    need(m.depth in DEPTHS, f"model.depth must be one of {DEPTHS}, got {m.depth}")
    need(m.output_stride in (8, 16), f"model.output_stride must be 8 or 16, got {m.output_stride}")
    need(m.width >= 1, f"model.width must be >= 1, got {m.width}")
    k = config.clicks
    want_in = 4 + (2 if k.enabled else 0)
    need(
        m.in_channels == want_in,
        f"model.in_channels must be {want_in} (RGB + guidance"
        + (" + positive and negative click maps" if k.enabled else "")
        + f" with clicks.enabled={k.enabled}), got {m.in_channels}",
    )
    need(k.max_clicks >= 1, f"clicks.max_clicks must be >= 1, got {k.max_clicks}")
    need(k.sigma > 0, f"clicks.sigma must be > 0, got {k.sigma}")
    need(k.honour_width >= 0, f"clicks.honour_width must be >= 0, got {k.honour_width}")
    need(k.honour_margin >= 0, f"clicks.honour_margin must be >= 0, got {k.honour_margin}")
    need(k.points_width >= 0, f"clicks.points_width must be >= 0, got {k.points_width}")
    need(k.points_margin >= 0, f"clicks.points_margin must be >= 0, got {k.points_margin}")
    need(0 <= k.train_prob <= 1, f"clicks.train_prob must be in [0, 1], got {k.train_prob}")
    need(
        0 <= k.train_rounds <= k.max_clicks,
        f"clicks.train_rounds must be in [0, clicks.max_clicks], got {k.train_rounds}",
    )
    need(
        len(m.psp_bins) >= 1 and all(int(b) >= 1 for b in m.psp_bins),
        f"model.psp_bins must be positive grid sizes, got {tuple(m.psp_bins)}",
    )
    need(
        not (m.frozen_backbone_bn and not m.pretrained),
        "model.frozen_backbone_bn=True needs pretrained backbone weights: frozen BatchNorm "
        "of a randomly initialised ResNet keeps its activations unnormalised (their std "
        "grows to the hundreds by stage 4). Give --config.model.pretrained=<torchvision "
        "ResNet .pth/.npz/.safetensors>, or set --config.model.frozen_backbone_bn=false",
    )
    need(
        m.compute_dtype in ("float32", "bfloat16"),
        f"model.compute_dtype must be 'float32' or 'bfloat16', got {m.compute_dtype!r}",
    )
    need(
        d.resolution >= 16 and d.resolution % m.output_stride == 0,
        f"data.resolution ({d.resolution}) must be >= 16 and divisible by "
        f"model.output_stride ({m.output_stride})",
    )
    need(
        d.guidance in GUIDANCE_MODES,
        f"data.guidance must be one of {GUIDANCE_MODES}, got {d.guidance!r}",
    )
    need(
        d.cm_variant in CM_VARIANTS,
        f"data.cm_variant must be one of {CM_VARIANTS}, got {d.cm_variant!r}",
    )
    need(d.relax >= 0, f"data.relax must be >= 0, got {d.relax}")
    need(d.pert >= 0, f"data.pert must be >= 0, got {d.pert}")
    need(
        len(d.image_kinds) >= 1 and set(d.image_kinds) <= {"grey", "rgb"},
        f"data.image_kinds must name 'grey' and/or 'rgb', got {tuple(d.image_kinds)}",
    )
    for name in ("relax_fraction", "pert_fraction"):
        need(0 <= d[name] <= 1, f"data.{name} must be in [0, 1], got {d[name]}")
    need(0 <= d.extra_share < 1, f"data.extra_share must be in [0, 1), got {d.extra_share}")
    need(
        bool(d.extra_sets) == (d.extra_share > 0),
        f"data.extra_sets={tuple(d.extra_sets)} and data.extra_share={d.extra_share}: name "
        "the extra sets and give them a share > 0, or neither",
    )
    need(
        d.name not in tuple(d.extra_sets),
        f"data.extra_sets must not repeat data.name ({d.name!r})",
    )
    lo_s, hi_s = d.augment_scale
    need(
        0 < lo_s <= hi_s,
        f"data.augment_scale must be (low, high), 0 < low <= high, got {tuple(d.augment_scale)}",
    )
    need(d.augment_rotation >= 0, f"data.augment_rotation must be >= 0, got {d.augment_rotation}")
    need(
        0 <= d.contrast_floor <= 255,
        f"data.contrast_floor must be in [0, 255] grey levels, got {d.contrast_floor}",
    )
    need(d.dt_max > 0, f"data.dt_max must be > 0, got {d.dt_max}")
    need(d.sigma > 0, f"data.sigma must be > 0, got {d.sigma}")
    need(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")
    need(ls.steps >= 0, f"levelset.steps must be >= 0, got {ls.steps}")
    need(ls.timestep > 0, f"levelset.timestep must be > 0, got {ls.timestep}")
    need(0 < ls.dirac_ratio <= 1, f"levelset.dirac_ratio must be in (0, 1], got {ls.dirac_ratio}")
    need(ls.init_shift >= 0, f"levelset.init_shift must be >= 0, got {ls.init_shift}")
    need(ls.epsilon != 0, "levelset.epsilon must be non-zero")
    need(
        ls.init_shift_per in SHIFT_MODES,
        f"levelset.init_shift_per must be one of {SHIFT_MODES}, got {ls.init_shift_per!r}",
    )
    need(
        ls.corners in ("full", "authors"),
        f"levelset.corners must be 'full' or 'authors', got {ls.corners!r}",
    )
    need(
        lo.boundary in BOUNDARY_LOSSES,
        f"loss.boundary must be one of {BOUNDARY_LOSSES}, got {lo.boundary!r}",
    )
    need(
        lo.boundary_reduction in ("sum", "mean"),
        f"loss.boundary_reduction must be 'sum' or 'mean', got {lo.boundary_reduction!r}",
    )
    need(lo.boundary_weight >= 0, f"loss.boundary_weight must be >= 0, got {lo.boundary_weight}")
    need(lo.dice_weight >= 0, f"loss.dice_weight must be >= 0, got {lo.dice_weight}")
    need(lo.warmup_epochs >= 0, f"loss.warmup_epochs must be >= 0, got {lo.warmup_epochs}")
    need(o.name in OPTIMIZERS, f"optim.name must be one of {OPTIMIZERS}, got {o.name!r}")
    need(o.learning_rate > 0, f"optim.learning_rate must be > 0, got {o.learning_rate}")
    need(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1), got {o.momentum}")
    need(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    need(o.head_lr_multiplier > 0, "optim.head_lr_multiplier must be > 0")
    need(0 < o.decay_factor <= 1, f"optim.decay_factor must be in (0, 1], got {o.decay_factor}")
    need(o.decay_every_epochs >= 1, "optim.decay_every_epochs must be >= 1")
    need(
        o.schedule in SCHEDULES,
        f"optim.schedule must be one of {SCHEDULES}, got {o.schedule!r}",
    )
    need(
        0 <= o.warmup_fraction < 1,
        f"optim.warmup_fraction must be in [0, 1), got {o.warmup_fraction}",
    )
    need(0 <= o.end_factor <= 1, f"optim.end_factor must be in [0, 1], got {o.end_factor}")
    need(o.clip_norm > 0, f"optim.clip_norm must be > 0, got {o.clip_norm}")
    need(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    need(
        t.batch_size % device_count == 0,
        f"train.batch_size ({t.batch_size}) must be divisible by the number of "
        f"devices ({device_count})",
    )
    need(
        t.batch_size % process_count == 0,
        f"train.batch_size ({t.batch_size}) must be divisible by the number of "
        f"processes ({process_count})",
    )
    need(t.num_epochs >= 1 or t.num_steps > 0, "set train.num_epochs >= 1 or train.num_steps > 0")
    for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
        need(t[name] >= 1, f"train.{name} must be >= 1, got {t[name]}")
    need(t.eval_every >= 0, f"train.eval_every must be >= 0, got {t.eval_every}")
    need(
        e.batch_size >= 1 and e.batch_size % device_count == 0,
        f"eval.batch_size ({e.batch_size}) must be >= 1 and divisible by the number "
        f"of devices ({device_count})",
    )
    lo_, hi_, step_ = e.sweep_range
    need(
        step_ > 0 and hi_ >= lo_,
        f"eval.sweep_range must be (low, high, step>0), got {tuple(e.sweep_range)}",
    )


def _no_such_field(prog: str, error: Exception):
    """One line (and exit status 2) for a `--config.a.b=...` override of a field the
    schema lacks, where ml_collections answers with a traceback."""
    while error.args and isinstance(error.args[0], BaseException):  # AttributeError(KeyError)
        error = error.args[0]
    text = str(error.args[0] if error.args else error)
    key, _, hint = text.partition("\n")
    key = key.strip("\"'")
    names = [a.split("=")[0] for a in sys.argv[1:] if a.startswith("--config.")]
    bad = [n for n in names if key in n.split(".")] or [key]
    hint = f" ({hint.strip()})" if hint.strip() else ""
    print(
        f"{prog}: error: {', '.join(bad)}: no such config field{hint}; the schema is "
        "dlset_jax/config.py",
        file=sys.stderr,
    )
    raise SystemExit(2) from None


def define_config_flag(prog: str, default: str, help_text: str, **kwargs):
    """`--config` (a get_config() file) with its `--config.a.b=value` overrides, for the
    entry points (with `flags_parser`: ml_collections applies the overrides where the
    flag is defined or where the command line is parsed)."""
    from ml_collections import config_flags

    try:
        return config_flags.DEFINE_config_file("config", default, help_text, **kwargs)
    except (AttributeError, KeyError) as e:
        _no_such_field(prog, e)


def flags_parser(prog: str):
    """absl's command-line parser for `app.run(main, flags_parser=...)`, with overrides
    of unknown config fields as one line instead of a traceback."""
    from absl import app

    def parse(argv):
        try:
            return app.parse_flags_with_usage(argv)
        except (AttributeError, KeyError) as e:
            _no_such_field(prog, e)

    return parse
