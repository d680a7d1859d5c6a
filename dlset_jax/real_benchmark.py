"""The real-image benchmark: Colin27 T1 + AAL deep grey test slabs, through `Segmenter`.

A check anyone can run (`apt-get install mricron-data`) of what a user gets on a real
MR image the model was not trained on: every object of the `colin27_aal/deep_grey`
TEST split (axial slices 63-70 of the Colin27 T1, 60 objects of 10 structures), each
segmented the way a user would, through `Segmenter.segment` on the whole slice, from

  * its exact extreme points, and
  * the same points jittered by up to +-2 px per coordinate (a person's clicks),

and scored against the AAL label and against the four-point polygon through the SAME
clicks. No slice of these slabs (of any atlas on this brain) is training data of the
built-in sets (`data/domain_random.py` excludes them).
"""

from __future__ import annotations

import os
import zlib

import numpy as np

from dlset_jax import files, metrics, targets
from dlset_jax.data import domain_random, pipeline

JITTERS = (0, 2)
REPORT_KEYS = ("dsc", "baseline_dsc", "hd95", "rvd")


def available(template_dir: str | None = None) -> bool:
    """Whether the Colin27 + AAL files are installed (Debian's mricron-data)."""
    from dlset_jax.data import builders

    d = template_dir or builders.AAL_TEMPLATE_DIR
    return all(os.path.exists(os.path.join(d, f)) for f in ("ch2.nii.gz", "aal.nii.gz"))


def test_objects(data_dir: str, split: str = "test") -> list[dict]:
    """The benchmark's objects: `image` (H, W) uint8 slice, `mask`, `class`, `spacing`, `id`."""
    source = pipeline.load_source("colin27_aal/deep_grey", data_dir, split)
    names = source.dataset_info.metadata["class_names"]
    out = []
    for r in range(len(source)):
        rec = source[r]
        image = np.asarray(rec["image"])[..., 0]
        for k, m in enumerate(np.asarray(rec["masks"])):
            if m.any():
                out.append(
                    {
                        "image": image,
                        "mask": m > 0,
                        "class": names[int(rec["classes"][k])],
                        "spacing": tuple(float(s) for s in rec["spacing"]),
                        "id": f"{rec['id'].decode() if isinstance(rec['id'], bytes) else rec['id']}/{k}",
                    }
                )
    return out


def with_contrast(objects: list[dict], contrast: float) -> list[dict]:
    """The objects on fainter (or stronger) copies of their slices: every grey level
    moved to ``mean + contrast * (value - mean)`` of its slice, rounded, clipped to
    [0, 255] (uint8, as such an image would be stored; 1 = unchanged).

    A slice mapped to a wide window (a CT from -1000 to +1000 HU, an MR with a bright
    fat rim) shows its organs at a fraction of this contrast: the model should find
    the same edges there.
    """
    if not contrast > 0:
        raise ValueError(f"with_contrast: contrast must be > 0, got {contrast}")
    out = []
    for obj in objects:
        img = np.asarray(obj["image"], np.float64)
        faint = np.clip(np.round(img.mean() + contrast * (img - img.mean())), 0, 255)
        out.append({**obj, "image": faint.astype(np.uint8)})
    return out


def bmode_display(x: np.ndarray, dynamic_range_db: float, level: float) -> np.ndarray:
    """A B-mode display of an amplitude image: ``x`` (any shape, >= 0) log-compressed
    into [0, 1], its median shown at ``level`` and ``dynamic_range_db`` spanning the
    whole grey scale: ``clip(level + 20 log10(x / median) / DR, 0, 1)``.

    Ultrasound scanners show the envelope's logarithm, so speckle, a multiplicative
    field, becomes an additive one of constant spread (5.6 dB for one look) and dark
    tissue is lifted; the gain puts typical tissue at mid grey.
    """
    if not dynamic_range_db > 0:
        raise ValueError(f"bmode_display: dynamic_range_db must be > 0, got {dynamic_range_db}")
    x = np.asarray(x, np.float64)
    med = max(float(np.median(x)), 1e-6)
    db = 20.0 * np.log10(np.maximum(x, med * 1e-6) / med)
    return np.clip(float(level) + db / float(dynamic_range_db), 0.0, 1.0)


def with_speckle(
    objects: list[dict],
    looks: int,
    corr: float = 1.0,
    seed: int = 0,
    display_db: float | None = None,
) -> list[dict]:
    """The objects on speckled copies of their slices: every grey level multiplied by
    fully developed speckle (`domain_random.speckle_field`, ``looks`` looks, correlated
    over ``corr`` px), rounded, clipped to [0, 255] (uint8). With ``display_db`` the
    speckled slice is shown as a scanner shows it instead: log-compressed over that many
    dB, its median at mid grey (`bmode_display`).

    An ultrasound image is its tissue's reflectivity times such a field: the model
    should find the same edges through it. One field per slice, drawn from ``seed``
    and the slice's id, so objects of a slice share it and every run sees the same.
    """
    if looks < 1:
        raise ValueError(f"with_speckle: looks must be >= 1, got {looks}")
    if not corr > 0:
        raise ValueError(f"with_speckle: corr must be > 0 px, got {corr}")
    if display_db is not None and not display_db > 0:
        raise ValueError(f"with_speckle: display_db must be > 0 dB, got {display_db}")
    shown = {}
    out = []
    for obj in objects:
        key = obj["id"].rsplit("/", 1)[0]
        if key not in shown:
            img = np.asarray(obj["image"], np.float64)
            rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
            amp = img * domain_random.speckle_field(rng, img.shape, looks, corr)
            if display_db is not None:
                amp = 255.0 * bmode_display(amp, display_db, 0.5)
            shown[key] = np.clip(np.round(amp), 0, 255).astype(np.uint8)
        out.append({**obj, "image": shown[key]})
    return out


def clicks(
    mask: np.ndarray, jitter: int, rng: np.random.Generator, ties: str = "first"
) -> np.ndarray:
    """Exact extreme points (where an extreme row or column holds several pixels, the one
    `ties` names: `targets.extreme_points`), each coordinate moved by an integer in
    [-jitter, jitter]."""
    pts = targets.extreme_points(mask, ties=ties)
    if jitter:
        pts = pts + rng.integers(-jitter, jitter + 1, size=pts.shape)
        pts = np.clip(pts, 0, np.array([mask.shape[1] - 1, mask.shape[0] - 1]))
    return pts.astype(np.float64)


def run(
    segmenter, objects: list[dict], jitters=JITTERS, seed: int = 0, ties: str = "first"
) -> dict:
    """Segments every object with each jitter (the clicks' tie rule `ties`, see `clicks`);
    returns records and summaries per jitter."""
    out = {}
    for jitter in jitters:
        rng = np.random.default_rng([seed, jitter])
        records = []
        for obj in objects:
            pts = clicks(obj["mask"], jitter, rng, ties)
            res = segmenter.segment(obj["image"], [pts], spacing=obj["spacing"])
            o = res.objects[0]
            rec = metrics.object_metrics(o.mask, obj["mask"], spacing=obj["spacing"], tolerances=())
            poly = targets.polygon_mask(o.points, obj["mask"].shape)
            rec["baseline_dsc"] = metrics.dice(poly, obj["mask"])
            if jitter == 0:  # which contour follows the image's edges (see `verdict`)
                rec["edge"] = metrics.edge_strength(obj["image"], o.mask)
                rec["edge_label"] = metrics.edge_strength(obj["image"], obj["mask"])
                rec["edge_polygon"] = metrics.edge_strength(obj["image"], poly)
            rec.update({"class": obj["class"], "id": obj["id"], "points": o.points.tolist()})
            records.append(rec)
        out[jitter] = {"records": records, "summary": metrics.summarize(records)}
    return out


def table(result: dict) -> str:
    """Markdown: per structure and overall, model vs polygon, for each jitter."""
    jitters = sorted(result)
    head = ["structure", "n"]
    for j in jitters:
        tag = "exact" if j == 0 else f"+-{j} px"
        head += [f"DSC {tag}", f"polygon {tag}", f"HD95 mm {tag}", f"RVD % {tag}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = sorted(result[jitters[0]]["summary"]["groups"])

    def cells(summary):
        row = []
        for k in REPORT_KEYS:
            m = summary[k]
            scale = 100 if k in ("dsc", "baseline_dsc") else 1
            row.append(f"{m['mean'] * scale:.1f} ± {m['std'] * scale:.1f}")
        return row

    for g in groups + ["all"]:
        first = result[jitters[0]]["summary"]
        s0 = first["overall"] if g == "all" else first["groups"][g]
        row = [f"**{g}**" if g == "all" else g, str(s0["dsc"]["n"])]
        for j in jitters:
            s = result[j]["summary"]
            row += cells(s["overall"] if g == "all" else s["groups"][g])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def verdict(result: dict) -> list[str]:
    """One line per jitter: mean DSC vs polygon, structures below the polygon."""
    lines = []
    for j in sorted(result):
        s = result[j]["summary"]
        below = [g for g, v in s["groups"].items() if v["dsc"]["mean"] <= v["baseline_dsc"]["mean"]]
        o = s["overall"]
        lines.append(
            f"{'exact clicks' if j == 0 else f'clicks +-{j} px'}: DSC {o['dsc']['mean']:.3f} ± "
            f"{o['dsc']['std']:.3f} vs polygon {o['baseline_dsc']['mean']:.3f} ± "
            f"{o['baseline_dsc']['std']:.3f} ({o['dsc']['n']} objects), RVD "
            f"{o['rvd']['mean']:+.1f} %; structures at or below the polygon: "
            f"{', '.join(sorted(below)) or 'none'}"
        )
    recs = result[min(result)]["records"]
    if min(result) == 0 and recs and "edge" in recs[0]:
        # The reference is an atlas label: where the model's contour lies on stronger
        # image edges than the label's own boundary, the label, not the model, is off
        # the edge (docs/history.md, "Where the AAL labels lie").
        e = {k: np.array([r[k] for r in recs]) for k in ("edge", "edge_label", "edge_polygon")}
        lines.append(
            "exact clicks, mean image gradient at the contour (grey levels / px): model "
            f"{np.nanmean(e['edge']):.1f}, label {np.nanmean(e['edge_label']):.1f}, polygon "
            f"{np.nanmean(e['edge_polygon']):.1f}; the model's contour lies on stronger edges "
            f"than the label's in {int(np.sum(e['edge'] > e['edge_label']))} of {len(recs)} objects"
        )
    return lines


def worst_cases_figure(segmenter, objects, result, path: str, n: int = 6) -> None:
    """The `n` objects with the lowest DSC (exact clicks): crop, truth, prediction, polygon."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recs = result[min(result)]["records"]
    order = np.argsort([r["dsc"] for r in recs])[:n]
    # constrained layout keeps the figure's title off the tallest panel's
    fig = Figure(figsize=(2.4 * len(order), 2.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(order), squeeze=False)[0]
    for ax, i in zip(axes, order, strict=True):
        obj, rec = objects[i], recs[i]
        pts = np.asarray(rec["points"])
        res = segmenter.segment(obj["image"], [pts])
        ys, xs = np.nonzero(obj["mask"])
        y0, y1 = max(ys.min() - 8, 0), ys.max() + 9
        x0, x1 = max(xs.min() - 8, 0), xs.max() + 9
        ax.imshow(obj["image"][y0:y1, x0:x1], cmap="gray")
        for m, col in (
            (obj["mask"], "lime"),
            (res.objects[0].mask, "red"),
            (targets.polygon_mask(pts, obj["mask"].shape), "yellow"),
        ):
            ax.contour(m[y0:y1, x0:x1].astype(float), levels=[0.5], colors=col, linewidths=1)
        ax.plot(pts[:, 0] - x0, pts[:, 1] - y0, "c.", ms=5)
        ax.set_title(
            f"{obj['class']}\nDSC {rec['dsc']:.2f} (poly {rec['baseline_dsc']:.2f})", fontsize=7
        )
        ax.axis("off")
    fig.suptitle("worst cases, exact clicks: truth green, model red, polygon yellow", fontsize=8)
    files.atomic_savefig(fig, path)


def write(result: dict, outdir: str) -> None:
    """`table.md` and `results.json` under `outdir`."""
    import json

    files.atomic_write_text(
        os.path.join(outdir, "table.md"), table(result) + "\n" + "\n".join(verdict(result)) + "\n"
    )
    payload = {str(j): v for j, v in result.items()}
    files.atomic_write_text(
        os.path.join(outdir, "results.json"), json.dumps(payload, indent=1, default=float)
    )
