"""Domain-randomised generator: determinism, sources, distributions, benchmark exclusion, builder."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import ConvexHull

from dlset_jax.data import domain_random as dr

N = 300  # examples sampled for the source / distribution tests
TEMPLATES = pathlib.Path(dr.TEMPLATE_DIR)
HAVE_MRICRON = TEMPLATES.is_dir()
needs_mricron = pytest.mark.skipif(
    not HAVE_MRICRON,
    reason=f"mricron-data not installed ({TEMPLATES} missing): apt-get install mricron-data",
)


@pytest.fixture(scope="module")
def samples():
    return [dr.generate(0, "train", i) for i in range(N)]


def _objects(samples):
    for e in samples:
        yield from e["masks"].astype(bool)


# --------------------------------------------------------------------------
# Format and determinism
# --------------------------------------------------------------------------
def test_deterministic_per_seed_split_index():
    a, b = dr.generate(3, "train", 17), dr.generate(3, "train", 17)
    for k in ("image", "masks", "classes", "spacing"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["meta"] == b["meta"]
    for other in (
        dr.generate(3, "train", 18),
        dr.generate(3, "test", 17),
        dr.generate(4, "train", 17),
    ):
        assert other["image"].shape != a["image"].shape or not np.array_equal(
            other["image"], a["image"]
        )


def test_example_format(samples):
    for e in samples:
        img, masks = e["image"], e["masks"]
        h, w, c = img.shape
        assert img.dtype == np.uint8 and c == 3 and 96 <= h <= 160 and 96 <= w <= 160
        assert masks.dtype == np.uint8 and masks.shape[1:] == (h, w) and 1 <= len(masks) <= 4
        assert set(np.unique(masks)) <= {0, 1}
        assert e["classes"].dtype == np.int32 and (e["classes"] == 0).all()
        assert e["classes"].shape == (len(masks),)
        assert e["spacing"].dtype == np.float32 and e["spacing"].shape == (2,)
        assert (e["spacing"] > 0).all()
        for m in masks.astype(bool):
            rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
            assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 >= 8
            sides = m[0].any() + m[-1].any() + m[:, 0].any() + m[:, -1].any()
            assert sides <= 1  # extreme points stay meaningful
        if not e["meta"]["rgb"]:
            assert (img == img[..., :1]).all()


def test_import_reads_no_file():
    code = (
        "import sys; from dlset_jax.data import domain_random as d; "
        "assert d._volume.cache_info().currsize == 0; assert 'nibabel' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=pathlib.Path(__file__).parents[1])


def test_procedural_only_without_atlases(tmp_path):
    # An empty template directory stands for a machine without mricron-data.
    assert dr.available_atlases(str(tmp_path)) == () and dr.available_textures(str(tmp_path)) == ()
    for i in range(40):
        for e in (
            dr.generate(0, "train", i, template_dir=str(tmp_path)),
            dr.generate(0, "train", i, atlases=False),
        ):
            assert e["meta"]["source"] == "procedural"
            assert e["meta"]["atlas"] is None and e["meta"]["texture"] is None
            assert len(e["masks"]) >= 1


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------
def test_every_shape_kind_appears(samples):
    kinds = {k for e in samples for k in e["meta"]["kinds"]}
    assert set(dr.OBJECT_KINDS) <= kinds


def test_objects_made_of_parts_are_one_object_of_several_intensities():
    # an organ with zones, a cavity or a core is ONE object: its parts lie inside its
    # mask and show their own intensity (a model must not cut them out as holes)
    steps, n = [], 0
    for seed in range(80):
        rng = np.random.default_rng(seed)
        labels, n_labels, objects, similar, parts = dr._procedural_labels(rng, 128, 128)
        masks, kept = dr._extract(labels, objects, 16, parts)
        assert set(parts) <= {lab for lab, kind in objects if kind == "parts"}
        obj_labels, kinds = [lab for lab, _ in kept], [k for _, k in kept]
        scene = dr._Scene(labels, n_labels, masks, obj_labels, kinds, None, similar, parts)
        img, _ = dr._render(rng, scene, 1, 2.0, None)
        for (lab, kind), m in zip(kept, masks, strict=True):
            if kind != "parts":
                continue
            own = m & (labels == lab)
            for p in parts[lab]:
                inner = labels == p
                if inner.sum() < 20 or own.sum() < 20:
                    continue
                n += 1
                assert m[inner].mean() > 0.9  # the part is the object's (all but cut-off bits)
                a, b = img[inner & m, 0], img[own, 0]
                se = np.sqrt(a.var() / a.size + b.var() / b.size)
                steps.append(abs(a.mean() - b.mean()) / max(se, 1e-6))
    assert n >= 15
    assert np.mean(np.array(steps) > 3) >= 0.8  # a visible step at the part's edge


@needs_mricron
def test_every_atlas_and_texture_appears(samples):
    atlases = {e["meta"]["atlas"]["name"] for e in samples if e["meta"]["atlas"]}
    textures = {e["meta"]["texture"]["name"] for e in samples if e["meta"]["texture"]}
    assert set(dr.available_atlases()) == set(dr.LABEL_ATLASES)  # the whole package
    assert atlases == set(dr.LABEL_ATLASES)
    assert textures == set(dr.T1_TEXTURES)
    sources = {e["meta"]["source"] for e in samples}
    assert sources == {"procedural", "atlas", "real"}
    real = [e for e in samples if e["meta"]["source"] == "real"]
    assert {e["meta"]["atlas"]["name"] for e in real} == set(dr.REAL_PAIRS)
    for e in real:  # a real image with its own label map: same slice of the same grid
        a, t = e["meta"]["atlas"], e["meta"]["texture"]
        assert dr.REAL_PAIRS[a["name"]] == t["name"] and a["slice"] == t["slice"]


# --------------------------------------------------------------------------
# Distributions (a few hundred examples)
# --------------------------------------------------------------------------
def _thickness(m):
    """Smaller principal extent (px): sqrt(12 * variance), the width of a uniform bar."""
    ys, xs = np.nonzero(m)
    return float(np.sqrt(12 * np.linalg.eigvalsh(np.cov(np.stack([ys, xs])))[0]))


def _solidity(m):
    ys, xs = np.nonzero(m & ~ndimage.binary_erosion(m))
    corners = np.concatenate([np.stack([ys + dy, xs + dx], 1) for dy in (0, 1) for dx in (0, 1)])
    return m.sum() / ConvexHull(corners).volume


@pytest.mark.parametrize("looks", [1, 2, 4])
def test_speckle_field_has_the_statistics_of_fully_developed_speckle(looks):
    from scipy import special, stats

    f = dr.speckle_field(np.random.default_rng(looks), (256, 256), looks, 1.0)
    # intensity f**2 averages `looks` exponentials of mean 1: Gamma(looks, 1 / looks)
    assert f.shape == (256, 256) and abs(np.mean(f**2) - 1) < 1e-9
    mean = np.exp(special.gammaln(looks + 0.5) - special.gammaln(looks)) / np.sqrt(looks)
    assert abs(f.mean() - mean) < 0.02
    assert abs(f.std() / f.mean() - dr._speckle_cv(looks)) < 0.03
    grains = f[::8, ::8].ravel() ** 2  # samples further apart than the correlation
    assert stats.kstest(grains, stats.gamma(looks, scale=1 / looks).cdf).pvalue > 0.001
    # the grain grows with the correlation length
    corr = [
        np.corrcoef(g[:, :-2].ravel(), g[:, 2:].ravel())[0, 1]
        for g in (dr.speckle_field(np.random.default_rng(0), (128, 128), 1, c) for c in (0.5, 2))
    ]
    assert corr[0] < 0.2 < corr[1]
    with pytest.raises(ValueError, match="looks must be >= 1"):
        dr.speckle_field(np.random.default_rng(0), (8, 8), 0, 1.0)


def test_speckled_examples(samples):
    looks = np.array([e["meta"]["speckle_looks"] for e in samples])
    speckled = [e for e in samples if e["meta"]["speckle_looks"]]
    # a quarter of the grey synthetic images, none in colour or from the real source
    assert 0.07 < np.mean(looks > 0) < 0.2 and set(looks) == {0, 1, 2, 3, 4}
    assert all(not e["meta"]["rgb"] and e["meta"]["source"] != "real" for e in speckled)
    # their objects stay findable: edge contrast spread like the others'
    con = np.array([c for e in speckled for c in e["meta"]["contrast"]])
    assert np.median(con) > 0.8 and (con > 2).sum() >= 5


def test_distributions(samples):
    ext = np.array([max(x) for e in samples for x in e["meta"]["extent"]])
    rel = np.array(  # extent relative to the image side along the same axis
        [
            max(x[0] / e["image"].shape[0], x[1] / e["image"].shape[1])
            for e in samples
            for x in e["meta"]["extent"]
        ]
    )
    pol = np.array([p for e in samples for p in e["meta"]["polarity"]])
    con = np.array([c for e in samples for c in e["meta"]["contrast"]])
    rgb = np.array([e["meta"]["rgb"] for e in samples])
    objs = list(_objects(samples))
    thin = np.array([_thickness(m) for m in objs])
    holes = np.array([ndimage.binary_fill_holes(m).sum() - m.sum() for m in objs])
    solidity = np.array([_solidity(m) for m in objs])
    print(
        f"\n{len(objs)} objects: extent px min {ext.min()} p5 {np.percentile(ext, 5):.0f} "
        f"median {np.median(ext):.0f} p95 {np.percentile(ext, 95):.0f} max {ext.max()}; "
        f"extent >= 0.7 side {np.mean(rel >= 0.7):.3f}; polarity + {np.mean(pol > 0):.2f}; "
        f"contrast p5/p50/p95 {np.percentile(con, [5, 50, 95]).round(2)}, < 0.3 "
        f"{np.mean(con < 0.3):.2f}, > 4 {np.mean(con > 4):.2f}; rgb {rgb.mean():.2f}; "
        f"thin (<= 5 px) {np.mean(thin <= 5):.3f}; holes {np.mean(holes >= 4):.3f}; "
        f"concave (solidity < 0.8) {np.mean(solidity < 0.8):.3f}"
    )
    assert (ext <= 12).sum() >= 10 and (rel >= 0.7).sum() >= 5
    assert 0.2 < np.mean(pol > 0) < 0.8
    assert (con < 0.3).sum() >= 10 and (con > 4).sum() >= 10
    assert 0.2 < rgb.mean() < 0.6
    assert (thin <= 5).sum() >= 10
    assert (holes >= 4).sum() >= 10
    assert (solidity < 0.8).sum() >= 20


# --------------------------------------------------------------------------
# Benchmark exclusion (Colin27 + AAL test / validation slabs)
# --------------------------------------------------------------------------
def _benchmark_slabs_world_z():
    """World z extents (mm) of the colin27_aal test and validation slabs, computed the way
    the builder assigns them (its config, slab_splits and the AAL volume)."""
    nib = pytest.importorskip("nibabel")
    from dlset_jax.data import builders

    cfg = builders.AalConfig(name="check")
    img = nib.load(str(TEMPLATES / "aal.nii.gz"))
    aal = np.asarray(img.dataobj)
    classes = [(str(v), (v,)) for v in cfg.labels]
    with_objects = [
        k
        for k in range(aal.shape[cfg.axis])
        if len(
            builders.readers.objects_from_label_map(
                np.take(aal, k, axis=cfg.axis), classes, min_area=cfg.min_area
            )[1]
        )
    ]
    assign = builders.slab_splits(with_objects, cfg.pattern, cfg.gap)
    out = {}
    for split in ("test", "validation"):
        ks = [k for k, s in assign.items() if s == split]
        z = [nib.affines.apply_affine(img.affine, (0, 0, k))[2] for k in (min(ks), max(ks))]
        dz = abs(img.affine[2, 2])
        out[split] = ((min(ks), max(ks)), (min(z) - dz / 2, max(z) + dz / 2))
    return out


def _gap(a, b):
    return max(b[0] - a[1], a[0] - b[1])


def _mni(name):
    return not name.startswith("inia19")  # everything but the macaque is on/near Colin27


@needs_mricron
def test_no_example_from_benchmark_slabs(samples):
    slabs = _benchmark_slabs_world_z()
    # The generator's constants are those of the builder's default config.
    assert {s: v[0] for s, v in slabs.items()} == dr.BENCHMARK_SLABS
    checked = 0
    for e in samples:
        for part in ("atlas", "texture"):
            m = e["meta"][part]
            if m is None or not _mni(m["name"]):
                continue
            checked += 1
            assert m["axis"] == 2, m  # sagittal / coronal slices cross every axial slab
            for _, zr in slabs.values():
                assert _gap(m["world_z"], zr) >= 5.0, (m, zr)
    assert checked >= 50
    # And no slice the generator could ever pick (every MNI source, every axis).
    for name in set(dr.LABEL_ATLASES) | set(dr.T1_TEXTURES):
        if not _mni(name):
            continue
        vol = dr._volume(dr.TEMPLATE_DIR, name)
        assert not len(dr._usable_slices(dr.TEMPLATE_DIR, name, 0))
        assert not len(dr._usable_slices(dr.TEMPLATE_DIR, name, 1))
        usable = dr._usable_slices(dr.TEMPLATE_DIR, name, 2)
        assert len(usable) >= 20
        for k in usable:
            z = _slice_z(vol.affine, int(k))
            for _, zr in slabs.values():
                assert _gap(z, zr) >= 5.0, (name, k, z, zr)


def _slice_z(affine, k):
    import nibabel as nib

    z = nib.affines.apply_affine(affine, (0, 0, k))[2]
    assert np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3])))
    return (z - abs(affine[2, 2]) / 2, z + abs(affine[2, 2]) / 2)


def test_never_reads_the_benchmark_images():
    names = set(dr.LABEL_ATLASES.values()) | set(dr.T1_TEXTURES.values())
    assert not names & {"aal.nii.gz", "ch2.nii.gz", "ch2better.nii.gz"}


# --------------------------------------------------------------------------
# TFDS builder
# --------------------------------------------------------------------------
def test_builder_tiny(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from dlset_jax.data import builders

    assert builders.BUILDERS["domain_random"] is builders.DomainRandom
    b = builders.DomainRandom(config="tiny", data_dir=str(tmp_path), file_format="array_record")
    b.download_and_prepare()
    assert b.name == "domain_random"
    assert b.info.metadata["class_names"] == ["object"]
    assert b.info.metadata["atlases"] == list(dr.available_atlases())
    ds = b.as_data_source()
    for split, n in (("train", 6), ("validation", 2), ("test", 2)):
        assert len(ds[split]) == n
        for i in range(n):
            e = ds[split][i]
            ref = dr.generate(0, split, int(e["id"].decode().split("_")[-1]))  # stored shuffled
            assert e["image"].dtype == np.uint8 and e["image"].shape[-1] == 3
            np.testing.assert_array_equal(e["image"], ref["image"])
            assert e["masks"].dtype == np.uint8 and e["masks"].shape[1:] == e["image"].shape[:2]
            assert e["masks"].sum(axis=(1, 2)).min() > 0
            assert e["classes"].dtype == np.int32 and len(e["classes"]) == len(e["masks"])
            assert e["spacing"].shape == (2,)
            assert e["case"].decode().split(":")[0] in ("procedural", "atlas", "real")
    assert os.path.isdir(b.data_dir)
