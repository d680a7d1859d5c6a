"""Tiny models and images for the tests that segment (the segmenter, the CLI, the app).

* `random_model`: a randomly initialised tiny network saved as a checkpoint (no
  training, seconds). Enough for everything that does not need a good mask: the
  preprocessing, batching, compilation counting, shapes, the error paths.
* `trained_workdir` (slow): a tiny model (ResNet-18 at width 4, 32 px crops) trained
  for 500 steps on a trivially learnable synthetic set: bright noisy ellipses on a dark
  background (`ellipse_image`). The four-point polygon of an ellipse covers 2/pi of it
  (DSC about 0.78), so beating it shows that the network and the evolution recover the
  curved boundary between the clicks. It says nothing about accuracy on realistic data.

Both are session fixtures (registered in conftest.py): trained once per test run.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "configs"))

RES = 32


# ----------------------------------------------------------------- data


def ellipse_image(rng, h=64, w=64, center=None, axes=None):
    """A bright noisy ellipse on a dark background: (uint8 image, bool mask)."""
    from scipy import ndimage

    yy, xx = np.mgrid[:h, :w].astype(float)
    a, b = axes if axes is not None else rng.uniform(9, 20, 2)
    th = rng.uniform(0, np.pi)
    cy, cx = center if center is not None else rng.uniform(22, 42, 2)
    u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
    v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
    mask = (u / a) ** 2 + (v / b) ** 2 <= 1
    img = np.where(mask, 190.0, 50.0) + rng.normal(0, 12, (h, w))
    img = ndimage.gaussian_filter(img, 0.7)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def inside_polylines(lines, shape):
    """`(H, W)` bool: pixel centres inside closed `(x, y)` polylines by the even-odd rule
    (a hole is a polyline of its own), by matplotlib's point-in-polygon test."""
    from matplotlib.path import Path

    rows, cols = np.mgrid[: shape[0], : shape[1]]
    pts = np.stack([cols.ravel(), rows.ravel()], 1).astype(np.float64)
    parity = np.zeros(len(pts), bool)
    for line in lines:
        parity ^= Path(np.asarray(line, np.float64)).contains_points(pts)
    return parity.reshape(shape)


def two_ellipses(rng):
    img1, m1 = ellipse_image(rng, 64, 96, center=(32, 25), axes=(14, 9))
    img2, m2 = ellipse_image(rng, 64, 96, center=(30, 70), axes=(16, 11))
    img = np.where(m2, img2, img1)
    return img, [m1, m2 & ~m1]


def tiny_config(**overrides):
    import tiny
    from conftest import override  # not at the top: conftest imports this module

    c = tiny.get_config()
    c.data.resolution = RES
    return override(c, **overrides)


def save_checkpoint(workdir, config, variables, step=1):
    from dlset_jax import checkpoint

    ck = checkpoint.Checkpointer(str(workdir))
    state = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    ck.save(step, state, {}, config.to_json(), force=True)
    ck.close()


@pytest.fixture(scope="session")
def random_model(tmp_path_factory):
    """(workdir, config, variables) of a randomly initialised tiny model."""
    import jax

    from dlset_jax import models

    config = tiny_config()
    model = models.create_model(config.model)
    variables = jax.tree.map(np.asarray, model.init_variables(jax.random.key(0), RES))
    wd = tmp_path_factory.mktemp("random_wd")
    save_checkpoint(wd, config, variables)
    return wd, config, variables


@pytest.fixture(scope="session")
def random_click_model(tmp_path_factory):
    """The workdir of a randomly initialised tiny model with the two click channels."""
    import jax

    from dlset_jax import models

    config = tiny_config(**{"clicks.enabled": True, "model.in_channels": 6})
    model = models.create_model(config.model)
    variables = jax.tree.map(np.asarray, model.init_variables(jax.random.key(2), RES))
    wd = tmp_path_factory.mktemp("click_wd")
    save_checkpoint(wd, config, variables)
    return wd


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
    """A tiny model trained on ellipses (see the module doc); returns its workdir (slow)."""
    from dlset_jax import train_lib

    root = tmp_path_factory.mktemp("ellipses")
    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("validation", 2), ("test", 2)):
        for sub in ("images", "masks"):
            (root / "manual" / split / sub).mkdir(parents=True)
        for i in range(n):
            img, mask = ellipse_image(rng)
            Image.fromarray(img).save(root / "manual" / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                root / "manual" / split / "masks" / f"{i:03d}.png"
            )
    config = tiny_config(
        **{
            "data.name": "user_segmentation",
            "data.builder_config": "",
            "data.data_dir": str(root / "tfds"),
            "data.manual_dir": str(root / "manual"),
            "data.image_kinds": ("grey", "rgb"),  # user_segmentation stores RGB
            "optim.decay_every_epochs": 1000,
            "loss.warmup_epochs": 2,
            "train.num_steps": 500,
            "train.batch_size": 8,
            "train.log_every": 100,
            "train.checkpoint_every": 500,
            "eval.batch_size": 2,
        }
    )
    train_lib.train_and_evaluate(config, str(root / "wd"))
    return root / "wd"


def dicom_file(path, img, window=True, study=True):
    """A 12-bit MR DICOM of `img` (uint8) stored as img * 16, rescaled by 2 x - 100.

    With `window`, its display window maps the rescaled values exactly back to `img`;
    without `study`, it lacks the patient / study / series attributes.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality, ds.PatientName = "MR", "Test^Ellipse"
    if study:  # what a scanner's file carries (a DICOM Segmentation must reference them)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "ellipse", "", ""
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20261202", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.SeriesNumber, ds.InstanceNumber, ds.SliceThickness = 1, 1, 3.0
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [0.6, 0.6]
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    if window:  # rescaled values img * 32 - 100; [lo, hi] = [-100, 255 * 32 - 100]
        ds.WindowCenter, ds.WindowWidth = (-100 + 255 * 32 - 100) / 2, 255 * 32
    ds.PixelData = (img.astype(np.uint16) * 16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


ROW_MM, COL_MM, STEP_MM = 0.7, 0.6, 2.5  # the series of `dicom_series`


def _rotation(a, b):
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cb, -sb], [0, sb, cb]])
    return rz @ rx


def _slice_file(path, pix, ipp, iop, instance, series_uid, window=True, **extra):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "MR", series_uid, instance
    ds.Rows, ds.Columns = pix.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [ROW_MM, COL_MM]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.SliceThickness = STEP_MM
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    if window:  # maps the rescaled values (stored * 2 - 100) exactly back to pix
        ds.WindowCenter, ds.WindowWidth = (-100 + 255 * 32 - 100) / 2, 255 * 32
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = (pix.astype(np.uint16) * 16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def dicom_series(folder, n=5, seed=0, window=True, readme=True):
    """`n` oblique slices of ellipses written in an order unrelated to their position:
    file names shuffled, InstanceNumber counting the other way. Returns (slices' pixels
    in position order, their masks, the IOP, the first slice's position)."""
    from pydicom.uid import generate_uid

    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    rot = _rotation(0.4, 0.3)
    iop = np.concatenate([rot[:, 0], rot[:, 1]])
    normal = np.cross(rot[:, 0], rot[:, 1])
    origin = np.array([-40.0, 25.0, 12.0])
    pix, masks = zip(*(ellipse_image(rng) for _ in range(n)))
    uid = generate_uid()
    names = rng.permutation(n)
    for k in range(n):
        ipp = origin + k * STEP_MM * normal
        _slice_file(folder / f"IM{names[k]:04d}", pix[k], ipp, iop, n - k, uid, window)
    if readme:
        (folder / "README.txt").write_text("not DICOM: left out\n")
    return np.stack(pix), np.stack(masks), iop, origin
