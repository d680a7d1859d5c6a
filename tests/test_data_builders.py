"""Real-data builders from tiny files written by the tests; bad inputs; Colin27/AAL."""

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

nib = pytest.importorskip("nibabel")

from dlset_jax import config as config_lib  # noqa: E402
from dlset_jax import readers  # noqa: E402
from dlset_jax.data import builders, pipeline  # noqa: E402
from dlset_jax.readers import DataError  # noqa: E402

SPLITS = ("train", "validation", "test")


def _dl(manual_dir):
    import tensorflow_datasets as tfds

    return tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))


def _build(cls, tmp_path, manual_dir, config=None):
    kw = {"data_dir": str(tmp_path / "tfds"), "file_format": "array_record"}
    if config is not None:
        kw["config"] = config
    b = cls(**kw)
    b.download_and_prepare(download_config=_dl(manual_dir))
    return b


# --------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------
ZOOMS = (0.5, 0.7, 3.0)


def _write_nifti(path, arr, zooms=ZOOMS):
    img = nib.Nifti1Image(arr, np.diag(list(zooms) + [1.0]))
    img.header.set_zooms(zooms[: arr.ndim])
    nib.save(img, str(path))


def _fake_case(rng, shape=(24, 20, 6)):
    image = rng.normal(100, 10, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for z in range(1, shape[2] - 1):  # slices 0 and -1 have no object
        r = 4 + z % 3
        disk = (yy - 12) ** 2 + (xx - 10) ** 2 <= r * r
        label[..., z][disk] = 1
        label[..., z][disk & (xx > 10)] = 2  # second zone: same class (values {1, 2})
        image[..., z][disk] += 40
    label[0:2, 0:2, 2] = 1  # a 4-px speck: dropped as too small (min_area 20)
    return image, label


@pytest.fixture(scope="module")
def volume_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vol_manual")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        image, label = _fake_case(rng)
        _write_nifti(root / "imagesTr" / f"case{i:02d}.nii.gz", image)
        _write_nifti(root / "labelsTr" / f"case{i:02d}.nii.gz", label)
    return root


def test_volume_builder_splits_by_volume(tmp_path, volume_dir):
    b = _build(builders.MedicalVolumes, tmp_path, volume_dir)
    assert b.info.metadata["class_names"] == ["prostate"]
    ds = b.as_data_source()
    cases = {}
    for s in SPLITS:
        cases[s] = set()
        for i in range(len(ds[s])):
            e = ds[s][i]
            assert e["image"].dtype == np.uint8 and e["image"].shape[-1] == 1
            # axis 2, rotated by 90 degrees: (rows, cols) = (j, i) of the volume.
            assert e["image"].shape[:2] == (20, 24)
            assert e["masks"].shape == (1, 20, 24) and e["masks"].dtype == np.uint8
            np.testing.assert_array_equal(e["classes"], [0])
            np.testing.assert_allclose(e["spacing"], [ZOOMS[1], ZOOMS[0]])
            cases[s].add(e["case"].decode())
    assert cases["train"] and cases["validation"] and cases["test"]
    assert not (
        cases["train"] & cases["validation"]
        or cases["train"] & cases["test"]
        or cases["validation"] & cases["test"]
    ), cases
    assert set().union(*cases.values()) == {f"case{i:02d}" for i in range(6)}
    stats = b.info.metadata["object_stats"]
    assert sum(st["kept"] for st in stats.values()) == 6 * 4  # 4 slices with the gland per case
    assert sum(st["dropped_small"] for st in stats.values()) == 0  # speck is a 2nd component ...
    assert (
        sum(st["dropped_components"] for st in stats.values()) == 6
    )  # ... dropped by largest_only
    assert sum(st["images_without_objects"] for st in stats.values()) == 6 * 2


def test_volume_builder_min_area_and_all_components(tmp_path, volume_dir):
    cfg = builders.VolumeConfig(name="allcomp", components="all", min_area=20)
    b = _build(builders.MedicalVolumes, tmp_path, volume_dir, cfg)
    stats = b.info.metadata["object_stats"]
    assert sum(st["dropped_small"] for st in stats.values()) == 6
    assert sum(st["kept"] for st in stats.values()) == 24


def test_split_cases_partition():
    names = [f"p{i}" for i in range(20)]
    s = builders.split_cases(names, (0.7, 0.1, 0.2), seed=1)
    assert [len(s[k]) for k in SPLITS] == [14, 2, 4]
    assert sorted(sum(s.values(), [])) == sorted(names)
    assert s == builders.split_cases(names, (0.7, 0.1, 0.2), seed=1)
    assert s != builders.split_cases(names, (0.7, 0.1, 0.2), seed=2)


def _volume_manual(tmp_path, image, label, name="bad"):
    root = tmp_path / "manual"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        im, lb = _fake_case(rng)
        _write_nifti(root / "imagesTr" / f"ok{i}.nii.gz", im)
        _write_nifti(root / "labelsTr" / f"ok{i}.nii.gz", lb)
    img_path = root / "imagesTr" / f"{name}.nii.gz"
    lab_path = root / "labelsTr" / f"{name}.nii.gz"
    if isinstance(image, bytes):
        img_path.write_bytes(image)
    else:
        _write_nifti(img_path, image)
    _write_nifti(lab_path, label)
    return root, img_path, lab_path


def test_unreadable_volume_names_file(tmp_path):
    _, label = _fake_case(np.random.default_rng(0))
    root, img_path, _ = _volume_manual(tmp_path, b"this is not a nifti file", label)
    with pytest.raises(DataError, match=str(img_path)):
        _build(builders.MedicalVolumes, tmp_path, root)


def test_label_shape_mismatch_names_file(tmp_path):
    image, label = _fake_case(np.random.default_rng(0))
    root, _, lab_path = _volume_manual(tmp_path, image, label[:, :-1])
    with pytest.raises(DataError, match=f"{lab_path}.*differs"):
        _build(builders.MedicalVolumes, tmp_path, root)


def test_nan_intensities_name_file(tmp_path):
    image, label = _fake_case(np.random.default_rng(0))
    image[3, 3, 3] = np.nan
    root, img_path, _ = _volume_manual(tmp_path, image, label)
    with pytest.raises(DataError, match=f"{img_path}.*NaN"):
        _build(builders.MedicalVolumes, tmp_path, root)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_manual_dir_gives_instructions(tmp_path, make):
    manual = tmp_path / "nothing_here"
    if make == "empty":
        manual.mkdir()
    for cls, phrase in (
        (builders.MedicalVolumes, "imagesTr"),
        (builders.RefugeFundus, "refuge.grand-challenge"),
        (builders.UserSegmentation, "masks"),
    ):
        with pytest.raises(DataError, match=phrase):
            _build(cls, tmp_path / cls.__name__, manual)


# --------------------------------------------------------------------------
# REFUGE
# --------------------------------------------------------------------------
def _refuge_pair(rng, h=90, w=100):
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.integers(35, 55), rng.integers(35, 65)
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    gt = np.full((h, w), 255, np.uint8)
    gt[d2 <= 15**2] = 128
    gt[d2 <= 7**2] = 0
    img = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
    img[gt < 255] = (230, 170, 100)
    return img, gt


@pytest.fixture(scope="module")
def refuge_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("refuge_manual")
    rng = np.random.default_rng(0)
    for s, n in (("train", 3), ("validation", 2), ("test", 2)):
        sub = "Glaucoma/" if s == "train" else ""
        (root / s / "images" / sub).mkdir(parents=True)
        (root / s / "masks" / sub).mkdir(parents=True)
        for i in range(n):
            img, gt = _refuge_pair(rng)
            Image.fromarray(img).save(root / s / "images" / sub / f"{s[0]}{i:04d}.jpg", quality=95)
            Image.fromarray(gt).save(root / s / "masks" / sub / f"{s[0]}{i:04d}.bmp")
    return root


@pytest.mark.parametrize("crop", [0, 48])
def test_refuge_builder(tmp_path, refuge_dir, crop):
    cfg = builders.RefugeConfig(name=f"crop{crop}", crop_size=crop)
    b = _build(builders.RefugeFundus, tmp_path, refuge_dir, cfg)
    assert b.info.metadata["class_names"] == ["optic_disc", "optic_cup"]
    assert b.info.metadata["spacing_unit"] == "px"
    assert [b.info.splits[s].num_examples for s in SPLITS] == [3, 2, 2]
    ds = b.as_data_source()
    for s in SPLITS:
        for i in range(len(ds[s])):
            e = ds[s][i]
            shape = (48, 48) if crop else (90, 100)
            assert e["image"].shape == shape + (3,) and e["image"].dtype == np.uint8
            assert e["masks"].shape == (2,) + shape
            np.testing.assert_array_equal(e["classes"], [0, 1])
            disc, cup = e["masks"]
            assert np.all(cup <= disc) and disc.sum() > cup.sum() > 0
            assert (
                abs(
                    int(disc.sum())
                    - int(
                        np.sum(
                            (np.arange(31)[:, None] - 15) ** 2 + (np.arange(31)[None] - 15) ** 2
                            <= 225
                        )
                    )
                )
                == 0
            )
            assert e["id"].decode().startswith(s[0])


def test_refuge_missing_mask_names_image(tmp_path, refuge_dir):
    import shutil

    root = tmp_path / "refuge"
    shutil.copytree(refuge_dir, root)
    victim = sorted((root / "validation" / "masks").glob("*.bmp"))[0]
    victim.unlink()
    with pytest.raises(DataError, match=victim.stem + ".jpg"):
        _build(builders.RefugeFundus, tmp_path, root)


def test_refuge_unreadable_image_names_file(tmp_path, refuge_dir):
    import shutil

    root = tmp_path / "refuge"
    shutil.copytree(refuge_dir, root)
    victim = sorted((root / "test" / "images").glob("*.jpg"))[0]
    victim.write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match=str(victim)):
        _build(builders.RefugeFundus, tmp_path, root)


# --------------------------------------------------------------------------
# Generic user format
# --------------------------------------------------------------------------
def test_user_builder_label_maps_with_nested_classes(tmp_path):
    root = tmp_path / "manual"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:50]
    empty = builders.split_cases([f"im{i}" for i in range(10)])["train"][0]
    for i in range(10):
        img = rng.integers(0, 255, (40, 50)).astype(np.uint8)
        lab = np.zeros((40, 50), np.uint8)
        lab[((yy - 20) ** 2 + (xx - 25) ** 2) <= 100] = 1
        lab[((yy - 20) ** 2 + (xx - 25) ** 2) <= 16] = 2
        if f"im{i}" == empty:
            lab[:] = 0  # no object at all: skipped and counted
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        Image.fromarray(lab).save(root / "masks" / f"im{i}.png")
    (root / "spacing.json").write_text('{"im3": [0.25, 0.5]}')
    cfg = builders.UserConfig(
        name="nested",
        channels=1,
        class_values=(("outer", (1, 2)), ("inner", (2,))),
        spacing=(0.1, 0.1),
    )
    b = _build(builders.UserSegmentation, tmp_path, root, cfg)
    assert b.info.metadata["class_names"] == ["outer", "inner"]
    ds = b.as_data_source()
    seen = []
    for s in SPLITS:
        for i in range(len(ds[s])):
            e = ds[s][i]
            seen.append(e["id"].decode())
            assert e["image"].shape == (40, 50, 1)
            np.testing.assert_array_equal(e["classes"], [0, 1])
            assert np.all(e["masks"][1] <= e["masks"][0])
            want = [0.25, 0.5] if e["id"] == b"im3" else [0.1, 0.1]
            np.testing.assert_allclose(e["spacing"], want)
    assert sorted(seen) == sorted(f"im{i}" for i in range(10) if f"im{i}" != empty)
    assert sum(st["images_without_objects"] for st in b.info.metadata["object_stats"].values()) == 1


def test_user_builder_split_folders_and_bad_mask(tmp_path):
    root = tmp_path / "manual"
    for s in SPLITS:
        (root / s / "images").mkdir(parents=True)
        (root / s / "masks").mkdir(parents=True)
        m = np.zeros((30, 30), np.uint8)
        m[5:20, 8:25] = 255
        Image.fromarray(np.full((30, 30, 3), 90, np.uint8)).save(root / s / "images" / "a.jpg")
        Image.fromarray(m).save(root / s / "masks" / "a.png")
    b = _build(builders.UserSegmentation, tmp_path, root)
    e = b.as_data_source()["test"][0]
    assert e["image"].shape == (30, 30, 3) and e["masks"].sum() == 15 * 17
    # A mask of another size names the mask file.
    Image.fromarray(np.zeros((31, 30), np.uint8)).save(root / "test" / "masks" / "a.png")
    with pytest.raises(DataError, match="a.png.*differs"):
        _build(builders.UserSegmentation, tmp_path / "again", root)


def test_read_image_errors(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"nope")
    with pytest.raises(DataError, match=str(p)):
        readers.read_image(p)
    with pytest.raises(DataError, match="missing.png"):
        readers.read_image(tmp_path / "missing.png")
    for shape in ((1, 1), (1, 40), (40, 1)):  # a 2-D image, too small: said so
        tiny = tmp_path / f"tiny{shape[0]}x{shape[1]}.png"
        Image.fromarray(np.zeros(shape, np.uint8)).save(tiny)
        with pytest.raises(DataError, match=rf"{shape[1]} x {shape[0]} px .* too small"):
            readers.read_image(tiny)


def test_read_image_multipage_tiff_needs_a_page(tmp_path):
    p = tmp_path / "stack.tif"
    first = np.full((6, 7), 10, np.uint8)
    second = np.arange(42, dtype=np.uint8).reshape(6, 7)
    Image.fromarray(first).save(p, save_all=True, append_images=[Image.fromarray(second)])
    with pytest.raises(DataError, match=r"stack\.tif.*2 pages"):
        readers.read_image(p)
    np.testing.assert_array_equal(readers.read_image(p, page=0), first[..., None])
    np.testing.assert_array_equal(readers.read_image(p, page=1), second[..., None])
    with pytest.raises(DataError, match="page 2 out of range"):
        readers.read_image(p, page=2)
    # a one-page file needs no page (and page=0 is that page)
    one = tmp_path / "one.tif"
    Image.fromarray(second).save(one)
    np.testing.assert_array_equal(readers.read_image(one), second[..., None])
    np.testing.assert_array_equal(readers.read_image(one, page=0), second[..., None])


def test_a_16_bit_grey_image_read_as_colour_is_refused_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 1000], [30000, 65535]], np.uint16)).save(tmp_path / "g.png")
    with pytest.raises(DataError, match="more than 8 bits"):
        readers.read_image(tmp_path / "g.png", channels=3)
    got = readers.read_image(tmp_path / "g.png")  # as it is: float32 intensities
    np.testing.assert_array_equal(got[..., 0], [[0, 1000], [30000, 65535]])


def test_read_image_turns_a_photo_as_its_exif_orientation_says(tmp_path):
    """Orientation 6 (stored turned; shown rotated 90 degrees clockwise): the pixels
    come back as a viewer shows them, where the user's clicks were taken."""
    stored = np.zeros((4, 6), np.uint8)
    stored[0, :] = 255  # the stored top row
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "turned.png", exif=exif)
    got = readers.read_image(tmp_path / "turned.png")[..., 0]
    np.testing.assert_array_equal(got, np.rot90(stored, -1))  # the top row is now the right column
    assert got.shape == (6, 4) and (got[:, -1] == 255).all()


def test_read_mask_of_a_palette_png_gives_its_indices(tmp_path):
    """A label map saved with a colour table (PASCAL VOC's masks): the labels are the
    indices, not the colours; an image with a palette is still read in its colours."""
    labels = np.zeros((6, 8), np.uint8)
    labels[1:3, 1:4], labels[4:6, 5:8] = 1, 2
    im = Image.fromarray(labels, mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(readers.read_mask(tmp_path / "voc.png"), labels)
    colours = readers.read_image(tmp_path / "voc.png")
    assert colours.shape == (6, 8, 3) and colours[1, 1].tolist() == [128, 0, 0]
    # a palette of greys (an 8-bit BMP mask of 0 / 128 / 255): the grey levels
    im.putpalette([0, 0, 0, 128, 128, 128, 255, 255, 255] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "grey.bmp")
    np.testing.assert_array_equal(
        readers.read_mask(tmp_path / "grey.bmp"), np.array([0, 128, 255])[labels]
    )


def test_objects_from_label_map():
    lab = np.zeros((20, 20), np.int64)
    lab[2:8, 2:8] = 3
    lab[12:14, 12:14] = 3  # small second component
    lab[10:18, 2:6] = 5
    masks, classes, st = readers.objects_from_label_map(
        lab, [("a", (3,)), ("b", (5,)), ("c", (7,))], min_area=5, components="all"
    )
    assert classes.tolist() == [0, 1] and st.dropped_small == 1 and masks.shape == (2, 20, 20)
    masks, classes, st = readers.objects_from_label_map(lab, {"ab": (3, 5)}, components="union")
    assert classes.tolist() == [0] and masks[0].sum() == 36 + 4 + 32


# --------------------------------------------------------------------------
# load_source errors
# --------------------------------------------------------------------------
def test_load_source_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'nope'"):
        pipeline.load_source("nope", tmp_path, "train")
    with pytest.raises(ValueError, match="unknown config"):
        pipeline.load_source("synthetic_prostate/huge", tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="not built"):
        pipeline.load_source("synthetic_prostate/tiny", tmp_path, "train", build=False)
    src = pipeline.load_source("synthetic_prostate/tiny", tmp_path, "validation")
    assert len(src) == 2
    assert len(pipeline.load_source("synthetic_prostate/tiny", tmp_path, "train", build=False)) == 6


# --------------------------------------------------------------------------
# Colin27 + AAL (real MR; needs Debian's mricron-data)
# --------------------------------------------------------------------------
AAL_DIR = pathlib.Path(builders.AAL_TEMPLATE_DIR)
needs_aal = pytest.mark.skipif(
    not (AAL_DIR / "aal.nii.gz").exists(),
    reason=f"mricron-data not installed ({AAL_DIR}/aal.nii.gz missing): apt-get install mricron-data",
)


@needs_aal
def test_colin27_aal_deep_grey(tmp_path):
    b = builders.Colin27Aal(data_dir=str(tmp_path), file_format="array_record")
    b.download_and_prepare()
    names = b.info.metadata["class_names"]
    assert len(names) == 12 and names[0] == "Caudate_L" and "Amygdala_R" in names
    stats = b.info.metadata["object_stats"]
    assert {s: stats[s]["kept"] for s in SPLITS} == {"train": 98, "validation": 16, "test": 60}
    ds = b.as_data_source()
    slices = {}
    for s in SPLITS:
        slices[s] = []
        for i in range(len(ds[s])):
            e = ds[s][i]
            assert e["image"].shape == (217, 181, 1) and e["image"].dtype == np.uint8
            np.testing.assert_allclose(e["spacing"], [1.0, 1.0])
            assert e["masks"].sum(axis=(1, 2)).min() >= 100
            slices[s].append(int(e["id"].decode().split(":")[1]))
    for a in SPLITS:
        for c in SPLITS:
            if a < c:
                gap = min(abs(i - j) for i in slices[a] for j in slices[c])
                assert gap > 5, (a, c, gap)
    # The pipeline runs on it (real MR objects).
    cfg = config_lib.base_config()
    cfg.data.resolution = 64
    opts = pipeline.CropOptions.from_config(cfg)
    batch = next(pipeline.make_eval_iterator(ds["test"], opts, batch_size=4))
    assert batch["image"].shape == (4, 64, 64, 3) and batch["valid"].all()
