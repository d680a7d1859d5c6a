"""Segment image files from clicks: read an image or volume and a click file, write results.

What `predict.py` does, as a library function (`run(Request(...))`), so that the
command line stays a thin absl entry point and the behaviour is testable in-process.

Inputs: PNG/JPEG/TIFF/BMP (`page` for multi-page TIFF), NIfTI volumes (a slice index
per object, along `axis`, rotated by 90 degrees like the training data unless
`rot90=False`), DICOM (a file's own display window where it has one) and a folder of
one DICOM series (`readers.read_dicom_series`: read as a volume in NIfTI's order, the
slices counted along the slice normal). Points files:
see `readers.read_points_file` (four extreme points per object, and corrective clicks
for a model that takes them).

Outputs in `out_dir` (PREFIX = `prefix` or the input's name), written all or nothing
(`files.atomic_write_files`):
  PREFIX_mask.png         label map: 0 background, object k (1..N, given order) = k
                          (where objects overlap, the later one; an object covered
                          all over is warned about in the summary)
                          (PREFIX_mask.nii[.gz] for NIfTI input: the label volume, with
                          the input's affine and header, a DICOM series' own affine;
                          slices without points are 0; PREFIX_mask_sliceNNN.png per
                          clicked frame of a multi-frame DICOM file)
  PREFIX_overlay.png      contours and clicks (PREFIX_overlay_sliceNNN.png per slice)
  PREFIX_summary.json     boxes, areas (mm^2 where the pixel spacing is known), the
                          threshold and where it came from, the intensity mapping
                          (and how many NaN / inf intensities `nonfinite="min"` read as
                          the lowest finite one),
                          warnings about the clicks (and about a ground truth whose
                          affine differs from the image's), timings, and with `ground_truth`
                          the metrics of eval.py (on each clicked slice; for a
                          propagated structure also `volume_metrics`: its volumetric
                          DSC / IoU / RVD, voxels, mm^3, slices and per-slice DSC against
                          its ground truth through the volume); each object's
                          `contours`: its outline as closed polylines of `[x, y]` px
                          in the clicks' coordinates (the level set's sub-pixel
                          contour, `outlines.level_lines`;
                          for a volume on the slice as shown, and each propagated
                          slice's outline of its kept mask under `propagation`)
With `ground_truth` (a mask / label map image, or a label volume for NIfTI input), the
ground truth of object k is: the label value in its points-file `label` column when
given; else, for a mask with a single non-zero value, the connected component of the
mask that overlaps the object's four-point polygon most; else label value k. Through a
volume (`propagate`) the same rule holds, the connected part taken in 3-D
(`volume_ground_truth`).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import time

import numpy as np

from dlset_jax import outlines, readers, segmenter
from dlset_jax.files import atomic_write_files

VOLUME_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
VOLUME_KINDS = ("nifti", "dicom_series")  # read as volumes, written as NIfTI label volumes
KIND_NAMES = {
    "image": "a 2-D image",
    "nifti": "a NIfTI volume",
    "dicom": "a single DICOM file",
    "dicom_series": "a DICOM series folder",
}
_SEGMENTERS: dict = {}  # (workdir, step, bucket, threshold, mtime) -> Segmenter (in-process reuse)


class RequestError(ValueError):
    """A request that cannot be carried out; the message says why."""


@dataclasses.dataclass
class Request:
    """One call of `predict.py` (the flags of the same names)."""

    workdir: str
    image: str
    out_dir: str
    points: list[str] = dataclasses.field(default_factory=list)
    classes: list[str] = dataclasses.field(default_factory=list)
    points_file: str | None = None
    step: int | None = None
    slice: int | None = None
    page: int | None = None
    axis: int = 2
    rot90: bool = True
    channel: int = 0
    spacing: str | None = None
    ground_truth: str | None = None
    prefix: str | None = None
    reorder: bool = False
    threshold: float | None = None
    bucket_size: int | None = None  # None: segmenter.BUCKET_SIZE
    propagate: bool = False
    extent: str | None = None
    nonfinite: str = "error"


def input_kind(path: str) -> str:
    """'image', 'nifti' or 'dicom' from the name (DICOM also from its preamble);
    'dicom_series' for a folder (one DICOM series, a file per slice)."""
    if os.path.isdir(path):
        return "dicom_series"
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
        raise RequestError(f"{path}: cannot read ({e.strerror or e})") from e
    if head[128:132] == b"DICM":
        return "dicom"
    raise RequestError(
        f"{path}: unknown input format (expected an image {IMAGE_SUFFIXES}, a NIfTI "
        f"volume {VOLUME_SUFFIXES}, a DICOM file or a folder of one DICOM series)"
    )


def file_stem(path: str) -> str:
    """The file name without its image / volume / DICOM suffix (a folder: its name)."""
    name = os.path.basename(os.path.abspath(path))  # `.` names the current folder
    return readers.strip_suffix(name, VOLUME_SUFFIXES + IMAGE_SUFFIXES + DICOM_SUFFIXES) or name


def read_input(
    path: str,
    kind: str,
    *,
    page=None,
    channel: int = 0,
    axis: int = 2,
    rot90=True,
    nonfinite: str = "error",
):
    """One input file -> dict(kind, spacing, and `image` (2-D input) or `n_frames` with
    the frames (`frame(inp, index)`); NIfTI also volume, shape, affine, header).
    `nonfinite`: what NaN / inf intensities mean (`readers.fill_nonfinite`); how many
    were read otherwise is `nonfinite_filled`.

    Volumes are mapped to uint8 once for the whole volume (as the training volumes).
    """
    if nonfinite not in readers.NONFINITE:
        raise RequestError(f"--nonfinite must be one of {readers.NONFINITE}, got {nonfinite!r}")
    _check_axis(axis)  # before a volume is read and mapped, which takes a while
    if page is not None and kind != "image":
        raise RequestError(
            f"--page selects a page of a multi-page image file; {KIND_NAMES[kind]} "
            f"({path}) has slices or frames: give --slice (or a slice column)"
        )
    if kind == "image":
        img, n = readers.fill_nonfinite(
            readers.read_image(path, page=page, nonfinite="keep"), path, nonfinite
        )
        return {"kind": kind, "image": img, "spacing": None, "nonfinite_filled": n}
    if kind == "nifti":
        import nibabel as nib

        vol, zooms = readers.read_volume(path, nonfinite="keep")
        vol, n = readers.fill_nonfinite(vol, path, nonfinite)
        nii = nib.load(path)
        return _volume_input(
            path, kind, vol, zooms, nii.affine, nii.header, None, n, channel, axis, rot90
        )
    if kind == "dicom_series":
        series = readers.read_dicom_series(path, nonfinite=nonfinite)
        inp = _volume_input(
            path,
            kind,
            series["volume"],
            series["zooms"],
            series["affine"],
            None,
            series["intensity"],
            0,
            channel,
            axis,
            rot90,
        )
        return dict(inp, files=series["files"])
    return readers.read_dicom(path)


def _volume_input(path, kind, vol, zooms, affine, header, intensity, filled, channel, axis, rot90):
    """The dict of `read_input` for a volume (NIfTI, or a DICOM series in NIfTI's order)."""
    if vol.ndim == 4:
        if not 0 <= channel < vol.shape[3]:
            raise RequestError(
                f"{path}: --channel {channel} out of range for a 4-D volume of shape {vol.shape}"
            )
        vol = vol[..., channel]
    elif vol.ndim != 3:
        raise RequestError(f"{path}: expected a 3-D volume, got shape {vol.shape}")
    vol8 = vol if vol.dtype == np.uint8 else readers.intensity_to_uint8(vol)
    if intensity is None and vol.dtype != np.uint8:
        intensity = "clipped at the 0.5 / 99.5 percentiles of the whole volume"
    inp = {
        "kind": kind,
        "nonfinite_filled": filled,
        "intensity": intensity,
        "volume": vol8,
        "shape": vol.shape,
        "affine": affine,
        "header": header,
        "zooms": tuple(float(z) for z in zooms[:3]),
        "rot90": rot90,
    }
    return along_axis(inp, axis)


def along_axis(inp, axis: int) -> dict:
    """A volume read by `read_input`, sliced along another array `axis`: the same volume
    (not copied) with that axis's frame count and in-plane spacing."""
    _check_axis(axis)
    return dict(
        inp,
        axis=axis,
        n_frames=inp["volume"].shape[axis],
        spacing=readers.slice_spacing(inp["zooms"], axis, inp["rot90"]),
    )


def _check_axis(axis) -> None:
    if axis not in (0, 1, 2):
        raise RequestError(f"--axis must be 0, 1 or 2, got {axis}")


def label_volume(inp, slice_maps: dict, dtype) -> np.ndarray:
    """The label volume, in the NIfTI's array order, of `{slice index: (H, W) labels}`
    given in the orientation of `frame` (undoes its axis move and rotation)."""
    vol = np.zeros(inp["shape"][:3], dtype)
    for z, lm in slice_maps.items():
        readers.slice_view(vol, inp["axis"], z, inp["rot90"])[...] = lm
    return vol


def frame(inp, index):
    """Frame `index` of a volume or multi-frame DICOM read by `read_input`."""
    if inp["kind"] in VOLUME_KINDS:
        return readers.volume_slice(inp["volume"], inp["axis"], index, inp["rot90"])
    return inp["frames"][index]


def read_ground_truth(path: str, inp: dict, req):
    """-> (function slice index (or None) -> (H, W) int label map, warnings)."""
    low = path.lower()
    if low.endswith(VOLUME_SUFFIXES):
        import nibabel as nib

        lab, _ = readers.read_volume(path)
        if lab.ndim == 4 and lab.shape[3] == 1:
            lab = lab[..., 0]
        if inp["kind"] not in VOLUME_KINDS or lab.shape != inp["shape"][:3]:
            raise RequestError(
                f"{path}: ground-truth volume of shape {lab.shape} does not match the "
                f"input {inp.get('shape', 'image')}"
            )
        warnings = []
        offset = np.abs(nib.load(path).affine - inp["affine"]).max()
        if offset > 1e-3:  # the voxels are compared by index, wherever they lie
            warnings.append(
                f"the ground truth's affine differs from the image's (by up to {offset:.3g} "
                "mm): its voxels are compared by index, as if they lay where the image's do"
            )
        lab = np.rint(lab).astype(np.int64) if np.issubdtype(lab.dtype, np.floating) else lab
        return (lambda i: readers.volume_slice(lab, req.axis, i, req.rot90)), warnings
    lab = readers.read_mask(path)
    return (lambda i: lab), []


def _by_component(labels, obj) -> bool:
    """Whether object k's ground truth is the mask's connected part under its clicks (a
    mask with one non-zero value and no `label` column) rather than a label value."""
    return obj.get("label") is None and len(np.unique(labels[labels != 0])) == 1


def ground_truth_mask(labels, obj, k, baseline, path):
    """The object's ground-truth mask (rule in the README / --help)."""
    from scipy import ndimage

    if obj.get("label") is not None:
        gt = labels == obj["label"]
        what = f"label {obj['label']}"
    elif _by_component(labels, obj):  # a binary mask: the component under the clicks
        # 8-connected, as the data builders cut a mask into objects
        comp, n = ndimage.label(labels != 0, structure=np.ones((3, 3), bool))
        overlap = np.bincount(comp[baseline], minlength=n + 1)[1:] if n else np.zeros(0)
        gt = comp == (int(np.argmax(overlap)) + 1) if n and overlap.max() > 0 else labels != 0
        what = "the mask's component under the clicks"
    else:
        gt = labels == k
        what = f"label {k} (object number)"
    if not gt.any():
        present = [int(v) for v in np.unique(labels) if v != 0][:20]
        fix = (
            "name one of them in its 'label' column"
            if obj.get("label") is not None
            else "give a 'label' column in the points file"
        )
        raise RequestError(
            f"{path}: no ground truth for object {k} ({what} is empty; the labels present: "
            f"{present}); {fix}"
        )
    return gt


def volume_ground_truth(stack, start: int, obj, k, clicked_truth):
    """Object k's ground truth through the volume, `(S, H, W)` bool, by the rule that
    gave `clicked_truth` on its clicked slice `start` (`ground_truth_mask`): its label
    value, or for a mask of one value the 3-D connected part of the mask that holds the
    clicked slice's truth."""
    from scipy import ndimage

    if not _by_component(stack[start], obj):
        return stack == (obj["label"] if obj.get("label") is not None else k)
    # the clicked slice's one value, not any non-zero value: other slices of a label
    # volume may hold other structures touching this one; connected through corners
    # too, so that the clicked slice's 8-connected truth is one piece of it
    value = stack[start][clicked_truth][0]
    comp, _ = ndimage.label(stack == value, structure=np.ones((3, 3, 3), bool))
    return comp == np.bincount(comp[start][clicked_truth]).argmax()


def volume_scores(pred, truth, voxel_mm3: float | None) -> dict:
    """Volumetric DSC / IoU / RVD of a propagated object (`metrics.volume_overlap`),
    its voxel counts (and mm^3), the slices each spans, and `per_slice` (DSC and areas
    on every slice either holds: where along the walk the structure was lost)."""
    from dlset_jax import metrics as metrics_lib

    def span(m):
        zs = np.nonzero(m.any(axis=(1, 2)))[0]
        return [int(zs.min()), int(zs.max())] if len(zs) else None

    rec = metrics_lib.volume_overlap(pred, truth)
    rec.update(
        voxels=int(pred.sum()),
        truth_voxels=int(truth.sum()),
        slices=span(pred),
        truth_slices=span(truth),
        per_slice=[
            {
                "slice": int(z),
                "dsc": metrics_lib.dice(pred[z], truth[z]),
                "area_px": int(pred[z].sum()),
                "truth_px": int(truth[z].sum()),
            }
            for z in np.nonzero((pred | truth).any(axis=(1, 2)))[0]
        ],
    )
    if voxel_mm3:
        rec.update(volume_mm3=rec["voxels"] * voxel_mm3, truth_mm3=rec["truth_voxels"] * voxel_mm3)
    return rec


def _volume_metrics(walked, objects, gt_of, inp, clicked_truth) -> list[dict]:
    """`volume_scores` of each propagated object (`walked`: object -> `(S, H, W)` mask)
    against its ground truth through the volume (`volume_ground_truth`)."""
    truth = np.stack([gt_of(z) for z in range(inp["n_frames"])])
    voxel = float(np.prod(inp["zooms"][:3]))
    out = []
    for k, pred in walked.items():
        obj = objects[k - 1]
        gt = volume_ground_truth(truth, obj["slice"], obj, k, clicked_truth[k])
        out.append({"object": k, **volume_scores(pred, gt, voxel)})
    return out


def png_bytes(arr) -> bytes:
    """A 2-D uint8 / uint16 (or RGB uint8) array as PNG file contents."""
    from PIL import Image

    buf = io.BytesIO()
    arr = np.asarray(arr)
    if arr.dtype == np.uint16:
        Image.fromarray(arr.astype(np.uint16)).save(buf, format="PNG")
    else:
        Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def nifti_bytes(labels, affine, header, gz: bool) -> bytes:
    """A label volume as NIfTI file contents with the source's affine and header (a new
    header, scanner-anatomical codes, for a source that had none: a DICOM series)."""
    import nibabel as nib

    hdr = header.copy() if header is not None else nib.Nifti1Header()
    hdr.set_data_dtype(labels.dtype)
    img = nib.Nifti1Image(labels, affine, header=hdr)
    img.set_qform(affine, code=int(hdr["qform_code"]) or 1)
    img.set_sform(affine, code=int(hdr["sform_code"]) or 1)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    data = img.to_bytes()
    return gzip.compress(data, mtime=0) if gz else data


def _get_segmenter(req):
    ckdir = os.path.join(req.workdir, "checkpoints")
    if not os.path.isdir(ckdir):
        raise RequestError(
            f"{req.workdir}: no checkpoints/ folder: not a training workdir (train "
            "first: python train.py --workdir ...)"
        )
    key = (
        os.path.abspath(req.workdir),
        req.step,
        req.bucket_size,
        req.threshold,
        os.path.getmtime(ckdir),
    )
    if key not in _SEGMENTERS:
        _SEGMENTERS.clear()
        _SEGMENTERS[key] = segmenter.Segmenter.from_workdir(
            req.workdir,
            req.step,
            bucket_size=segmenter.BUCKET_SIZE if req.bucket_size is None else req.bucket_size,
            threshold=req.threshold,
        )
    return _SEGMENTERS[key]


def check_outputs(out_dir: str, prefix: str | None) -> None:
    """Where the outputs go, checked before anything is read or segmented: a folder
    that exists or can be made, and a prefix that is a plain file name."""
    if not out_dir:
        raise RequestError("--out_dir is empty: name the folder to write the outputs to")
    if prefix is not None and (
        not prefix or prefix.startswith(".") or os.sep in prefix or "/" in prefix
    ):
        raise RequestError(
            f"--prefix must be a plain file name (no folder, not starting with '.'), got "
            f"{prefix!r}; --out_dir names the folder"
        )
    here = os.path.abspath(out_dir)
    while not os.path.exists(here):  # the nearest folder that exists must take a new one
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        raise RequestError(f"--out_dir {out_dir}: {here} exists and is not a folder")
    if not os.access(here, os.W_OK | os.X_OK):
        raise RequestError(f"--out_dir {out_dir}: cannot write in {here} (permission denied)")


def run(req: Request) -> dict:
    t_start = time.perf_counter()
    if not req.points and not req.points_file:
        raise RequestError("no objects: give --points (repeatable) or --points_file")
    check_outputs(req.out_dir, req.prefix)
    if req.classes and len(req.classes) != len(req.points):
        raise RequestError(f"{len(req.classes)} --class names for {len(req.points)} --points")
    kind = input_kind(req.image)
    if kind != "dicom_series" and not os.path.isfile(req.image):
        raise RequestError(f"{req.image}: no such file")
    objects = [
        {
            "points": readers.parse_points(t, f"--points #{i + 1}"),
            "class": req.classes[i] if req.classes else None,
            "slice": req.slice,
            "label": None,
            "corrections": np.zeros((0, 3)),
            "corrections_on": {},
            "extent": _parse_extent(req.extent),
        }
        for i, t in enumerate(req.points)
    ]
    if not req.points and (req.slice is not None or req.extent):
        # the file gives each object's own slice and extent; a flag would be ignored
        raise RequestError(
            "--slice and --extent apply to the --points objects; the objects of a points "
            "file take theirs from its slice and first_slice / last_slice columns"
        )
    if req.points_file:
        objects += readers.read_points_file(req.points_file)
    if req.propagate and kind not in VOLUME_KINDS:
        raise RequestError(
            "--propagate needs a volume (NIfTI, a DICOM series folder), got "
            f"{KIND_NAMES[kind]} ({req.image})"
        )
    inp = read_input(
        req.image,
        kind,
        page=req.page,
        channel=req.channel,
        axis=req.axis,
        rot90=req.rot90,
        nonfinite=req.nonfinite,
    )
    spacing = inp["spacing"]
    if req.spacing:
        try:
            spacing = tuple(float(v) for v in req.spacing.split(","))
            spacing = spacing * 2 if len(spacing) == 1 else spacing
            assert len(spacing) == 2 and min(spacing) > 0
        except (ValueError, AssertionError):
            raise RequestError(
                f"--spacing must be ROW_MM,COL_MM (positive), got {req.spacing!r}"
            ) from None
    stacked = "n_frames" in inp
    groups: dict = {}
    for k, obj in enumerate(objects, 1):
        idx = obj["slice"]
        if stacked:
            if idx is None and inp["n_frames"] == 1:
                idx = 0  # a one-slice volume (or a 2-D NIfTI) needs no slice index
            if idx is None:
                how = "--slice" if k <= len(req.points) else "a slice column in the points file"
                raise RequestError(
                    f"object {k}: no slice index for a volume of {inp['n_frames']} slices: "
                    f"give {how}"
                )
            if not 0 <= idx < inp["n_frames"]:
                raise RequestError(
                    f"object {k}: slice {idx} out of range (0..{inp['n_frames'] - 1})"
                )
            obj["slice"] = idx  # where propagation starts (a one-slice volume: 0)
        elif idx not in (None, 0):
            raise RequestError(f"object {k}: slice {idx} given for a 2-D image")
        else:
            idx = None
        groups.setdefault(idx, []).append(k)
    frames = {i: (frame(inp, i) if i is not None else inp["image"]) for i in groups}
    for i, ks in groups.items():  # validate every click before loading the model
        for k in ks:
            try:
                objects[k - 1]["points"], _ = segmenter.check_points(
                    objects[k - 1]["points"], frames[i].shape, obj=k, reorder=req.reorder
                )
                segmenter.check_corrections(objects[k - 1]["corrections"], frames[i].shape, obj=k)
                _check_extent(objects[k - 1]["extent"], i, inp, req.propagate)
            except ValueError as e:
                where = f" (slice {i})" if i is not None else ""
                raise RequestError(f"{e}{where}") from None
            _check_corrections_on(objects[k - 1], k, i, inp, req.propagate)
    gt_of, warnings = (
        read_ground_truth(req.ground_truth, inp, req) if req.ground_truth else (None, [])
    )
    t_read = time.perf_counter()
    seg = _get_segmenter(req)
    t_model = time.perf_counter()
    try:  # before any slice is segmented
        per_slice = [  # every object's clicks on each of its slices, named by the object
            (k, c)
            for k, o in enumerate(objects, 1)
            for c in (o["corrections"], *o["corrections_on"].values())
        ]
        seg.check_accepts([c for _, c in per_slice], [k for k, _ in per_slice])
    except ValueError as e:
        raise RequestError(f"{e} (the model of {req.workdir})") from None

    stem = req.prefix or file_stem(req.image)
    intensity = inp.get("intensity")
    files, per_object, metrics, slices = {}, {}, [], []
    clicked_truth = {}  # object -> its ground truth on its clicked slice
    volume_metrics = None  # propagated objects scored through the volume
    # objects are numbered over the whole call, so the label type is the call's
    dtype = np.uint8 if len(objects) < 256 else np.uint16
    for i in sorted(groups, key=lambda v: -1 if v is None else v):
        ks = groups[i]
        res = seg.segment(
            frames[i],
            [objects[k - 1]["points"] for k in ks],
            spacing=spacing,
            classes=[objects[k - 1]["class"] for k in ks],
            corrections=[objects[k - 1]["corrections"] for k in ks],
            object_ids=ks,
        )
        intensity = intensity or res.intensity["intensity"]
        for k, o in zip(ks, res.objects, strict=True):
            o.index = k - 1  # number objects over the whole call
            per_object[k] = dict(o.summary(), **({"slice": i} if i is not None else {}))
            per_object[k]["contours"] = outlines.as_lists(o.contours())
        slices.append({"slice": i, "objects": ks, **{k_: v for k_, v in res.timings.items()}})
        if gt_of is not None:
            labels = gt_of(i)
            if labels.shape != res.image_shape:
                raise RequestError(
                    f"{req.ground_truth}: ground truth of shape {labels.shape} does not "
                    f"match the image {res.image_shape}"
                )
            gts = [
                ground_truth_mask(
                    labels, objects[o.index], o.index + 1, o.baseline_mask, req.ground_truth
                )
                for o in res.objects
            ]
            clicked_truth.update({o.index + 1: g for o, g in zip(res.objects, gts, strict=True)})
            for rec in segmenter.score_objects(res, gts):
                metrics.append(dict(rec, **({"slice": i} if i is not None else {})))
        name = f"{stem}_overlay.png" if i is None else f"{stem}_overlay_slice{i:03d}.png"
        files[name] = png_bytes(segmenter.overlay_image(frames[i], res))
        if kind in VOLUME_KINDS:
            slices[-1]["label_map"] = res.label_map(dtype)
        else:  # a multi-frame DICOM: one label map per clicked frame, as the overlays
            name = f"{stem}_mask.png" if i is None else f"{stem}_mask_slice{i:03d}.png"
            label_map = res.label_map(dtype)
            files[name] = png_bytes(label_map)
            _warn_painted_over(per_object, ks, np.unique(label_map))
    if kind in VOLUME_KINDS:
        maps = {s["slice"]: s.pop("label_map") for s in slices}
        if req.propagate:
            maps, walked = _propagate(seg, inp, objects, spacing, per_object, maps, dtype)
            if gt_of is not None:  # the whole structure scored, not only its clicked slice
                volume_metrics = _volume_metrics(walked, objects, gt_of, inp, clicked_truth)
        labels = label_volume(inp, maps, dtype)
        _warn_painted_over(per_object, list(per_object), np.unique(labels))
        if inp["header"] is not None and len(inp["header"].get_data_shape()) == 2:
            labels = labels[..., 0]  # a 2-D NIfTI (read as one slice) is written 2-D
        gz = kind == "dicom_series" or req.image.lower().endswith(".gz")
        files[f"{stem}_mask.nii" + (".gz" if gz else "")] = nifti_bytes(
            labels, inp["affine"], inp["header"], gz
        )
    t_done = time.perf_counter()
    summary = {
        "input": os.path.abspath(req.image),
        "kind": kind,
        "checkpoint": {"workdir": os.path.abspath(req.workdir), "step": seg.step},
        "threshold": seg.threshold,
        "threshold_source": seg.threshold_source,
        "intensity": intensity,
        "nonfinite_read_as_min": int(inp.get("nonfinite_filled", 0)),
        "spacing_mm": None if spacing is None else [float(v) for v in spacing],
        **({"slice_files": inp["files"]} if "files" in inp else {}),
        "objects": [per_object[k] for k in sorted(per_object)],
        "timings": {
            "read_s": t_read - t_start,
            "load_model_s": t_model - t_read,
            "segment_s": t_done - t_model,
            "total_s": t_done - t_start,
            "slices": slices,
        },
        "outputs": sorted(list(files) + [f"{stem}_summary.json"]),
        "warnings": warnings,
    }
    if volume_metrics is not None:
        summary["volume_metrics"] = volume_metrics
    if metrics:
        from dlset_jax import metrics as metrics_lib

        summary["metrics"] = metrics
        summary["metrics_summary"] = metrics_lib.summarize(
            [{k: v for k, v in m.items() if k not in ("object", "slice", "units")} for m in metrics]
        )
    files[f"{stem}_summary.json"] = json.dumps(summary, indent=1, default=_json_default).encode()
    atomic_write_files(req.out_dir, files)
    return summary


def _warn_painted_over(per_object, ks, present) -> None:
    """A warning for each object `ks` whose mask is not empty but holds no pixel of the
    label map: later objects covered all of it (the same object clicked twice?)."""
    for k in ks:
        if per_object[k]["area_px"] > 0 and k not in present:
            per_object[k]["warnings"].append(
                "not in the mask file: later objects cover all of it (where objects "
                "overlap, the label map holds the later one)"
            )


def _parse_extent(text):
    """`--extent FIRST,LAST`; either may be left empty (`8,` or `,17`: that side ends
    where the structure does)."""
    if not text:
        return None
    try:
        first, last = (int(v) if v.strip() else None for v in text.split(","))
        assert first is not None or last is not None
    except (ValueError, AssertionError):
        raise RequestError(
            f"--extent must be FIRST,LAST slice numbers (either may be empty), got {text!r}"
        ) from None
    return first, last


def _check_extent(extent, start, inp, propagate):
    if extent is None:
        return
    if not propagate:
        raise RequestError(
            "an extent (first_slice / last_slice, --extent) is given without --propagate"
        )
    first, last = extent
    lo, hi = (0 if first is None else first), (inp["n_frames"] - 1 if last is None else last)
    if not 0 <= lo <= start <= hi < inp["n_frames"]:
        raise RequestError(
            f"extent ({first}, {last}) must hold the clicked slice {start} and lie in "
            f"0..{inp['n_frames'] - 1}"
        )


def _check_corrections_on(obj, k, start, inp, propagate):
    """Corrective clicks of object `k` on slices other than its four points' (`start`):
    only in a volume, with --propagate (they act where propagation reaches their slice),
    inside the volume, its frames and the object's extent."""
    for z, clicks in obj["corrections_on"].items():
        if start is None or "n_frames" not in inp:
            raise RequestError(f"object {k}: a corrective click on slice {z} of a 2-D image")
        if not propagate:
            raise RequestError(
                f"object {k}: corrective clicks on slice {z}, its four points on slice "
                f"{start}: clicks on another slice act through propagation; give --propagate"
            )
        if not 0 <= z < inp["n_frames"]:
            raise RequestError(
                f"object {k}: corrective click on slice {z}, out of range "
                f"(0..{inp['n_frames'] - 1})"
            )
        ext = obj["extent"]
        first, last = ext or (None, None)
        if (first is not None and z < first) or (last is not None and z > last):
            raise RequestError(
                f"object {k}: corrective click on slice {z}, outside its extent {tuple(ext)}"
            )
        try:
            segmenter.check_corrections(clicks, frame(inp, z).shape, obj=k)
        except ValueError as e:
            raise RequestError(f"{e} (slice {z})") from None


def _propagate(seg, inp, objects, spacing, per_object, maps, dtype):
    """Each object through the volume from its slice (`volume.propagate`); returns the
    per-slice label maps with the propagated objects painted in order, and each
    object's own `(S, H, W)` mask."""
    from dlset_jax import volume

    stack = np.stack([frame(inp, i) for i in range(inp["n_frames"])])
    maps, walked = dict(maps), {}
    for k, obj in enumerate(objects, 1):
        corr = dict(obj["corrections_on"])
        if len(obj["corrections"]):
            corr[obj["slice"]] = obj["corrections"]
        res = volume.propagate(
            seg,
            stack,
            obj["slice"],
            obj["points"],
            extent=obj["extent"],
            corrections=corr or None,
            spacing=spacing,
        )
        per_object[k]["propagation"] = {
            "extent": res.extent,
            "stops": res.stops,
            "slices": [
                dict(f, contours=outlines.as_lists(outlines.mask_outline(res.labels[f["slice"]])))
                for f in res.slices
            ],
        }
        for f in res.slices:
            z = f["slice"]
            maps.setdefault(z, np.zeros(stack.shape[1:3], dtype))[res.labels[z]] = k
        reached = {f["slice"] for f in res.slices}
        unreached = sorted(z for z in corr if z not in reached)
        if unreached:
            per_object[k]["warnings"].append(
                f"corrective clicks on slice {', '.join(map(str, unreached))} had no effect: "
                f"the propagation stopped before it (below: {res.stops['below']}; above: "
                f"{res.stops['above']}); name the extent to carry it there"
            )
        walked[k] = res.labels
    return maps, walked


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


def report_lines(summary: dict, out_dir: str) -> list[str]:
    """What the command line prints about a finished request."""
    lines = []
    for o in summary["objects"]:
        area = f"{o['area_px']} px" + (
            f" = {o['area_mm2']:.1f} mm^2" if o["area_mm2"] is not None else ""
        )
        where = f" slice {o['slice']}" if "slice" in o else ""
        lines.append(f"object {o['object']}{where} ({o['class'] or 'object'}): {area}")
        lines += [f"  warning: {w}" for w in o.get("warnings", [])]
        if "propagation" in o:  # the clicked slice's line alone hides the rest of the walk
            prop = o["propagation"]
            zs = [f["slice"] for f in prop["slices"]]
            px = sum(f["area_px"] for f in prop["slices"])
            stops = "; ".join(f"{side}: {why}" for side, why in prop["stops"].items())
            lines.append(
                f"  through slices {min(zs)}..{max(zs)} ({len(zs)} slices, {px} px); {stops}"
            )
    for m in summary.get("metrics", []):
        lines.append(
            f"object {m['object']}: DSC {m['dsc']:.3f} (four-point polygon "
            f"{m['baseline_dsc']:.3f}), HD {m['hd']:.2f} {m['units']}, "
            f"ABD {m['abd']:.2f} {m['units']}"
        )
    for m in summary.get("volume_metrics", []):
        where = "slices {}..{}".format(*m["slices"]) if m["slices"] else "no slice"
        lines.append(
            f"object {m['object']} through the volume: DSC {m['dsc']:.3f}, RVD "
            f"{m['rvd']:+.1f} %, {m['voxels']} voxels on {where} (truth {m['truth_voxels']}"
            " on slices {}..{})".format(*m["truth_slices"])
        )
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    lines.append(
        f"threshold {summary['threshold']:g} ({summary['threshold_source']}); "
        f"wrote {', '.join(summary['outputs'])} to {out_dir}"
    )
    return lines
