"""A folder of one DICOM series as a volume: `readers.read_dicom_series` and `predict.py`.

The slices' order and the affine are checked against DICOM's own equation for a pixel's
patient position (PS3.3 C.7.6.2.1.1), computed here from the tags each file carries, and
against nibabel's DICOM wrapper.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import COL_MM, ROW_MM, STEP_MM, dicom_series

import predict as cli
from dlset_jax import readers, segment_files, targets

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")


def test_slices_in_position_order_and_the_affine_is_dicoms_geometry(tmp_path):
    pix, _, iop, origin = dicom_series(tmp_path / "s")
    got = readers.read_dicom_series(str(tmp_path / "s"))
    vol, aff = got["volume"], got["affine"]
    n, rows, cols = pix.shape
    assert vol.shape == (cols, rows, n) and vol.dtype == np.uint8
    for k in range(n):  # slice k as a viewer shows it, with the training data's rotation
        np.testing.assert_array_equal(readers.volume_slice(vol, 2, k, rot90=True), pix[k])
    assert got["zooms"] == pytest.approx((COL_MM, ROW_MM, STEP_MM))
    assert got["intensity"].startswith("DICOM window")
    assert sorted(got["files"]) == [f"IM{i:04d}" for i in range(n)]
    normal = np.cross(iop[:3], iop[3:])
    rng = np.random.default_rng(1)
    for _ in range(20):  # voxel (i, j, k) is column c = i, row r = rows - 1 - j of slice k
        c, r, k = rng.integers(0, cols), rng.integers(0, rows), rng.integers(0, n)
        lps = origin + k * STEP_MM * normal + c * COL_MM * iop[:3] + r * ROW_MM * iop[3:]
        ras = aff @ np.array([c, rows - 1 - r, k, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-6)
    # and against nibabel's DICOM wrapper (its voxel axes: row, column) on each file
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "highly experimental": its affine is all we use
        from nibabel.nicom import dicomwrappers

    for k, name in enumerate(got["files"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nib_lps = dicomwrappers.wrapper_from_file(str(tmp_path / "s" / name)).affine
        for c, r in ((0, 0), (cols - 1, 3), (7, rows - 1)):
            ras = aff @ np.array([c, rows - 1 - r, k, 1.0])
            np.testing.assert_allclose(
                ras[:3], (nib_lps @ [r, c, 0, 1])[:3] * [-1, -1, 1], atol=1e-5
            )


def test_without_a_window_the_rescaled_values_are_kept(tmp_path):
    pix, _, _, _ = dicom_series(tmp_path / "s", n=3, window=False)
    got = readers.read_dicom_series(str(tmp_path / "s"))
    assert got["volume"].dtype == np.float32 and got["intensity"] is None
    np.testing.assert_allclose(
        readers.volume_slice(got["volume"], 2, 1, rot90=True), pix[1] * 32.0 - 100
    )


def _break(folder, name, **tags):
    ds = pydicom.dcmread(folder / name)
    for k, v in tags.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(folder / name)


@pytest.mark.parametrize(
    "damage, needle",
    [
        ({"SeriesInstanceUID": "1.2.3"}, "files of 2 series"),
        ({"ImagePositionPatient": None}, "no slice geometry"),
        ({"PixelSpacing": [0.9, 0.9]}, "orientation or pixel spacing differs"),
        ("same_position", "lie at the same position"),
        ("gap", "unevenly spaced"),
    ],
)
def test_a_bad_series_is_refused_naming_what_and_where(tmp_path, damage, needle):
    folder = tmp_path / "s"
    dicom_series(folder, n=4)
    name = "IM0002"
    if damage == "same_position":
        other = pydicom.dcmread(folder / "IM0001")
        damage = {"ImagePositionPatient": list(other.ImagePositionPatient)}
    elif damage == "gap":
        ds = pydicom.dcmread(folder / name)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        shift = np.cross(iop[:3], iop[3:]) * 0.8  # moved along the normal, not onto another
        damage = {"ImagePositionPatient": list(np.array(ds.ImagePositionPatient) + shift)}
    _break(folder, name, **damage)
    with pytest.raises(readers.DataError, match=needle):
        readers.read_dicom_series(str(folder))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(readers.DataError, match="no DICOM image"):
        readers.read_dicom_series(str(empty))


def test_a_gantry_tilted_series_is_refused(tmp_path):
    """Evenly spaced along the normal, but each slice moved sideways (a 10 degree gantry
    tilt): the voxels are sheared, which a NIfTI affine's qform cannot hold."""
    folder = tmp_path / "s"
    dicom_series(folder, n=4)
    for path in sorted(folder.glob("IM*")):
        ds = pydicom.dcmread(path)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        depth = ipp @ np.cross(iop[:3], iop[3:])
        ds.ImagePositionPatient = list(ipp + np.tan(np.radians(10)) * depth * iop[3:])
        ds.save_as(path)
    with pytest.raises(readers.DataError, match=r"move sideways .*10\.0 degrees.*gantry tilt"):
        readers.read_dicom_series(str(folder))


def test_predict_propagates_through_a_series_folder(capsys, tmp_path, random_model):
    """Four clicks on slice 2 of a series folder: a NIfTI label volume whose voxels lie
    where the series' pixels lie (its affine the series'), the clicked slice's mask the
    one the library gives on that slice's pixels, a slice column in the summary."""
    folder = tmp_path / "series"
    pix, masks, _, _ = dicom_series(folder)
    pts = targets.extreme_points(masks[2])
    out = tmp_path / "out"
    argv = ["--workdir", random_model[0], "--image", folder, "--out_dir", out, "--slice", "2"]
    argv += ["--points", " ".join(f"{x:g},{y:g}" for x, y in pts)]
    code = cli.run_cli([str(a) for a in argv + ["--propagate", "--extent", "1,3"]])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "series_mask.nii.gz",
        "series_overlay_slice002.png",
        "series_summary.json",
    ]
    got = nib.load(out / "series_mask.nii.gz")
    series = readers.read_dicom_series(str(folder))
    np.testing.assert_allclose(got.affine, series["affine"], atol=1e-5)
    labels = np.asarray(got.dataobj)
    assert labels.shape == series["volume"].shape
    assert not labels[..., [0, 4]].any()  # outside the extent
    seg = segment_files._get_segmenter(segment_files.Request(random_model[0], "", ""))
    want = seg.segment(pix[2], [pts]).objects[0].mask
    np.testing.assert_array_equal(readers.volume_slice(labels, 2, 2, rot90=True) > 0, want)
    summary = json.loads((out / "series_summary.json").read_text())
    assert summary["kind"] == "dicom_series" and len(summary["slice_files"]) == 5
    assert summary["spacing_mm"] == pytest.approx([ROW_MM, COL_MM])
    assert summary["objects"][0]["propagation"]["extent"] == [1, 3]
