"""Segments objects of your own image from four clicks each, with a trained workdir.

    # a PNG/JPEG/TIFF image, one object per --points (left right top bottom, "x,y")
    python predict.py --workdir workdirs/default --image slice.png \\
        --points "31,60 97,58 62,24 66,95" --out-dir out/
    # a NIfTI volume: a slice index for the command-line points ...
    python predict.py --workdir workdirs/default --image case.nii.gz --slice 12 \\
        --points "31,60 97,58 62,24 66,95" --out-dir out/
    # ... or a points file with a slice column (every slice that has points)
    python predict.py --workdir workdirs/default --image case.nii.gz \\
        --points-file clicks.csv --ground-truth case_label.nii.gz --out-dir out/
    # a DICOM file (pydicom); pixel spacing from the file
    python predict.py --workdir workdirs/default --image im0001.dcm --points-file clicks.json \\
        --out-dir out/

Points files, one object per line: CSV with a header naming the columns x1,y1,x2,y2,
x3,y3,x4,y4 (left, right, top, bottom) and optionally class, slice, label; or JSON:
a list (or {"objects": [...]}, or JSON Lines) of {"points": [[x, y] x 4],
"class": ..., "slice": ..., "label": ...}. `label` names the ground-truth label value
of the object (see --ground-truth).

Outputs in --out-dir (PREFIX = --prefix or the input's name):
  PREFIX_mask.png         label map: 0 background, object k (1..N, given order) = k
                          (PREFIX_mask.nii[.gz] for NIfTI input: the label volume, with
                          the input's affine and header; slices without points are 0)
  PREFIX_overlay.png      contours and clicks (PREFIX_overlay_sliceNNN.png per slice
                          for volumes)
  PREFIX_summary.json     boxes, areas (mm^2 where the pixel spacing is known),
                          timings, and with --ground-truth the metrics of eval.py
With --ground-truth (a mask / label map image, or a label volume for NIfTI input), the
ground truth of object k is: the label value in its points-file `label` column when
given; else, for a mask with a single non-zero value, the connected component of the
mask that overlaps the object's four-point polygon most; else label value k.
Nothing is written unless everything succeeded (temporary files, renamed at the end).
Errors (unreadable input, missing checkpoint, checkpoint/config mismatch, bad points)
are one line on stderr and exit status 1.

Volumes: slice `--slice` along `--axis` (default 2), rotated by 90 degrees like the
training data (`--no-rot90` to keep the array layout); points are (x, y) in that
rotated slice, i.e. in the overlay picture. Intensities of non-uint8 inputs are mapped
to [0, 255] by clipping at the 0.5/99.5 percentiles (of the whole volume for NIfTI),
as the data set builders do.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import sys
import tempfile
import time

import numpy as np

PROG = "predict.py"
VOLUME_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
_SEGMENTERS: dict = {}  # (workdir, step, bucket, threshold, mtime) -> Segmenter (in-process reuse)


class CliError(Exception):
    """A problem reported as one line on stderr."""


# ----------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Segment objects of an image from their four extreme points "
        "(left, right, top, bottom) with a trained deep level set workdir.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--workdir", required=True, help="training workdir (holds checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument(
        "--image",
        required=True,
        help="PNG/JPEG/TIFF/BMP image, NIfTI volume (.nii, .nii.gz) or DICOM file",
    )
    p.add_argument(
        "--points",
        action="append",
        default=[],
        metavar='"x,y x,y x,y x,y"',
        help="one object's four points: left right top bottom (repeatable)",
    )
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=[],
        metavar="NAME",
        help="class name of the --points object of the same position (repeatable)",
    )
    p.add_argument("--points-file", help="CSV or JSON file, one object per line (see below)")
    p.add_argument(
        "--slice",
        type=int,
        default=None,
        help="volume slice (NIfTI) or frame (multi-frame DICOM) of the --points",
    )
    p.add_argument("--axis", type=int, default=2, help="volume axis to slice along (default 2)")
    p.add_argument(
        "--no-rot90",
        dest="rot90",
        action="store_false",
        help="do not rotate volume slices by 90 degrees (as the training data)",
    )
    p.add_argument("--channel", type=int, default=0, help="channel of a 4-D volume")
    p.add_argument(
        "--spacing",
        default=None,
        metavar="ROW_MM,COL_MM",
        help="pixel size in mm (overrides the file's; needed for mm^2 of PNG/JPEG)",
    )
    p.add_argument(
        "--ground-truth",
        default=None,
        help="mask / label map (image or NIfTI volume) to score the objects against",
    )
    p.add_argument("--out-dir", required=True, help="output directory (created)")
    p.add_argument("--prefix", default=None, help="output file name prefix (default: input name)")
    p.add_argument(
        "--reorder",
        action="store_true",
        help="put points given in another order in order when unambiguous",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="mask = phi <= threshold (default: the config's levelset.threshold)",
    )
    p.add_argument("--bucket-size", type=int, default=8, help="batch bucket size (objects)")
    return p


def _input_kind(path: str) -> str:
    low = path.lower()
    if low.endswith(VOLUME_SUFFIXES):
        return "nifti"
    if low.endswith(IMAGE_SUFFIXES):
        return "image"
    if low.endswith(DICOM_SUFFIXES):
        return "dicom"
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise CliError(f"{path}: cannot read ({e.strerror or e})") from e
    if head[128:132] == b"DICM":
        return "dicom"
    raise CliError(
        f"{path}: unknown input format (expected an image {IMAGE_SUFFIXES}, a NIfTI "
        f"volume {VOLUME_SUFFIXES} or a DICOM file)"
    )


def _stem(path: str) -> str:
    name = os.path.basename(path)
    low = name.lower()
    for s in VOLUME_SUFFIXES + IMAGE_SUFFIXES + DICOM_SUFFIXES:
        if low.endswith(s):
            return name[: -len(s)]
    return name


# ----------------------------------------------------------------- points


def parse_points(text: str, what: str) -> np.ndarray:
    """'x1,y1 x2,y2 x3,y3 x4,y4' -> (4, 2)."""
    parts = text.replace(";", " ").split()
    try:
        pts = np.array([[float(v) for v in part.split(",")] for part in parts], np.float64)
    except ValueError:
        pts = None
    if pts is None or pts.shape != (4, 2):
        raise CliError(
            f"{what}: expected four x,y pairs (left right top bottom) like "
            f'"31,60 97,58 62,24 66,95", got {text!r}'
        )
    return pts


def read_points_file(path: str) -> list[dict]:
    """Objects of a CSV / JSON / JSON Lines file: dicts with points, class, slice, label."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"{path}: cannot read points file ({e})") from e
    if path.lower().endswith(".csv"):
        return _points_from_csv(text, path)
    try:
        data = json.loads(text)
        rows = data.get("objects") if isinstance(data, dict) else data
        if isinstance(data, dict) and rows is None:
            rows = [data]
    except json.JSONDecodeError:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise CliError(f"{path}: line {n} is not JSON ({e.msg})") from e
    if not isinstance(rows, list):
        raise CliError(f"{path}: expected a list of objects")
    out = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "points" not in row:
            raise CliError(f"{path}: object {n} needs a 'points' entry [[x, y] x 4]")
        try:
            pts = np.asarray(row["points"], np.float64)
        except (TypeError, ValueError):
            pts = np.zeros(0)
        if pts.shape != (4, 2):
            raise CliError(
                f"{path}: object {n}: 'points' must be four [x, y] pairs (left, right, "
                f"top, bottom), got {row['points']!r}"
            )
        out.append(
            {
                "points": pts,
                "class": _opt_str(row.get("class")),
                "slice": _opt_int(row.get("slice"), path, n, "slice"),
                "label": _opt_int(row.get("label"), path, n, "label"),
            }
        )
    if not out:
        raise CliError(f"{path}: no objects")
    return out


def _opt_str(v):
    return None if v is None or v == "" else str(v)


def _opt_int(v, path, n, name):
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if not np.isfinite(f) or f != int(f):
        raise CliError(f"{path}: object {n}: {name} must be an integer, got {v!r}")
    return int(f)


def _points_from_csv(text, path):
    cols = [f"{c}{i}" for i in range(1, 5) for c in "xy"]
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    missing = [c for c in cols if c not in fields]
    if missing:
        raise CliError(
            f"{path}: CSV header must name the columns {','.join(cols)} (plus optional "
            f"class, slice, label); missing {','.join(missing)}"
        )
    out = []
    for n, row in enumerate(reader, 1):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        try:
            vals = [float(row[c]) for c in cols]
        except ValueError:
            raise CliError(f"{path}: line {n + 1}: point coordinates must be numbers") from None
        out.append(
            {
                "points": np.asarray(vals, np.float64).reshape(4, 2),
                "class": _opt_str(row.get("class")),
                "slice": _opt_int(row.get("slice"), path, n, "slice"),
                "label": _opt_int(row.get("label"), path, n, "label"),
            }
        )
    if not out:
        raise CliError(f"{path}: no objects")
    return out


# ----------------------------------------------------------------- inputs


def _volume_slice(vol, axis, index, rot90):
    """Slice `index` along `axis` as the training data's builder shows it."""
    s = np.moveaxis(vol, axis, 0)[index]
    return np.ascontiguousarray(np.rot90(s) if rot90 else s)


def _slice_spacing(zooms, axis, rot90):
    in_plane = [zooms[a] for a in range(3) if a != axis]
    return (in_plane[1], in_plane[0]) if rot90 else (in_plane[0], in_plane[1])


def read_input(path: str, kind: str, args):
    """-> dict(kind, frames: callable index -> 2-D image, n_frames, spacing, volume extras)."""
    from dlset_jax.data import readers

    if kind == "image":
        img = readers.read_image(path)
        return {"kind": kind, "image": img, "spacing": None}
    if kind == "nifti":
        import nibabel as nib

        vol, zooms = readers.read_volume(path)
        nii = nib.load(path)
        if vol.ndim == 4:
            if not 0 <= args.channel < vol.shape[3]:
                raise CliError(
                    f"{path}: --channel {args.channel} out of range for a 4-D volume of "
                    f"shape {vol.shape}"
                )
            vol = vol[..., args.channel]
        elif vol.ndim != 3:
            raise CliError(f"{path}: expected a 3-D volume, got shape {vol.shape}")
        if args.axis not in (0, 1, 2):
            raise CliError(f"--axis must be 0, 1 or 2, got {args.axis}")
        vol8 = vol if vol.dtype == np.uint8 else readers.intensity_to_uint8(vol)
        return {
            "kind": kind,
            "volume": vol8,
            "shape": vol.shape,
            "affine": nii.affine,
            "header": nii.header,
            "n_frames": vol.shape[args.axis],
            "spacing": _slice_spacing(zooms[:3], args.axis, args.rot90),
        }
    return read_dicom(path)


def read_dicom(path: str) -> dict:
    try:
        import pydicom
    except ImportError as e:
        raise CliError(f"{path}: reading DICOM needs pydicom (pip install pydicom)") from e
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for bad or compressed files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CliError(f"{path}: cannot read DICOM pixels ({type(e).__name__}: {msg})") from e
    arr = np.asarray(arr)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    is_rgb = arr.shape[-1] == 3 and photometric not in ("MONOCHROME1", "MONOCHROME2")
    if not is_rgb:
        arr = arr.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1) or 1) + float(
            getattr(ds, "RescaleIntercept", 0) or 0
        )
        if photometric == "MONOCHROME1":
            arr = arr.max() - arr
    sp = getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None)
    spacing = (float(sp[0]), float(sp[1])) if sp is not None and len(sp) == 2 else None
    if frames > 1:
        from dlset_jax.data import readers

        vol8 = arr if arr.dtype == np.uint8 else readers.intensity_to_uint8(arr)
        return {"kind": "dicom", "frames": vol8, "n_frames": frames, "spacing": spacing}
    return {"kind": "dicom", "image": arr, "spacing": spacing}


def _frame(inp, index, args):
    if inp["kind"] == "nifti":
        return _volume_slice(inp["volume"], args.axis, index, args.rot90)
    return inp["frames"][index]


def read_ground_truth(path: str, inp: dict, args):
    """-> function slice index (or None) -> (H, W) int label map."""
    from dlset_jax.data import readers

    low = path.lower()
    if low.endswith(VOLUME_SUFFIXES):
        lab, _ = readers.read_volume(path)
        if lab.ndim == 4 and lab.shape[3] == 1:
            lab = lab[..., 0]
        if inp["kind"] != "nifti" or lab.shape != inp["shape"][:3]:
            raise CliError(
                f"{path}: ground-truth volume of shape {lab.shape} does not match the "
                f"input {inp.get('shape', 'image')}"
            )
        lab = np.rint(lab).astype(np.int64) if np.issubdtype(lab.dtype, np.floating) else lab
        return lambda i: _volume_slice(lab, args.axis, i, args.rot90)
    lab = readers.read_mask(path)
    return lambda i: lab


def ground_truth_mask(labels, obj, k, baseline, path):
    """The object's ground-truth mask (rule in the README / --help)."""
    from scipy import ndimage

    if obj.get("label") is not None:
        gt = labels == obj["label"]
        what = f"label {obj['label']}"
    else:
        values = np.unique(labels[labels != 0])
        if len(values) == 1:  # a binary mask: the component under the object's clicks
            comp, n = ndimage.label(labels != 0)
            overlap = np.bincount(comp[baseline], minlength=n + 1)[1:] if n else np.zeros(0)
            gt = comp == (int(np.argmax(overlap)) + 1) if n and overlap.max() > 0 else labels != 0
            what = "the mask's component under the clicks"
        else:
            gt = labels == k
            what = f"label {k} (object number)"
    if not gt.any():
        raise CliError(
            f"{path}: no ground truth for object {k} ({what} is empty); give a 'label' "
            "column in the points file"
        )
    return gt


# ----------------------------------------------------------------- outputs


def _png_bytes(arr) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    arr = np.asarray(arr)
    if arr.dtype == np.uint16:
        Image.fromarray(arr.astype(np.uint16)).save(buf, format="PNG")
    else:
        Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _nifti_bytes(labels, affine, header, gz: bool) -> bytes:
    import nibabel as nib

    hdr = header.copy()
    hdr.set_data_dtype(labels.dtype)
    img = nib.Nifti1Image(labels, affine, header=hdr)
    img.set_qform(affine, code=int(header["qform_code"]) or 1)
    img.set_sform(affine, code=int(header["sform_code"]) or 1)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    data = img.to_bytes()
    return gzip.compress(data, mtime=0) if gz else data


def write_outputs(out_dir: str, files: dict[str, bytes]) -> None:
    """Writes every file to a temporary name first, then renames them all."""
    os.makedirs(out_dir, exist_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    tmps = []
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
            tmps.append((tmp, os.path.join(out_dir, name)))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        for tmp, final in tmps:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise


# ----------------------------------------------------------------- main


def _get_segmenter(args):
    from dlset_jax import predict as predict_lib

    ckdir = os.path.join(args.workdir, "checkpoints")
    if not os.path.isdir(ckdir):
        raise CliError(
            f"{args.workdir}: no checkpoints/ folder: not a training workdir (train "
            "first: python train.py --workdir ...)"
        )
    key = (
        os.path.abspath(args.workdir),
        args.step,
        args.bucket_size,
        args.threshold,
        os.path.getmtime(ckdir),
    )
    if key not in _SEGMENTERS:
        _SEGMENTERS.clear()
        _SEGMENTERS[key] = predict_lib.Segmenter.from_workdir(
            args.workdir, args.step, bucket_size=args.bucket_size, threshold=args.threshold
        )
    return _SEGMENTERS[key]


def run(args) -> dict:
    from dlset_jax import predict as predict_lib

    t_start = time.perf_counter()
    if not args.points and not args.points_file:
        raise CliError("no objects: give --points (repeatable) or --points-file")
    if args.classes and len(args.classes) != len(args.points):
        raise CliError(f"{len(args.classes)} --class names for {len(args.points)} --points")
    kind = _input_kind(args.image)
    if not os.path.isfile(args.image):
        raise CliError(f"{args.image}: no such file")
    objects = [
        {
            "points": parse_points(t, f"--points #{i + 1}"),
            "class": args.classes[i] if args.classes else None,
            "slice": args.slice,
            "label": None,
        }
        for i, t in enumerate(args.points)
    ]
    if args.points_file:
        objects += read_points_file(args.points_file)
    inp = read_input(args.image, kind, args)
    spacing = inp["spacing"]
    if args.spacing:
        try:
            spacing = tuple(float(v) for v in args.spacing.split(","))
            spacing = spacing * 2 if len(spacing) == 1 else spacing
            assert len(spacing) == 2 and min(spacing) > 0
        except (ValueError, AssertionError):
            raise CliError(
                f"--spacing must be ROW_MM,COL_MM (positive), got {args.spacing!r}"
            ) from None
    stacked = "n_frames" in inp
    groups: dict = {}
    for k, obj in enumerate(objects, 1):
        idx = obj["slice"]
        if stacked:
            if idx is None:
                raise CliError(
                    f"object {k}: no slice index for a volume of {inp['n_frames']} slices: "
                    "give --slice or a slice column in the points file"
                )
            if not 0 <= idx < inp["n_frames"]:
                raise CliError(f"object {k}: slice {idx} out of range (0..{inp['n_frames'] - 1})")
        elif idx not in (None, 0):
            raise CliError(f"object {k}: slice {idx} given for a 2-D image")
        else:
            idx = None
        groups.setdefault(idx, []).append(k)
    frames = {i: (_frame(inp, i, args) if i is not None else inp["image"]) for i in groups}
    for i, ks in groups.items():  # validate every click before loading the model
        for k in ks:
            try:
                objects[k - 1]["points"] = predict_lib.check_points(
                    objects[k - 1]["points"], frames[i].shape, obj=k, reorder=args.reorder
                )
            except ValueError as e:
                where = f" (slice {i})" if i is not None else ""
                raise CliError(f"{e}{where}") from None
    gt_of = read_ground_truth(args.ground_truth, inp, args) if args.ground_truth else None
    t_read = time.perf_counter()
    seg = _get_segmenter(args)
    t_model = time.perf_counter()

    stem = args.prefix or _stem(args.image)
    files, per_object, metrics, slices = {}, {}, [], []
    for i in sorted(groups, key=lambda v: -1 if v is None else v):
        ks = groups[i]
        res = seg.segment(
            frames[i],
            [objects[k - 1]["points"] for k in ks],
            spacing=spacing,
            classes=[objects[k - 1]["class"] for k in ks],
        )
        for k, o in zip(ks, res.objects):
            o.index = k - 1  # number objects over the whole call
            per_object[k] = dict(o.summary(), **({"slice": i} if i is not None else {}))
        slices.append({"slice": i, "objects": ks, **{k_: v for k_, v in res.timings.items()}})
        if gt_of is not None:
            labels = gt_of(i)
            if labels.shape != res.image_shape:
                raise CliError(
                    f"{args.ground_truth}: ground truth of shape {labels.shape} does not "
                    f"match the image {res.image_shape}"
                )
            gts = [
                ground_truth_mask(
                    labels, objects[o.index], o.index + 1, o.baseline_mask, args.ground_truth
                )
                for o in res.objects
            ]
            for rec in predict_lib.score_objects(res, gts):
                metrics.append(dict(rec, **({"slice": i} if i is not None else {})))
        name = f"{stem}_overlay.png" if i is None else f"{stem}_overlay_slice{i:03d}.png"
        files[name] = _png_bytes(predict_lib.overlay_image(frames[i], res))
        if kind != "nifti":
            files[f"{stem}_mask.png"] = _png_bytes(res.label_map())
        else:
            slices[-1]["label_map"] = res.label_map(np.uint8 if len(objects) < 256 else np.uint16)
    if kind == "nifti":
        dtype = np.uint8 if len(objects) < 256 else np.uint16
        moved = np.zeros(np.moveaxis(np.zeros(inp["shape"][:3], bool), args.axis, 0).shape, dtype)
        for s in slices:
            lm = s.pop("label_map")
            moved[s["slice"]] = np.rot90(lm, k=-1) if args.rot90 else lm
        labels = np.moveaxis(moved, 0, args.axis)
        gz = args.image.lower().endswith(".gz")
        files[f"{stem}_mask.nii" + (".gz" if gz else "")] = _nifti_bytes(
            labels, inp["affine"], inp["header"], gz
        )
    t_done = time.perf_counter()
    summary = {
        "input": os.path.abspath(args.image),
        "kind": kind,
        "checkpoint": {"workdir": os.path.abspath(args.workdir), "step": seg.step},
        "threshold": seg.threshold,
        "spacing_mm": None if spacing is None else [float(v) for v in spacing],
        "objects": [per_object[k] for k in sorted(per_object)],
        "timings": {
            "read_s": t_read - t_start,
            "load_model_s": t_model - t_read,
            "segment_s": t_done - t_model,
            "total_s": t_done - t_start,
            "slices": slices,
        },
        "outputs": sorted(list(files) + [f"{stem}_summary.json"]),
    }
    if metrics:
        from dlset_jax import metrics as metrics_lib

        summary["metrics"] = metrics
        summary["metrics_summary"] = metrics_lib.summarize(
            [{k: v for k, v in m.items() if k not in ("object", "slice", "units")} for m in metrics]
        )
    files[f"{stem}_summary.json"] = json.dumps(summary, indent=1, default=_json_default).encode()
    write_outputs(args.out_dir, files)
    return summary


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.bool_,)):
        return bool(v)
    raise TypeError(type(v).__name__)


def _quiet():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
        absl_logging.set_stderrthreshold("error")
    except ImportError:
        pass
    logging.getLogger().setLevel(logging.ERROR)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _quiet()
    try:
        from dlset_jax import config as config_lib
        from dlset_jax import predict as predict_lib
        from dlset_jax.data import readers

        summary = run(args)
    except (
        CliError,
        readers.DataError,
        config_lib.ConfigError,
        predict_lib.CheckpointMismatchError,
        FileNotFoundError,
        ValueError,
        OSError,
    ) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, config_lib.ConfigError):
            msg = f"config mismatch: {msg}"
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 1
    for o in summary["objects"]:
        area = f"{o['area_px']} px" + (
            f" = {o['area_mm2']:.1f} mm^2" if o["area_mm2"] is not None else ""
        )
        where = f" slice {o['slice']}" if "slice" in o else ""
        print(f"object {o['object']}{where} ({o['class'] or 'object'}): {area}")
    for m in summary.get("metrics", []):
        print(
            f"object {m['object']}: DSC {m['dsc']:.3f} (four-point polygon {m['baseline_dsc']:.3f}), "
            f"HD {m['hd']:.2f} {m['units']}, ABD {m['abd']:.2f} {m['units']}"
        )
    print(f"wrote {', '.join(summary['outputs'])} to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
