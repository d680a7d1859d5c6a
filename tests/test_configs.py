"""Every shipped config loads and validates; bad values are named."""

import importlib.util
import pathlib

import pytest
from conftest import REPO

from dlset_jax import config as config_lib

CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py"))


def load(path: pathlib.Path, arg=None):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


PAPER = ("paper_prostate", "paper_refuge")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_validates(path):
    c = load(path)
    if path.stem in PAPER:  # frozen backbone BN: only with ImageNet weights
        c.model.pretrained = "resnet101.pth"
    config_lib.validate(c)


@pytest.mark.parametrize("name", PAPER)
def test_frozen_bn_without_pretrained_weights_is_refused(name):
    c = load(REPO / "configs" / f"{name}.py")
    assert c.model.frozen_backbone_bn and not c.model.pretrained
    with pytest.raises(config_lib.ConfigError, match="frozen_backbone_bn=True needs pretrained"):
        config_lib.validate(c)
    c.model.frozen_backbone_bn = False
    config_lib.validate(c)


def test_frozen_bn_has_one_default():
    """The schema's default is the one a model built from it gets (no other defaults)."""
    from dlset_jax import models

    c = config_lib.base_config()
    assert models.create_model(c.model).frozen_backbone_bn is c.model.frozen_backbone_bn is False
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(models.DeepLevelSet)}
    assert fields["frozen_backbone_bn"].default is dataclasses.MISSING


@pytest.mark.parametrize("variant", ["baseline", "cm", "bd", "cm_bd"])
def test_ablation_variants(variant):
    c = load(REPO / "configs" / "ablation.py", variant)
    config_lib.validate(c)
    assert (c.data.guidance == "heatmap+cm") == ("cm" in variant)
    assert (c.loss.boundary == "eq8") == ("bd" in variant)


def test_paper_configs_follow_the_paper():
    for name in ("paper_prostate", "paper_refuge"):
        c = load(REPO / "configs" / f"{name}.py")
        assert (
            c.model.depth,
            c.model.output_stride,
            c.train.batch_size,
            c.train.num_epochs,
            c.levelset.steps,
        ) == (101, 8, 10, 100, 5)
        assert (c.optim.learning_rate, c.optim.decay_factor, c.optim.decay_every_epochs) == (
            3e-4,
            0.3,
            10,
        )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("optim.learning_rate", -1.0, "optim.learning_rate must be > 0"),
        ("data.resolution", 100, "divisible by model.output_stride"),
        ("loss.boundary", "dice", "loss.boundary must be one of"),
        ("data.guidance", "cm", "data.guidance must be one of"),
        ("train.batch_size", 3, "divisible by the number of devices"),
        ("levelset.init_shift_per", "step", "levelset.init_shift_per must be one of"),
        ("optim.schedule", "linear", "optim.schedule must be one of"),
        ("data.relax_fraction", 2.0, "data.relax_fraction must be in"),
        ("clicks.honour_margin", -1.0, "clicks.honour_margin must be >= 0"),
        ("loss.dice_weight", -1.0, "loss.dice_weight must be >= 0"),
        ("data.contrast_floor", -1.0, "data.contrast_floor must be in"),
        ("data.contrast_floor", 300.0, "data.contrast_floor must be in"),
        ("data.extra_share", 1.0, "data.extra_share must be in"),
        ("data.extra_share", 0.0, "name the extra sets and give them a share > 0, or neither"),
        ("data.extra_sets", ("domain_random",), "must not repeat data.name"),
    ],
)
def test_bad_values_are_named(field, value, message):
    c = load(REPO / "configs" / "default.py")
    section, key = field.split(".")
    c[section][key] = value
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(c, device_count=2)


def test_retired_field_of_a_saved_config_is_dropped_new_fields_get_defaults():
    saved = config_lib.base_config().to_dict()
    saved["levelset"]["impl"] = "auto"  # written by runs before the evolution kernel went
    saved["eval"]["checkpoint_step"] = -1  # written by runs before they went (never read)
    saved["train"]["num_log_images"] = 4
    del saved["data"]["relax_fraction"]  # fields added since
    del saved["data"]["contrast_floor"]
    c = config_lib.from_saved(saved)
    config_lib.validate(c)
    assert "impl" not in c.levelset and c.data.relax_fraction == 0.0
    assert "checkpoint_step" not in c.eval and "num_log_images" not in c.train
    assert c.data.contrast_floor == 0.0  # checkpoints trained before it see images as then


def test_unknown_field_is_named():
    c = load(REPO / "configs" / "default.py")
    c.train.learning_rate = 0.1  # belongs to optim
    with pytest.raises(config_lib.ConfigError, match="unknown config field.*train.learning_rate"):
        config_lib.validate(c)
