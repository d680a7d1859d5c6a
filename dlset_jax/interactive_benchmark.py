"""The interactive-segmentation benchmark: four clicks, then simulated corrections.

For each object: segment from its four extreme points, then add up to `max_clicks`
corrective clicks one at a time, each where the simulated user of training puts it
(`corrections.next_click_host`: the deepest pixel of the larger error, inside the
object's crop box), and score every answer against the truth. Reported:

  * the DSC curve after 0 (the four points) .. `CURVE_CLICKS` corrective clicks, mean
    and std over the objects, and its area (the mean of the curve's points);
  * NoC@85 / NoC@90: corrective clicks needed to reach that DSC (0 if the four points
    do), at most `max_clicks`; an object that never reaches it counts as `max_clicks`
    and as a failure;
  * robustness to click jitter (extreme points moved by +-1, +-2, +-4 px): DSC after
    the four points and after 3 corrective clicks;
  * latency per interaction (one `Segmenter.segment` call with the clicks so far);
  * 3-D: each structure of a stack of slices from 4 clicks on its middle slice plus
    its first and last slice (`volume.propagate`), against the same structure
    segmented slice by slice from exact per-slice extreme points (the upper bound) and
    against the four-point polygon per slice: volumetric DSC per structure.
"""

from __future__ import annotations

import json
import os
import re
import time

import numpy as np

from dlset_jax import corrections, files, metrics, real_benchmark, targets, volume
from dlset_jax import segmenter as seglib

MAX_CLICKS = 20
CURVE_CLICKS = 10
NOC_TARGETS = (0.85, 0.90)
JITTERS = (1, 2, 4)


def _dice(a, b) -> float:
    """DSC of 2-D masks, or of `(S, H, W)` volumes (voxel counts)."""
    return float(metrics.volume_overlap(a, b)["dsc"])


def click_curve(seg, obj: dict, points, max_clicks: int = MAX_CLICKS) -> dict:
    """DSC after the four points and after each corrective click; latency per call.

    `obj`: `image`, `mask` (H, W) bool, optional `spacing`. Stops early once the mask
    is exact (the remaining points of the curve keep its DSC) or, past `CURVE_CLICKS`,
    once every NoC target is reached.
    """
    if not seg.takes_corrections:
        raise ValueError(
            "the interactive benchmark needs a model that takes corrective clicks "
            "(trained with clicks.enabled, e.g. configs/default.py:interactive)"
        )
    gt = np.asarray(obj["mask"], bool)
    ann = seglib.Annotation(points)
    t0 = time.perf_counter()
    o = seg.refine(obj["image"], ann, obj.get("spacing"))
    latency = [time.perf_counter() - t0]
    y0, x0, y1, x1 = o.window
    inside = np.zeros_like(gt)
    inside[y0:y1, x0:x1] = True  # the user corrects what the crop can show
    dsc = [_dice(o.mask, gt)]
    while len(dsc) <= max_clicks:
        x, y, sign = corrections.next_click_host(o.mask & inside, gt & inside)
        done = len(dsc) > CURVE_CLICKS and dsc[-1] >= max(NOC_TARGETS)
        if sign == 0 or done:
            dsc += [dsc[-1]] * (max_clicks + 1 - len(dsc))
            break
        ann.add(x, y, positive=sign > 0)
        t0 = time.perf_counter()
        o = seg.refine(obj["image"], ann, obj.get("spacing"))
        latency.append(time.perf_counter() - t0)
        dsc.append(_dice(o.mask, gt))
    return {"dsc": dsc, "latency_s": latency, "clicks": ann.corrections.tolist()}


def noc(dsc, target: float) -> tuple[int, bool]:
    """`(clicks needed, reached)`: the first k with `dsc[k] >= target`, else the last k."""
    for k, v in enumerate(dsc):
        if v >= target:
            return k, True
    return len(dsc) - 1, False


def _stats(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def summarize_curves(records: list[dict]) -> dict:
    curves = np.asarray([r["dsc"] for r in records])
    out = {
        "n": len(records),
        "curve_mean": curves.mean(0)[: CURVE_CLICKS + 1].tolist(),
        "curve_std": curves.std(0)[: CURVE_CLICKS + 1].tolist(),
        "curve_area": float(curves[:, : CURVE_CLICKS + 1].mean()),
        "polygon": _stats([r["baseline_dsc"] for r in records]),
    }
    for t in NOC_TARGETS:
        ks, ok = zip(*(noc(r["dsc"], t) for r in records), strict=True)
        out[f"noc@{round(t * 100)}"] = {**_stats(ks), "failures": int(len(ok) - sum(ok))}
    lat = np.concatenate([r["latency_s"][1:] for r in records if len(r["latency_s"]) > 1] or [[]])
    if lat.size:
        out["latency_ms"] = {
            "p50": float(np.percentile(lat, 50) * 1e3),
            "p95": float(np.percentile(lat, 95) * 1e3),
            "n": int(lat.size),
        }
    return out


def run_curves(seg, objects: list[dict], jitter: int = 0, seed: int = 0, max_clicks=MAX_CLICKS):
    """`click_curve` of every object from its extreme points (jittered by `jitter` px)."""
    rng = np.random.default_rng([seed, jitter])
    records = []
    for obj in objects:
        pts = real_benchmark.clicks(obj["mask"], jitter, rng)
        rec = click_curve(seg, obj, pts, max_clicks)
        poly = targets.polygon_mask(pts, obj["mask"].shape)
        rec.update(baseline_dsc=_dice(poly, obj["mask"]), points=pts.tolist(), **_tags(obj))
        records.append(rec)
    return records


def _tags(obj):
    return {k: obj[k] for k in ("class", "id") if k in obj}


def jitter_robustness(seg, objects, jitters=JITTERS, seed: int = 0) -> dict:
    """Mean DSC after the four points and after 3 corrective clicks, per jitter."""
    out = {}
    for j in jitters:
        recs = run_curves(seg, objects, jitter=j, seed=seed, max_clicks=3)
        out[j] = {
            "four_clicks": _stats([r["dsc"][0] for r in recs]),
            "three_corrections": _stats([r["dsc"][3] for r in recs]),
            "polygon": _stats([r["baseline_dsc"] for r in recs]),
        }
    return out


# ----------------------------------------------------------------- 3-D


def slab_structures(objects: list[dict]) -> tuple[np.ndarray, list[int], dict]:
    """The real benchmark's test objects as a stack of slices and one mask stack per
    structure: `(images (S, H, W), slice numbers, {class: (S, H, W) bool})`."""
    slice_of, number_of = {}, []
    for o in objects:
        m = re.search(r":(\d+)/\d+$", o["id"])
        if m is None:
            raise ValueError(f"object id {o['id']!r} names no slice")
        number_of.append(int(m.group(1)))
        slice_of.setdefault(number_of[-1], o["image"])
    numbers = sorted(slice_of)
    if numbers != list(range(numbers[0], numbers[-1] + 1)):
        raise ValueError(f"the slices {numbers} are not consecutive")
    images = np.stack([slice_of[s] for s in numbers])
    structures = {}
    for o, s in zip(objects, number_of, strict=True):
        st = structures.setdefault(o["class"], np.zeros(images.shape, bool))
        st[numbers.index(s)] |= o["mask"]
    return images, numbers, structures


def run_3d(seg, images, structures: dict, spacing=None) -> list[dict]:
    """Per structure: volumetric DSC from 6 clicks vs slice-by-slice exact points and
    the per-slice polygon."""
    rows = []
    for name, gt in sorted(structures.items()):
        present = np.flatnonzero(gt.any((1, 2)))
        lo, hi = int(present[0]), int(present[-1])
        mid = int(present[len(present) // 2])
        res = volume.propagate(
            seg, images, mid, targets.extreme_points(gt[mid]), extent=(lo, hi), spacing=spacing
        )
        upper = np.zeros_like(gt)
        poly = np.zeros_like(gt)
        for s in present:
            pts = targets.extreme_points(gt[s])
            upper[s] = seg.segment(images[s], [pts], spacing).objects[0].mask
            poly[s] = targets.polygon_mask(pts, gt[s].shape)
        rows.append(
            {
                "class": name,
                "slices": len(present),
                "dsc_6_clicks": _dice(res.labels, gt),
                "dsc_per_slice_clicks": _dice(upper, gt),
                "dsc_polygon_per_slice": _dice(poly, gt),
                "clicks_per_slice_clicks": 4 * len(present),
                "stops": res.stops,
            }
        )
    return rows


# ----------------------------------------------------------------- reports


def table(result: dict) -> str:
    """Markdown: curve, NoC and latency per data set; the jitter and 3-D tables."""
    lines = []
    ks = [0, 1, 2, 3, 5, 10]
    lines.append(
        "| objects | n | polygon | "
        + " | ".join(f"DSC {k} clicks" if k else "DSC 4 points" for k in ks)
        + " | area (0-10) | NoC@85 | NoC@90 | latency p50 / p95 ms |"
    )
    lines.append("|" + "---|" * (len(ks) + 7))
    for name, s in result["sets"].items():
        cells = [f"{s['curve_mean'][k] * 100:.1f} ± {s['curve_std'][k] * 100:.1f}" for k in ks]
        noc_cells = [
            f"{s[f'noc@{t}']['mean']:.2f} ({s[f'noc@{t}']['failures']} fail)" for t in (85, 90)
        ]
        lat = s.get("latency_ms", {})
        lines.append(
            f"| {name} | {s['n']} | {s['polygon']['mean'] * 100:.1f} | "
            + " | ".join(cells)
            + f" | {s['curve_area'] * 100:.1f} | "
            + " | ".join(noc_cells)
            + f" | {lat.get('p50', float('nan')):.0f} / {lat.get('p95', float('nan')):.0f} |"
        )
    if result.get("jitter"):
        lines += ["", "| jitter | DSC 4 points | DSC 3 clicks | polygon |", "|---|---|---|---|"]
        for j, v in result["jitter"].items():
            lines.append(
                f"| +-{j} px | "
                + " | ".join(
                    f"{v[k]['mean'] * 100:.1f} ± {v[k]['std'] * 100:.1f}"
                    for k in ("four_clicks", "three_corrections", "polygon")
                )
                + " |"
            )
    if result.get("3d"):
        lines += [
            "",
            "| structure | slices | 3-D DSC, 6 clicks | per-slice exact points (4/slice) "
            "| polygon per slice |",
            "|---|---|---|---|---|",
        ]
        rows = result["3d"]
        for r in rows:
            lines.append(
                f"| {r['class']} | {r['slices']} | {r['dsc_6_clicks'] * 100:.1f} | "
                f"{r['dsc_per_slice_clicks'] * 100:.1f} | {r['dsc_polygon_per_slice'] * 100:.1f} |"
            )
        mean = {k: np.mean([r[k] for r in rows]) * 100 for k in rows[0] if k.startswith("dsc")}
        lines.append(
            f"| **mean** | | {mean['dsc_6_clicks']:.1f} | {mean['dsc_per_slice_clicks']:.1f} "
            f"| {mean['dsc_polygon_per_slice']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def curve_figure(result: dict, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, s in result["sets"].items():
        m, sd = np.asarray(s["curve_mean"]) * 100, np.asarray(s["curve_std"]) * 100
        k = np.arange(len(m))
        (line,) = ax.plot(k, m, "o-", ms=3, label=f"{name} ({s['n']} objects)")
        ax.fill_between(k, m - sd, m + sd, color=line.get_color(), alpha=0.15)
        ax.axhline(s["polygon"]["mean"] * 100, color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("corrective clicks after the four extreme points")
    ax.set_ylabel("DSC % (mean ± std)")
    ax.set_title("dotted: the four-point polygon", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    files.atomic_savefig(fig, path)


def write(result: dict, outdir: str) -> None:
    """`table.md`, `results.json` and `curve.png` under `outdir` (atomically)."""
    files.atomic_write_text(os.path.join(outdir, "table.md"), table(result))
    files.atomic_write_text(
        os.path.join(outdir, "results.json"), json.dumps(result, indent=1, default=float)
    )
    curve_figure(result, os.path.join(outdir, "curve.png"))
