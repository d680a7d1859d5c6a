"""The held-out sources' readers, on small files written here in the sources' formats."""

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from dlset_jax import heldout
from dlset_jax.readers import DataError


def _write_nuclei(d, image, inst):
    img_name, mask_name = heldout.FILES["nuclei"]
    Image.fromarray(image.astype(np.uint16)).save(d / img_name)
    Image.fromarray(inst.astype(np.uint16)).save(d / mask_name)


def test_nuclei_are_the_instances_away_from_the_border(tmp_path):
    image = np.full((64, 64), 20, np.uint16)
    inst = np.zeros((64, 64), np.uint16)
    inst[10:20, 10:22] = 3  # kept
    inst[30:40, 40:52] = 7  # kept
    inst[0:8, 30:40] = 9  # cut by the top border: its extreme point lies on it
    inst[50:54, 5:9] = 11  # 16 px, a fragment
    image[inst > 0] = 200
    _write_nuclei(tmp_path, image, inst)
    assert heldout.available(str(tmp_path), "nuclei")
    objs = heldout.objects(str(tmp_path), "nuclei")
    assert [o["id"] for o in objs] == ["nuclei/3", "nuclei/7"]
    for o, k in zip(objs, (3, 7), strict=True):
        np.testing.assert_array_equal(o["mask"], inst == k)
        assert o["image"].dtype == np.uint8 and o["image"].max() == 200  # grey levels kept
        assert o["class"] == "nucleus" and o["spacing"] == (1.0, 1.0)


def _phantom(tmp_path, zooms=(1.0, 1.0, 1.0)):
    """A 72 x 72 x 25 volume: a disc of white matter (2,800 px a slice), a dark ventricle
    inside it and a dark sulcus at its rim (CSF that must not become an object)."""
    shape = (72, 72, 25)
    x, y = np.meshgrid(np.arange(72), np.arange(72), indexing="ij")
    brain = (x - 36) ** 2 + (y - 36) ** 2 <= 30**2
    ventricle = (np.abs(x - 36) <= 3) & (np.abs(y - 34) <= 6)
    sulcus = brain & ((x - 36) ** 2 + (y - 36) ** 2 >= 27**2) & (np.abs(y - 36) <= 2)
    csf = ventricle | sulcus
    t1 = np.where(brain, np.where(csf, 40.0, 180.0), 0.0)
    wm = np.where(brain & ~csf, 255.0, 0.0)
    gm = np.zeros(shape[:2])
    affine = np.diag([*zooms, 1.0])
    for name, a in zip(heldout.FILES["mni152"], (t1, gm, wm), strict=True):
        vol = np.repeat(a[..., None], shape[2], axis=2).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / name))
    return brain, ventricle


def test_mni152_objects_are_deep_csf_and_whole_brains(tmp_path):
    brain, ventricle = _phantom(tmp_path, zooms=(0.5, 0.5, 1.0))
    objs = heldout.objects(str(tmp_path), "mni152")
    csf = [o for o in objs if o["class"] == "csf"]
    whole = [o for o in objs if o["class"] == "brain"]
    # every 4th slice has the ventricle; the sulcus reaches the rim and is left out
    assert [o["id"].split("/")[1] for o in csf] == [f"z{z}" for z in range(0, 25, 4)]
    assert [o["id"].split("/")[1] for o in whole] == ["z0", "z12", "z24"]
    # the axial slice as displayed: transposed, rows flipped
    for o in csf:
        np.testing.assert_array_equal(o["mask"], ventricle.T[::-1])
        assert o["spacing"] == (0.5, 0.5) and o["image"].dtype == np.uint8
    np.testing.assert_array_equal(whole[0]["mask"], brain.T[::-1])


def test_missing_files_and_unknown_sources_say_what_to_do(tmp_path):
    assert not heldout.available(str(tmp_path), "mni152")
    with pytest.raises(DataError, match=r"mni152_t1.nii.gz.*get_heldout_data.sh"):
        heldout.objects(str(tmp_path), "mni152")
    with pytest.raises(DataError, match="must be one of"):
        heldout.objects(str(tmp_path), "ct")


def test_no_builder_reads_the_held_out_files():
    # judging images stay out of training: nothing under dlset_jax/data names them
    import pathlib

    import dlset_jax.data as data

    names = [f for fs in heldout.FILES.values() for f in fs] + ["heldout"]
    for path in pathlib.Path(data.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert not any(n in text for n in names), path


class _Writer:
    def __init__(self):
        self.texts = []

    def text(self, t):
        self.texts.append(t)


def test_the_end_of_a_run_scores_the_held_out_images_it_finds(tmp_path, random_model):
    # `make train` prints them where scripts/get_heldout_data.sh put them, and says
    # nothing where they are absent
    from dlset_jax import train_lib

    _, config, variables = random_model
    image = np.full((48, 48), 20, np.uint16)
    inst = np.zeros((48, 48), np.uint16)
    inst[10:22, 12:26] = 1
    image[inst > 0] = 180
    (tmp_path / "held").mkdir()
    _write_nuclei(tmp_path / "held", image, inst)
    config = config.copy_and_resolve_references()
    config.eval.real_benchmark = False
    for directory, expect in (("", []), (str(tmp_path / "none"), [])):
        config.eval.heldout_dir = directory
        writer = _Writer()
        train_lib.real_image_benchmarks(config, variables, 0.0, str(tmp_path / "wd"), writer)
        assert writer.texts == expect
    config.eval.heldout_dir = str(tmp_path / "held")
    writer = _Writer()
    train_lib.real_image_benchmarks(config, variables, 0.0, str(tmp_path / "wd"), writer)
    (text,) = writer.texts
    assert text.startswith("held-out images: nuclei\n| structure | n |")
    assert "| nucleus | 1 |" in text and "(1 objects)" in text
    out = tmp_path / "wd" / "eval" / "heldout_nuclei"
    assert {p.name for p in out.iterdir()} == {"table.md", "results.json", "worst.png"}
    # a model of RGB images only: said, not a crash at the end of its training
    config.data.image_kinds = ("rgb",)
    writer = _Writer()
    train_lib.real_image_benchmarks(config, variables, 0.0, str(tmp_path / "wd2"), writer)
    assert writer.texts == [
        "real-image benchmarks skipped: their images are grey and this model takes RGB "
        "images only (data.image_kinds=('rgb',))"
    ]
    assert not (tmp_path / "wd2").exists()


@pytest.mark.parametrize(
    "script, flags, wanted",
    [
        ("real_image_benchmark.py", (), "no checkpoints under"),
        ("heldout_benchmark.py", ("--sources=nuclei",), "no checkpoints under"),
        ("interactive_benchmark.py", (), "no checkpoints under"),
        ("real_image_benchmark.py", ("--contrast=-1",), "--contrast must be > 0"),
        ("real_image_benchmark.py", ("--grain=0",), "--grain must be > 0"),
    ],
)
def test_benchmark_scripts_stop_with_one_line(tmp_path, script, flags, wanted):
    """A workdir without checkpoints, or a bad flag: a message, no traceback."""
    import pathlib
    import subprocess
    import sys

    from dlset_jax import real_benchmark

    path = pathlib.Path(__file__).resolve().parent.parent / "scripts" / script
    cmd = [sys.executable, str(path), f"--workdir={tmp_path / 'none'}", *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    if wanted.startswith("no checkpoints") and script.startswith("real_image"):
        if not real_benchmark.available():  # said before the checkpoint is looked for
            wanted = "mricron-data is not installed"
    assert wanted in proc.stderr, proc.stderr
