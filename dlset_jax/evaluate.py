"""Scoring in the original image: predict each object's crop, evolve, paste back, measure.

`run_evaluation` segments every object of a split from its exact extreme points,
pastes the level set back into the full image (positive background outside the
crop), thresholds it and computes the paper's metrics per object, with the trivial
baseline (the filled quadrilateral through the four points) beside them. With a
`workdir` it writes `eval/<split>/`: results.json, table.md (paper Tables 1-3 layout),
fmeasure.png (boundary F against tolerance, Fig. 3) and overlays (Fig. 4 style).

Each process scores its own shard of the objects on its local devices; process 0
merges the records (through files in the workdir, which multi-host runs share).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlset_jax import levelset, metrics, targets
from dlset_jax.data import pipeline

BACKGROUND_PHI = 20.0  # level set value outside the crop (positive = outside)
F_TOLERANCES = tuple(range(1, 11))


# ------------------------------------------------------------- config -> data


def load_data_source(config, split: str):
    d = config.data
    name = d.name + (f"/{d.builder_config}" if d.builder_config else "")
    return pipeline.load_source(
        name, d.data_dir, split, build=d.build, manual_dir=d.manual_dir or None
    )


def pipeline_kwargs(config) -> dict:
    d = config.data
    return dict(
        resolution=d.resolution,
        relax=d.relax,
        dt_max=d.dt_max,
        guidance_mode=d.guidance,
        cm_variant=d.cm_variant,
        sigma=d.sigma,
    )


# ---------------------------------------------------------------- prediction


def predict_crops(variables, image, guidance, *, model, config, return_trajectory: bool = False):
    """Network + evolution on crops (pure; jit it).

    Args:
      variables: `{"params", "batch_stats"}`.
      image: `(B, R, R, 3)` normalised crops; guidance: `(B, R, R, 1)` in [0, 510].

    Returns:
      dict with the network outputs and `phi_t` `(B, R, R, 1)` after T steps (and
      `trajectory` `(T+1, B, R, R, 1)` when asked).
    """
    x = jnp.concatenate([image, guidance / 255.0], axis=-1)
    out = model.apply(variables, x, train=False)
    ls_cfg = config.levelset
    res = levelset.evolve(
        out["phi0"],
        out["motion"],
        out["g"],
        steps=ls_cfg.steps,
        timestep=ls_cfg.timestep,
        dirac_ratio=ls_cfg.dirac_ratio,
        dt_max=config.data.dt_max,
        corners=ls_cfg.corners,
        impl=ls_cfg.get("impl", "auto"),
        return_trajectory=return_trajectory,
    )
    if return_trajectory:
        out["phi_t"], out["trajectory"] = res
    else:
        out["phi_t"] = res
    return out


def local_mesh() -> Mesh:
    return Mesh(np.asarray(jax.local_devices()), ("data",))


def to_local(variables, mesh: Mesh):
    """Replicated global arrays -> arrays replicated on this process's devices."""

    def local(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = x.addressable_data(0)
        return jax.device_put(np.asarray(x), NamedSharding(mesh, P()))

    return jax.tree.map(local, variables)


@functools.lru_cache(maxsize=8)
def _compiled_predict(model, config_json: str, mesh: Mesh):
    import ml_collections

    config = ml_collections.ConfigDict(json.loads(config_json))
    data = NamedSharding(mesh, P("data"))
    return jax.jit(
        functools.partial(predict_crops, model=model, config=config),
        in_shardings=(NamedSharding(mesh, P()), data, data),
    )


# ------------------------------------------------------------------- scoring


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
    rec = metrics.object_metrics(
        pred, gt, spacing=tuple(float(s) for s in spacing), tolerances=(1, 2)
    )
    for tol in F_TOLERANCES:
        rec[f"bf_curve_{tol}"] = metrics.boundary_fmeasure(pred, gt, tol)[2]
    rec["baseline_dsc"] = metrics.dice(targets.polygon_mask(points_full, gt.shape), gt)
    for t in thresholds:
        rec[f"dsc_at_{t:g}"] = metrics.dice(phi_full <= t, gt)
    return rec


def crop_to_image_points(points_crop, box, resolution):
    y0, x0, y1, x1 = (int(v) for v in box)
    x = targets.crop_to_image_coords(points_crop[:, 0], x0, x1 - x0, resolution)
    y = targets.crop_to_image_coords(points_crop[:, 1], y0, y1 - y0, resolution)
    return np.stack([x, y], -1)


def _iterate_predictions(config, variables, source, *, model, max_objects):
    """Yields (batch, outputs) for this process's shard of the split."""
    mesh = local_mesh()
    fn = _compiled_predict(model, config.to_json(), mesh)
    variables = to_local(variables, mesh)
    objects = pipeline.ObjectSource(source)
    if max_objects and max_objects > 0:
        objects = pipeline.ObjectSource(source, objects.index[:max_objects])
    it = pipeline.make_eval_iterator(
        objects,
        batch_size=config.eval.batch_size,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        **pipeline_kwargs(config),
    )
    sharding = NamedSharding(mesh, P("data"))
    for batch in it:
        img = jax.device_put(batch["image"], sharding)
        gd = jax.device_put(batch["guidance"], sharding)
        out = jax.device_get(fn(variables, img, gd))
        yield batch, out


def _overlay_crop(image, mask, phi, max_rgb=255):
    """(R, R, 3) uint8: the crop with ground truth (green) and prediction (red) borders."""
    img = np.asarray(image, np.float32)
    img = (img - img.min()) / max(img.max() - img.min(), 1e-6)
    rgb = (img * max_rgb).astype(np.uint8).copy()
    for region, color in (
        (np.asarray(mask)[..., 0] > 0.5, (0, 255, 0)),
        (np.asarray(phi)[..., 0] <= 0, (255, 0, 0)),
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
) -> dict:
    """Scores every object of `split`; see the module docstring.

    Returns dict: `records` (per object), `scalars` (means), `summary`
    (`metrics.summarize`), `table` (Markdown), `overlays` ((N, R, R, 3) uint8 crops).
    """
    threshold = config.levelset.threshold if threshold is None else threshold
    source = load_data_source(config, split)
    class_names = (
        source.dataset_info.metadata.get("class_names") if (source.dataset_info.metadata) else None
    )
    records, overlays = [], []
    res = config.data.resolution
    for batch, out in _iterate_predictions(
        config, variables, source, model=model, max_objects=max_objects
    ):
        for i in np.nonzero(batch["valid"])[0]:
            h, w = (int(v) for v in batch["image_shape"][i])
            phi_full = targets.paste_back(
                out["phi_t"][i, ..., 0], batch["box"][i], (h, w), background=BACKGROUND_PHI
            )
            gt = batch["full_mask"][i, :h, :w] > 0
            pts = crop_to_image_points(batch["points"][i], batch["box"][i], res)
            rec = score_object(phi_full, gt, pts, batch["spacing"][i], threshold, thresholds)
            cid = int(batch["class_id"][i])
            rec["class"] = class_names[cid] if class_names and cid < len(class_names) else cid
            rec["id"] = str(batch["id"][i])
            records.append(rec)
            if len(overlays) < config.eval.num_overlays:
                overlays.append(_overlay_crop(batch["image"][i], batch["mask"][i], out["phi_t"][i]))
    records = _gather_records(records, workdir, split)
    summary = metrics.summarize(records)
    scalars = {k: v["mean"] for k, v in summary["overall"].items()}
    result = {
        "records": records,
        "summary": summary,
        "scalars": scalars,
        "table": format_report_table(summary),
        "overlays": np.stack(overlays) if overlays else None,
        "threshold": threshold,
        "split": split,
    }
    if workdir and jax.process_index() == 0:
        write_reports(os.path.join(workdir, "eval", split), result, config)
    return result


def _gather_records(records, workdir, split):
    if jax.process_count() == 1:
        return records
    from jax.experimental import multihost_utils

    if not workdir:
        raise ValueError("multi-process evaluation needs a shared workdir")
    d = os.path.join(workdir, "eval", split, "parts")
    os.makedirs(d, exist_ok=True)
    atomic_write_text(
        os.path.join(d, f"{jax.process_index()}.json"), json.dumps(records, default=float)
    )
    multihost_utils.sync_global_devices(f"eval-{split}")
    merged = []
    for p in range(jax.process_count()):
        with open(os.path.join(d, f"{p}.json")) as f:
            merged.extend(json.load(f))
    return merged


def sweep_threshold(config, variables, *, model, workdir=None) -> float:
    """The mask threshold (phi <= t) with the best mean DSC on the validation split."""
    lo, hi, step = config.eval.sweep_range
    grid = tuple(float(t) for t in np.arange(lo, hi + step / 2, step))
    res = run_evaluation(
        config,
        variables,
        split=config.data.eval_split,
        model=model,
        workdir=workdir,
        thresholds=grid,
    )
    means = {t: float(np.mean([r[f"dsc_at_{t:g}"] for r in res["records"]])) for t in grid}
    best = max(means, key=means.get)
    if workdir and jax.process_index() == 0:
        atomic_write_text(
            os.path.join(workdir, "eval", "threshold.json"),
            json.dumps({"mean_dsc": means, "chosen": best}, indent=1),
        )
    return best


def evaluate_workdir(
    workdir: str, *, split: str = "test", step: int | None = None, overrides=None
) -> dict:
    """Restores a checkpoint of `workdir` with its saved config and evaluates `split`.

    `overrides`: an optional ConfigDict whose fields replace the saved ones.
    """
    import ml_collections

    from dlset_jax import checkpoint as ckpt_lib
    from dlset_jax import config as config_lib
    from dlset_jax import models

    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(
            f"no checkpoints under {workdir!r}: train first (python train.py --workdir ...)"
        )
    checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
    config = ml_collections.ConfigDict(checkpointer.restore_config(step))
    if overrides is not None:
        config.update_from_flattened_dict({k: v for k, v in _flatten(overrides.to_dict()).items()})
    config_lib.validate(config)
    variables = checkpointer.restore_variables(step)
    checkpointer.close()
    model = models.create_model(config.model)
    threshold = config.levelset.threshold
    if config.eval.sweep_thresholds:
        threshold = sweep_threshold(config, variables, model=model, workdir=workdir)
    return run_evaluation(
        config, variables, split=split, model=model, workdir=workdir, threshold=threshold
    )


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ------------------------------------------------------------------- reports

REPORT_METRICS = ("dsc", "rvd", "hd", "hd95", "abd", "iou", "bf_1", "bf_2", "baseline_dsc")


def format_report_table(summary) -> str:
    return metrics.format_table(summary, metrics=REPORT_METRICS)


def atomic_write_text(path: str, text: str) -> None:
    """Writes via a temporary file and a rename, so readers never see half a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _atomic_savefig(fig, path: str) -> None:
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


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
        "summary": result["summary"],
        "records": result["records"],
        "config": json.loads(config.to_json()),
    }
    atomic_write_text(
        os.path.join(outdir, "results.json"), json.dumps(payload, indent=1, default=float)
    )
    atomic_write_text(
        os.path.join(outdir, "table.md"),
        f"# {config.data.name} / {result['split']} "
        f"(threshold {result['threshold']:g})\n\n{result['table']}\n",
    )
    fig = _figure(figsize=(4.5, 3.2))
    ax = fig.subplots()
    f_means = [np.mean([r[f"bf_curve_{t}"] for r in result["records"]]) for t in F_TOLERANCES]
    ax.plot(F_TOLERANCES, f_means, "o-", label="deep level set")
    ax.set_xlabel("tolerance (px)")
    ax.set_ylabel("boundary F-measure")
    ax.set_ylim(0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"{config.data.name}: {result['split']}")
    _atomic_savefig(fig, os.path.join(outdir, "fmeasure.png"))
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
        _atomic_savefig(fig, os.path.join(outdir, "overlays.png"))
