"""Scoring in the original image: segment each object of a split, measure, report.

`run_evaluation` segments every object of a split from its exact extreme points
(`inference.predict_crops`, the same path as training's and prediction's), pastes the
level set back into the full image, thresholds it and computes the paper's metrics
per object, with the trivial baseline (the filled quadrilateral through the four
points) beside them. With a `workdir` it writes `eval/<split>/`: results.json,
table.md (paper Tables 1-3 layout), fmeasure.png (boundary F against tolerance,
Fig. 3) and overlays (Fig. 4 style). Distances are in the data set's unit (mm, or px
where it has no physical spacing).

Each process scores its own shard of the objects on its local devices; process 0
merges the records (through files in the workdir, which multi-host runs share).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlset_jax import checkpoint as ckpt_lib
from dlset_jax import config as config_lib
from dlset_jax import files, inference, metrics, models, parallel, targets
from dlset_jax.data import pipeline

# Fields that define the network's inputs or architecture: an existing checkpoint is
# evaluated with its own values, never with others.
FROZEN_FIELDS = (
    "data.guidance",
    "data.cm_variant",
    "data.sigma",
    "data.resolution",
    "data.relax",
    "data.relax_fraction",
    "data.contrast_floor",
    "data.dt_max",
    "model.",
    "clicks.enabled",
    "clicks.sigma",
)


@functools.lru_cache(maxsize=8)
def _compiled_predict(model, config_json: str, mesh: Mesh, threshold: float | None):
    config = ml_collections.ConfigDict(json.loads(config_json))
    data = NamedSharding(mesh, P("data"))
    return jax.jit(
        functools.partial(inference.predict_crops, model=model, config=config, threshold=threshold),
        in_shardings=(NamedSharding(mesh, P()), data, data),
    )


# ------------------------------------------------------------------- scoring


def _iterate_predictions(
    config, variables, source, *, model, max_objects, threshold: float, predict=None
):
    """Yields (batch, outputs) for this process's shard of the split.

    `predict(batch) -> phi_t (B, R, R, 1)` replaces the network and the evolution
    (oracle tests of the scoring); None runs `inference.predict_crops` (the extreme
    points honoured against `threshold`).
    """
    if predict is None:
        mesh = parallel.local_mesh()
        # the threshold shapes the program only where the points are honoured against
        # it: otherwise one compilation serves the sweep and the scoring
        honoured = float(threshold) if config.clicks.points_width > 0 else None
        fn = _compiled_predict(model, config.to_json(), mesh, honoured)
        variables = parallel.to_local(variables, mesh)
        sharding = NamedSharding(mesh, P("data"))
    objects = pipeline.ObjectSource(source)
    if max_objects and max_objects > 0:
        objects = pipeline.ObjectSource(source, objects.index[:max_objects])
    it = pipeline.make_eval_iterator(
        objects,
        pipeline.CropOptions.from_config(config),
        batch_size=config.eval.batch_size,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
    )
    for batch in it:
        if predict is not None:
            yield batch, {"phi_t": np.asarray(predict(batch))}
            continue
        img = jax.device_put(batch["image"], sharding)
        pts = jax.device_put(batch["points"], sharding)
        out = jax.device_get(fn(variables, img, pts))
        yield batch, out


def _overlay_crop(image, mask, phi, threshold: float, max_rgb=255):
    """(R, R, 3) uint8: the crop with ground truth (green) and prediction (red,
    `phi <= threshold`) borders."""
    img = np.asarray(image, np.float32)
    img = (img - img.min()) / max(img.max() - img.min(), 1e-6)
    rgb = (img * max_rgb).astype(np.uint8).copy()
    for region, color in (
        (np.asarray(mask)[..., 0] > 0.5, (0, 255, 0)),
        (np.asarray(phi)[..., 0] <= threshold, (255, 0, 0)),
    ):
        if region.any():  # an empty prediction has no contour to draw
            rgb[targets.contour(region)] = color
    return rgb


def run_evaluation(
    config,
    variables,
    *,
    split: str,
    model,
    max_objects: int = -1,
    workdir: str | None = None,
    threshold: float | None = None,
    thresholds=(),
    predict=None,
    report_name: str | None = None,
) -> dict:
    """Scores every object of `split`; see the module docstring.

    `predict`: see `_iterate_predictions` (None: the model). `report_name`: the
    folder under `<workdir>/eval/` (default: the split's name).

    Returns dict: `records` (per object), `scalars` (means), `summary`
    (`metrics.summarize`), `table` (Markdown), `overlays` ((N, R, R, 3) uint8 crops),
    `unit` (of HD / HD95 / ABD: "mm" or "px").
    """
    threshold = config.levelset.threshold if threshold is None else threshold
    source = pipeline.load_split(config, split)
    meta = source.dataset_info.metadata or {}
    class_names = meta.get("class_names")
    unit = meta.get("spacing_unit", "mm")
    records, overlays = [], []
    res = config.data.resolution
    for batch, out in _iterate_predictions(
        config,
        variables,
        source,
        model=model,
        max_objects=max_objects,
        threshold=threshold,
        predict=predict,
    ):
        for i in np.nonzero(batch["valid"])[0]:
            h, w = (int(v) for v in batch["image_shape"][i])
            phi_full = inference.paste_back(out["phi_t"][i, ..., 0], batch["box"][i], (h, w))
            gt = batch["full_mask"][i, :h, :w] > 0
            pts = inference.crop_to_image_points(batch["points"][i], batch["box"][i], res)
            rec = metrics.score_object(
                phi_full, gt, pts, batch["spacing"][i], threshold, thresholds
            )
            cid = int(batch["class_id"][i])
            rec["class"] = class_names[cid] if class_names and cid < len(class_names) else cid
            rec["id"] = str(batch["id"][i])
            records.append(rec)
            if len(overlays) < config.eval.num_overlays:
                overlays.append(
                    _overlay_crop(batch["image"][i], batch["mask"][i], out["phi_t"][i], threshold)
                )
    records = _gather_records(records, workdir, split)
    summary = metrics.summarize(records)
    scalars = {k: v["mean"] for k, v in summary["overall"].items()}
    result = {
        "records": records,
        "summary": summary,
        "scalars": scalars,
        "table": format_report_table(summary, unit),
        "overlays": np.stack(overlays) if overlays else None,
        "threshold": threshold,
        "split": split,
        "unit": unit,
    }
    if workdir and jax.process_index() == 0:
        write_reports(os.path.join(workdir, "eval", report_name or split), result, config)
    return result


def _gather_records(records, workdir, split):
    if jax.process_count() == 1:
        return records
    from jax.experimental import multihost_utils

    if not workdir:
        raise ValueError("multi-process evaluation needs a shared workdir")
    d = os.path.join(workdir, "eval", split, "parts")
    os.makedirs(d, exist_ok=True)
    files.atomic_write_text(
        os.path.join(d, f"{jax.process_index()}.json"), json.dumps(records, default=float)
    )
    multihost_utils.sync_global_devices(f"eval-{split}")
    merged = []
    for p in range(jax.process_count()):
        with open(os.path.join(d, f"{p}.json")) as f:
            merged.extend(json.load(f))
    return merged


def sweep_threshold(config, variables, *, model, workdir=None, predict=None) -> float:
    """The mask threshold (phi <= t) with the best mean DSC on the validation split.

    With a workdir the choice is written to `eval/threshold.json`, where
    `checkpoint.load` (and so prediction) finds it. The threshold is chosen for the
    network's own level set: the extreme points are not honoured during the sweep
    (`clicks.points_width`; they are honoured against the threshold chosen, after it).
    """
    lo, hi, step = config.eval.sweep_range
    grid = tuple(float(t) for t in np.arange(lo, hi + step / 2, step))
    config = ml_collections.ConfigDict(config.to_dict())
    config.clicks.points_width = 0.0
    res = run_evaluation(
        config,
        variables,
        split=config.data.eval_split,
        model=model,
        workdir=workdir,
        thresholds=grid,
        predict=predict,
    )
    means = {t: float(np.mean([r[f"dsc_at_{t:g}"] for r in res["records"]])) for t in grid}
    best = max(means, key=means.get)
    if workdir and jax.process_index() == 0:
        files.atomic_write_text(
            os.path.join(workdir, ckpt_lib.THRESHOLD_FILE),
            json.dumps({"mean_dsc": means, "chosen": best}, indent=1),
        )
    return best


def check_overridable(overrides) -> None:
    """Raises ConfigError naming the first override of a field in `FROZEN_FIELDS`."""
    for key in sorted(overrides):
        for frozen in FROZEN_FIELDS:
            if key == frozen or (frozen.endswith(".") and key.startswith(frozen)):
                raise config_lib.ConfigError(
                    f"--config.{key} cannot be overridden for an existing checkpoint: it "
                    "defines the network's inputs or architecture (the saved value is used)"
                )


def apply_overrides(config, overrides: dict) -> ml_collections.ConfigDict:
    """The saved config with the user's explicit `{"a.b": value}` overrides.

    Raises ConfigError naming the first override of a field in `FROZEN_FIELDS`
    (the network was trained with its own inputs and architecture).
    """
    check_overridable(overrides)
    config = ml_collections.ConfigDict(config.to_dict())
    try:
        config.update_from_flattened_dict(dict(overrides))
    except (KeyError, AttributeError) as e:
        raise config_lib.ConfigError(f"unknown config field in the overrides: {e}") from None
    config_lib.validate(config)
    return config


def other_set_report(name: str, split: str) -> str:
    """The report folder (under `<workdir>/eval/`) of a data set other than the run's
    own: beside its reports, not over them."""
    return f"{name}-{split}"


def evaluate_workdir(
    workdir: str, *, split: str = "test", step: int | None = None, overrides=None
) -> dict:
    """Evaluates a checkpoint of `workdir` with its saved config on `split`.

    `overrides`: `{"a.b": value}` fields given explicitly by the user (the saved config
    is the truth otherwise; see `apply_overrides`). The threshold is the run's
    (`checkpoint.load`), swept again on validation only when asked.
    """
    check_overridable(overrides or {})  # before anything is read
    run = ckpt_lib.load(workdir, step)
    config = apply_overrides(run.config, overrides or {})
    model = models.create_model(config.model)
    threshold = run.threshold
    if overrides and "levelset.threshold" in overrides:
        threshold = float(config.levelset.threshold)
    if overrides and overrides.get("eval.sweep_thresholds"):
        threshold = sweep_threshold(config, run.variables, model=model, workdir=workdir)
    own = config.data.name == run.config.data.name
    name = split if own else other_set_report(config.data.name, split)
    return run_evaluation(
        config,
        run.variables,
        split=split,
        model=model,
        workdir=workdir,
        threshold=threshold,
        report_name=name,
    )


# ------------------------------------------------------------------- reports

REPORT_METRICS = ("dsc", "rvd", "hd", "hd95", "abd", "iou", "bf_1", "bf_2", "baseline_dsc")


def format_report_table(summary, unit: str = "mm") -> str:
    """The Markdown table; HD / HD95 / ABD labelled in the data set's `unit`."""
    return metrics.format_table(summary, metrics=REPORT_METRICS, distance_unit=unit)


def _figure(**kwargs):
    """A matplotlib figure on the Agg canvas, without touching pyplot's global backend
    (which would break inline figures in a notebook that trains in-process)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def write_reports(outdir: str, result: dict, config) -> None:
    os.makedirs(outdir, exist_ok=True)
    payload = {
        "split": result["split"],
        "threshold": result["threshold"],
        "distance_unit": result["unit"],
        "summary": result["summary"],
        "records": result["records"],
        "config": json.loads(config.to_json()),
    }
    files.atomic_write_text(
        os.path.join(outdir, "results.json"), json.dumps(payload, indent=1, default=float)
    )
    files.atomic_write_text(
        os.path.join(outdir, "table.md"),
        f"# {config.data.name} / {result['split']} "
        f"(threshold {result['threshold']:g})\n\n{result['table']}\n",
    )
    fig = _figure(figsize=(4.5, 3.2))
    ax = fig.subplots()
    f_means = [
        np.mean([r[f"bf_curve_{t}"] for r in result["records"]]) for t in metrics.F_TOLERANCES
    ]
    ax.plot(metrics.F_TOLERANCES, f_means, "o-", label="deep level set")
    ax.set_xlabel("tolerance (px)")
    ax.set_ylabel("boundary F-measure")
    ax.set_ylim(0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"{config.data.name}: {result['split']}")
    files.atomic_savefig(fig, os.path.join(outdir, "fmeasure.png"))
    if result["overlays"] is not None:
        n = len(result["overlays"])
        cols = min(n, 4)
        rows = -(-n // cols)
        fig = _figure(figsize=(2.4 * cols, 2.4 * rows))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, k in zip(axes.ravel(), range(rows * cols)):
            ax.axis("off")
            if k < n:
                ax.imshow(result["overlays"][k])
                rec = result["records"][k]
                ax.set_title(f"DSC {rec['dsc']:.3f}", fontsize=8)
        fig.suptitle("green: ground truth, red: prediction", fontsize=9)
        files.atomic_savefig(fig, os.path.join(outdir, "overlays.png"))
