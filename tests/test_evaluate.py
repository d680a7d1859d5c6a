"""Scoring in the image (`dlset_jax.evaluate`): an oracle, the threshold sweep, overrides.

The oracle replaces the network + evolution by the crop's own SDT target: pasted back
into the image and thresholded at 0 it must give back the ground truth (DSC ~ 1), so
the crop / paste-back geometry and the scoring are right independently of any model.
"""

import json
import sys

import numpy as np
import pytest
from conftest import REPO, override

from dlset_jax import config as config_lib
from dlset_jax import evaluate, models


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    sys.path.insert(0, str(REPO / "configs"))
    import tiny

    c = tiny.get_config()
    c.data.builder_config = "small"
    c.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
    c.data.resolution = 64
    c.eval.batch_size = 8
    return c


def edge_sdt(mask):
    """Signed distance whose zero lies on the pixel edges of the mask (not on the
    centres of its contour pixels, as the SDT target's): `(B, R, R, 1)`."""
    from scipy import ndimage

    out = []
    for m in np.asarray(mask)[..., 0] > 0.5:
        d_in, d_out = ndimage.distance_transform_edt(m), ndimage.distance_transform_edt(~m)
        out.append(np.where(m, 0.5 - d_in, d_out - 0.5))
    return np.stack(out)[..., None].astype(np.float32)


def test_oracle_level_set_scores_dsc_one(small_config):
    c = small_config
    res = evaluate.run_evaluation(
        c, None, split="test", model=None, predict=lambda batch: edge_sdt(batch["mask"])
    )
    dsc = np.array([r["dsc"] for r in res["records"]])
    assert len(dsc) == 16  # every test object of synthetic_prostate/small
    # resampling the crop's SDT back to the image moves the contour by under a pixel
    assert dsc.mean() > 0.97 and dsc.min() > 0.93, dsc
    base = np.array([r["baseline_dsc"] for r in res["records"]])
    assert (dsc > base).all()
    rvd = np.array([r["rvd"] for r in res["records"]])
    assert abs(rvd.mean()) < 3.0, rvd  # percent: no size bias in the geometry itself
    assert res["unit"] == "mm" and "HD (mm)" in res["table"]
    # The SDT target's zero lies on the contour pixels' centres, half a crop pixel
    # inside the edge: pasted back it shrinks the object a little (downsampled crops).
    sdt = evaluate.run_evaluation(c, None, split="test", model=None, predict=lambda b: b["sdt"])
    rvd_sdt = np.mean([r["rvd"] for r in sdt["records"]])
    assert -8.0 < rvd_sdt < rvd.mean()


def test_sweep_threshold_finds_the_shift(small_config, tmp_path):
    """An oracle shrunk by 2 px (SDT + 2) is best thresholded at +2."""
    c = override(config_lib.base_config(), **{"eval.sweep_range": (-4.0, 4.0, 1.0)})
    c.data = small_config.data
    c.eval.batch_size = 8
    best = evaluate.sweep_threshold(
        c, None, model=None, workdir=str(tmp_path), predict=lambda b: b["sdt"] + 2.0
    )
    assert best == 2.0
    saved = json.loads((tmp_path / "eval" / "threshold.json").read_text())
    assert saved["chosen"] == 2.0 and saved["mean_dsc"]["2.0"] > saved["mean_dsc"]["0.0"]


def test_overrides_apply_only_explicit_fields_and_refuse_architecture():
    saved = config_lib.base_config()
    saved.data.guidance = "heatmap"  # e.g. the ablation baseline
    got = evaluate.apply_overrides(saved, {"data.data_dir": "/elsewhere", "eval.batch_size": 4})
    assert got.data.data_dir == "/elsewhere" and got.eval.batch_size == 4
    assert got.data.guidance == "heatmap" and saved.data.data_dir == "data/tfds"
    for key, value in (
        ("data.guidance", "heatmap+cm"),
        ("data.resolution", 64),
        ("data.relax", 20),
        ("model.depth", 50),
        ("model.width", 8),
    ):
        with pytest.raises(config_lib.ConfigError, match=f"--config.{key} cannot be overridden"):
            evaluate.apply_overrides(saved, {key: value})
    with pytest.raises(config_lib.ConfigError, match="unknown config field"):
        evaluate.apply_overrides(saved, {"data.nonsense": 1})


def test_report_table_names_the_data_sets_distance_unit():
    recs = [{"dsc": 0.9, "hd": 2.0, "hd95": 1.0, "abd": 0.5, "baseline_dsc": 0.8}]
    from dlset_jax import metrics

    table = evaluate.format_report_table(metrics.summarize(recs), "px")
    assert "HD (px)" in table and "mm" not in table


def test_models_are_the_configs():
    """`create_model` passes every architecture field of the schema (one home each)."""
    c = config_lib.base_config()
    m = models.create_model(c.model)
    for k, v in c.model.items():
        if k not in models.NOT_ARCHITECTURE:
            assert getattr(m, k) == (tuple(v) if isinstance(v, (list, tuple)) else v), k


def _user_data(root, spacing_json: bool):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "validation", "test"):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        for i in range(2):
            m = np.zeros((40, 48), np.uint8)
            cy, cx = rng.integers(14, 26, 2)
            m[cy - 8 : cy + 8, cx - 10 : cx + 10] = 255
            img = np.where(m > 0, 180, 40).astype(np.uint8)
            Image.fromarray(img).save(root / split / "images" / f"{i}.png")
            Image.fromarray(m).save(root / split / "masks" / f"{i}.png")
    if spacing_json:
        (root / "spacing.json").write_text(json.dumps({"0": [0.5, 0.5], "1": [0.5, 0.5]}))


@pytest.mark.parametrize("spacing_json, unit", [(False, "px"), (True, "mm")])
def test_distances_are_reported_in_the_data_sets_unit(tmp_path, spacing_json, unit):
    """Own images without a pixel size are scored in px, not labelled mm."""
    _user_data(tmp_path / "manual", spacing_json)
    c = config_lib.base_config()
    c.data.update(
        name="user_segmentation",
        data_dir=str(tmp_path / "tfds"),
        manual_dir=str(tmp_path / "manual"),
        resolution=32,
    )
    res = evaluate.run_evaluation(
        c, None, split="test", model=None, predict=lambda b: edge_sdt(b["mask"])
    )
    assert res["unit"] == unit and f"HD ({unit})" in res["table"]
    other = "mm" if unit == "px" else "px"
    assert f"HD ({other})" not in res["table"]


def test_the_sweep_chooses_for_the_networks_own_level_set(small_config, tmp_path):
    """The threshold is chosen with the extreme points not honoured (`clicks.points_width`),
    so the same model gives the same choice with or without it; the evaluation then
    honours them against the threshold it scores with."""
    import jax
    from scipy import ndimage

    c = override(small_config, **{"eval.sweep_range": (-2.0, 2.0, 2.0)})
    model = models.create_model(c.model)
    variables = jax.tree.map(np.asarray, model.init_variables(jax.random.key(0), 64))
    saved = {}
    for width in (0.0, 6.0):
        cw = override(c, **{"clicks.points_width": width})
        wd = tmp_path / f"w{width:g}"
        evaluate.sweep_threshold(cw, variables, model=model, workdir=str(wd))
        saved[width] = json.loads((wd / "eval" / "threshold.json").read_text())
    assert saved[6.0] == saved[0.0]
    cw = override(c, **{"clicks.points_width": 6.0})
    source = evaluate.pipeline.load_split(cw, "test")
    for threshold in (-3.0, 1.0):
        batch, out = next(
            evaluate._iterate_predictions(
                cw, variables, source, model=model, max_objects=8, threshold=threshold
            )
        )
        margin = cw.clicks.points_margin
        for phi, pts in zip(out["phi_t"][..., 0], batch["points"], strict=True):
            at = ndimage.map_coordinates(phi, [pts[:, 1], pts[:, 0]], order=1)
            # inside by the margin, less the bump's bilinear sag between pixel centres
            assert (at <= threshold - 0.9 * margin).all(), (threshold, at)
