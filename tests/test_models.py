"""Tests for dlset_jax.models (tiny widths, small inputs)."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_model_config

from dlset_jax import config as config_lib
from dlset_jax.models import (
    HEADS,
    NOT_ARCHITECTURE,
    DeepLevelSet,
    ResNet,
    create_model,
    param_count,
    param_labels,
)
from dlset_jax.models import deep_level_set as dls
from dlset_jax.models.heads import adaptive_avg_pool, resize_bilinear


def tiny_model(formulation=None, **overrides):
    """Depth 18, width 8, 8-channel heads, output stride 8, frozen backbone BN."""
    cfg = tiny_model_config(**{"width": 8, "frozen_backbone_bn": True, **overrides})
    return create_model(cfg) if formulation is None else create_model(cfg, formulation)


def fast_variables(model, shape, seed=0):
    """Random variables of the right tree, filled with numpy.

    ``jax.jit(model.init)`` spends ~10 s compiling the threefry initialisers even
    for a tiny net; the tests only need some plausible values: He-normal
    kernels, small biases, BatchNorm scale 1 and bias 0, statistics (0, 1).
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = np.prod(leaf.shape[:-1])
            return jnp.asarray(rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in), leaf.dtype)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return (
            jnp.asarray(rng.normal(size=leaf.shape) * 0.01, leaf.dtype)
            if name == "bias"
            else jnp.zeros(leaf.shape, leaf.dtype)
        )

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def tiny18():
    """Depth 18, trainable BatchNorm, and its variables."""
    model = tiny_model(frozen_backbone_bn=False)
    return model, fast_variables(model, (1, 32, 32, 4))


# ----------------------------------------------------------------------------- resampling


def _bilinear_reference(x, oh, ow, align_corners):
    """Per-pixel bilinear sampling written directly from PyTorch's formulas."""
    b, h, w, c = x.shape

    def src(i, n_in, n_out):
        if align_corners:
            return 0.0 if n_out == 1 else i * (n_in - 1) / (n_out - 1)
        return max((i + 0.5) * n_in / n_out - 0.5, 0.0)

    out = np.zeros((b, oh, ow, c))
    for i in range(oh):
        sy = src(i, h, oh)
        y0 = min(int(np.floor(sy)), h - 1)
        y1, wy = min(y0 + 1, h - 1), sy - y0
        for j in range(ow):
            sx = src(j, w, ow)
            x0 = min(int(np.floor(sx)), w - 1)
            x1, wx = min(x0 + 1, w - 1), sx - x0
            out[:, i, j] = (
                (1 - wy) * (1 - wx) * x[:, y0, x0]
                + (1 - wy) * wx * x[:, y0, x1]
                + wy * (1 - wx) * x[:, y1, x0]
                + wy * wx * x[:, y1, x1]
            )
    return out


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize(
    "src,dst", [((4, 5), (16, 9)), ((7, 3), (7, 11)), ((1, 2), (5, 4)), ((9, 8), (4, 3))]
)
def test_resize_bilinear_matches_reference(rng, src, dst, align_corners):
    x = rng.normal(size=(2, *src, 3)).astype(np.float32)
    got = np.asarray(resize_bilinear(jnp.asarray(x), dst, align_corners=align_corners))
    np.testing.assert_allclose(got, _bilinear_reference(x, *dst, align_corners), atol=1e-5)
    if align_corners:  # corners are reproduced exactly
        np.testing.assert_allclose(
            got[:, [0, -1]][:, :, [0, -1]], x[:, [0, -1]][:, :, [0, -1]], atol=1e-6
        )


@pytest.mark.parametrize(
    "shape,bins", [((12, 12), 6), ((13, 7), 3), ((5, 5), 2), ((4, 9), 1), ((2, 3), 6)]
)
def test_adaptive_avg_pool_matches_reference(rng, shape, bins):
    x = rng.normal(size=(2, *shape, 3))
    h, w = shape
    ref = np.zeros((2, bins, bins, 3))
    for i, j in itertools.product(range(bins), range(bins)):
        ys = slice(int(np.floor(i * h / bins)), int(np.ceil((i + 1) * h / bins)))
        xs = slice(int(np.floor(j * w / bins)), int(np.ceil((j + 1) * w / bins)))
        ref[:, i, j] = x[:, ys, xs].mean(axis=(1, 2))
    got = np.asarray(adaptive_avg_pool(jnp.asarray(x, jnp.float32), bins))
    np.testing.assert_allclose(got, ref, atol=1e-5)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_shapes_and_dtypes(depth, output_stride):
    """Abstract evaluation (no compilation): every depth and output stride."""
    h, w = 40, 56
    model = tiny_model(depth=depth, output_stride=output_stride)
    x = jax.ShapeDtypeStruct((2, h, w, 4), jnp.float32)

    def run(x):
        v = model.init(jax.random.key(0), x)
        return v, model.apply(v, x)

    variables, out = jax.eval_shape(run, x)
    expected = {"phi0": 1, "motion": 2, "g": 1, "logits": 2}
    assert set(out) == set(expected) == set(HEADS)
    for k, c in expected.items():
        assert out[k].shape == (2, h, w, c), k
        assert out[k].dtype == jnp.float32, k
    assert set(variables["params"]) == {
        "backbone",
        "fusion",
        "head_phi0",
        "head_motion",
        "head_g",
        "head_logits",
    }
    # backbone feature strides
    net = ResNet(depth=depth, width=8, output_stride=output_stride)
    feats = jax.eval_shape(lambda x: net.init_with_output(jax.random.key(0), x)[0], x)
    e = 4 if depth >= 50 else 1
    ceil = lambda n, s: -(-n // s)
    s3 = 8 if output_stride == 8 else 16
    assert feats["stem"].shape == (2, h // 2, w // 2, 8)
    assert feats["layer1"].shape == (2, h // 4, w // 4, 8 * e)
    assert feats["layer2"].shape == (2, ceil(h, 8), ceil(w, 8), 16 * e)
    assert feats["layer3"].shape == (2, ceil(h, s3), ceil(w, s3), 32 * e)
    assert feats["layer4"].shape == (2, ceil(h, output_stride), ceil(w, output_stride), 64 * e)


def test_forward_values_odd_size():
    """A real init and run on an odd, non-square crop: finite outputs, g in (0, 1).

    (An "unsafe_rbg" key: jitting the threefry initialisers costs ~10 s more.)"""
    model = tiny_model(output_stride=16)
    x = jax.random.normal(jax.random.key(1), (1, 37, 45, 4))
    out, _ = jax.jit(model.init_with_output)(jax.random.key(0, impl="unsafe_rbg"), x)
    for k, c in HEADS.items():
        assert out[k].shape == (1, 37, 45, c)
        assert np.all(np.isfinite(out[k]))
    assert np.all((out["g"] > 0) & (out["g"] < 1))


def test_input_channels_checked():
    with pytest.raises(ValueError, match="expected input"):
        jax.eval_shape(
            lambda x: tiny_model().init(jax.random.key(0), x),
            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
        )


# ----------------------------------------------------------------------------- BatchNorm


def test_batchnorm_train_vs_eval(tiny18):
    model, variables = tiny18
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 4))
    apply_train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    apply_eval = jax.jit(lambda v, x: model.apply(v, x, train=False))

    out_train, updates = apply_train(variables, x)
    old, new = variables["batch_stats"], updates["batch_stats"]
    # train: every statistic moves (momentum 0.9 towards the batch statistics)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(old), jax.tree_util.tree_leaves(new)
    ):
        assert not np.allclose(a, b), jax.tree_util.keystr(path)
    # train: normalised with batch statistics, so a sample's output depends on the batch
    out_train_0, _ = apply_train(variables, x[:1].repeat(2, axis=0))
    assert not np.allclose(out_train["phi0"][0], out_train_0["phi0"][0], atol=1e-5)
    # eval: running statistics, per-sample, no state to update
    out_eval = apply_eval(variables, x)
    out_eval_0 = apply_eval(variables, x[:1].repeat(2, axis=0))
    np.testing.assert_allclose(out_eval["phi0"][0], out_eval_0["phi0"][0], rtol=1e-5, atol=1e-6)
    # eval uses the running statistics
    other = {**variables, "batch_stats": updates["batch_stats"]}
    assert not np.allclose(apply_eval(other, x)["phi0"], out_eval["phi0"])


def _loss_fn(model, x):
    def loss(params, batch_stats):
        out, upd = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        value = sum(jnp.mean(jnp.square(o)) for o in out.values())
        return value, upd["batch_stats"]

    return loss


def test_frozen_backbone_bn():
    model = tiny_model(frozen_backbone_bn=True)
    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 4))
    variables = fast_variables(model, x.shape)
    params, stats = variables["params"], variables["batch_stats"]
    # non-default statistics, so that "unchanged" means something
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)
    grads, new_stats = jax.jit(jax.grad(_loss_fn(model, x), has_aux=True))(params, stats)

    # backbone statistics untouched in train mode, heads' statistics updated
    for a, b in zip(
        jax.tree_util.tree_leaves(stats["backbone"]),
        jax.tree_util.tree_leaves(new_stats["backbone"]),
    ):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(
        stats["fusion"]["bn_stem"]["mean"], new_stats["fusion"]["bn_stem"]["mean"]
    )

    labels = param_labels(params, frozen_bn=True)
    flat_g = jax.tree_util.tree_leaves_with_path(grads)
    flat_l = jax.tree_util.tree_leaves(labels)
    n_frozen = 0
    for (path, g), label in zip(flat_g, flat_l):
        name = jax.tree_util.keystr(path)
        if label == "frozen":
            n_frozen += 1
            assert path[-1].key in ("scale", "bias") and "bn" in path[-2].key, name
            np.testing.assert_array_equal(g, 0.0, err_msg=name)
        elif path[-1].key == "kernel":
            assert np.any(g != 0), name
    assert n_frozen == 2 * (1 + 8 * 2 + 3)  # stem + 8 blocks x 2 BN + 3 downsample BN

    # with the labels, SGD with momentum and weight decay leaves them unchanged
    tx = optax.multi_transform(
        {
            "backbone": optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.1, momentum=0.9)),
            "head": optax.sgd(1.0, momentum=0.9),
            "frozen": optax.set_to_zero(),
        },
        labels,
    )
    opt_state = tx.init(params)
    updates, _ = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    for (path, a), b, label in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(new_params), flat_l
    ):
        if label == "frozen":
            np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    assert not np.allclose(
        params["backbone"]["conv1"]["kernel"], new_params["backbone"]["conv1"]["kernel"]
    )


def test_param_labels(tiny18):
    _, variables = tiny18
    labels = param_labels(variables["params"])
    assert set(jax.tree_util.tree_leaves(labels["backbone"])) == {"backbone"}
    for k in ("fusion", "head_phi0", "head_motion", "head_g", "head_logits"):
        assert set(jax.tree_util.tree_leaves(labels[k])) == {"head"}
    assert jax.tree_util.tree_structure(labels) == jax.tree_util.tree_structure(variables["params"])


# ----------------------------------------------------------------------------- jit, dtypes


def test_jit_compiles_once_per_shape(tiny18):
    model, variables = tiny18
    traces = []

    @jax.jit
    def fwd(v, x):
        traces.append(x.shape)
        return model.apply(v, x)["phi0"]

    x = jnp.ones((1, 32, 32, 4))
    fwd(variables, x)
    fwd(variables, x + 1.0)
    fwd(variables, 2.0 * x)
    assert len(traces) == 1
    fwd(variables, jnp.ones((1, 48, 32, 4)))
    fwd(variables, jnp.zeros((1, 48, 32, 4)))
    assert traces == [(1, 32, 32, 4), (1, 48, 32, 4)]


def test_bfloat16_compute():
    model = tiny_model(compute_dtype="bfloat16", frozen_backbone_bn=False)
    assert model.dtype == jnp.bfloat16
    x = jax.random.normal(jax.random.key(4), (2, 32, 32, 4))

    variables = fast_variables(model, x.shape)

    @jax.jit
    def run(variables, x):
        return model.apply(
            variables,
            x,
            train=True,
            capture_intermediates=True,
            mutable=["intermediates", "batch_stats"],
        )

    out, state = run(variables, x)
    assert {l.dtype for l in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert {l.dtype for l in jax.tree_util.tree_leaves(state["batch_stats"])} == {
        jnp.dtype(jnp.float32)
    }
    for k in HEADS:
        assert out[k].dtype == jnp.float32
        assert np.all(np.isfinite(out[k]))
    inter = state["intermediates"]
    bb = inter["backbone"]
    assert bb["layer4_1"]["__call__"][0].dtype == jnp.bfloat16
    assert bb["layer2_0"]["conv1"]["__call__"][0].dtype == jnp.bfloat16
    assert bb["bn1"]["__call__"][0].dtype == jnp.bfloat16
    # (the fused heads get the fusion's per-source maps, a list)
    assert {l.dtype for l in jax.tree_util.tree_leaves(inter["fusion"]["__call__"][0])} == {
        jnp.dtype(jnp.bfloat16)
    }
    assert inter["head_phi0"]["final"]["__call__"][0].dtype == jnp.bfloat16


# ----------------------------------------------------------------------------- sizes, config

# torchvision resnetN parameter counts without the 1000-way fc (weights + biases)
TORCHVISION_NO_FC = {
    18: 11_689_512 - 513_000,
    34: 21_797_672 - 513_000,
    50: 25_557_032 - 2_049_000,
    101: 44_549_160 - 2_049_000,
}


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_backbone_param_count(depth):
    net = ResNet(depth=depth, width=64, in_channels=3)
    shapes = jax.eval_shape(
        net.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    )
    assert param_count(shapes["params"]) == TORCHVISION_NO_FC[depth]
    if depth == 101:
        assert round(param_count(shapes["params"]) / 1e6, 1) == 42.5


def test_full_model_param_count():
    """The schema's model (the paper's ResNet-101 network)."""
    model = create_model(config_lib.base_config().model)
    shapes = jax.eval_shape(model.init_variables, jax.random.key(0))
    n = param_count(shapes["params"])
    # backbone (4 input channels: +64*49) + fusion + 4 PSP heads
    assert param_count(shapes["params"]["backbone"]) == 42_500_160 + 64 * 49
    assert param_count(shapes["params"]["fusion"]) == 128 * 9 * (64 + 256 + 512 + 2048) + 4 * 256
    assert n == 47_400_838, n


def test_create_model_from_config():
    cfg = config_lib.base_config().model
    cfg.update(
        dict(
            depth=34,
            width=8,
            output_stride=16,
            frozen_backbone_bn=True,
            compute_dtype="bfloat16",
            in_channels=2,
            psp_bins=[1, 3],  # a list, as a JSON-saved config gives it back
            pretrained="weights/resnet34.pth",  # not the network's: left out
        )
    )
    model = create_model(cfg)
    assert (
        model.depth,
        model.width,
        model.output_stride,
        model.frozen_backbone_bn,
        model.compute_dtype,
        model.dtype,
        model.in_channels,
        model.psp_bins,
    ) == (34, 8, 16, True, "bfloat16", jnp.bfloat16, 2, (1, 3))
    # the rest are the schema's values
    assert (model.fusion_channels, model.psp_channels, model.fusion_align_corners) == (
        128,
        128,
        False,
    )
    # every field of the schema's model but `pretrained` is a field of the network, and
    # the network has no other field and no default of its own (but `formulation`: how
    # it is evaluated, the same function either way)
    fields = {f.name for f in dataclasses.fields(DeepLevelSet)} - {"parent", "name"}
    assert fields - {"formulation"} == set(cfg) - set(NOT_ARCHITECTURE)
    defaults = {
        f.name
        for f in dataclasses.fields(DeepLevelSet)
        if f.default is not dataclasses.MISSING and f.name not in ("parent", "name")
    }
    assert defaults == {"formulation"}
    assert create_model(cfg.to_dict()) == model  # a plain mapping works too
    with pytest.raises(TypeError):
        DeepLevelSet()
    incomplete = cfg.to_dict()
    del incomplete["depth"]
    with pytest.raises(TypeError, match="depth"):
        create_model(incomplete)
    with pytest.raises(TypeError, match="nope"):
        create_model({**cfg.to_dict(), "nope": 1})
    # an unknown compute dtype is named as soon as the network is used
    cfg.compute_dtype = "float16"
    with pytest.raises(ValueError, match="compute_dtype"):
        jax.eval_shape(create_model(cfg).init_variables, jax.random.key(0))


def test_resnet_trains_its_batchnorm_by_default():
    """The backbone alone: BatchNorm statistics move in train mode unless frozen_bn."""
    x = jax.random.normal(jax.random.key(6), (2, 32, 32, 4))
    for frozen in (None, True):
        net = (
            ResNet(depth=18, width=8)
            if frozen is None
            else ResNet(depth=18, width=8, frozen_bn=True)
        )
        v = fast_variables(net, x.shape)
        _, upd = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
        moved = not np.allclose(upd["batch_stats"]["bn1"]["mean"], v["batch_stats"]["bn1"]["mean"])
        assert moved == (frozen is None)


# ----------------------------------------------------------------------------- fast paths

from dlset_jax.models import resnet  # noqa: E402
from dlset_jax.models.heads import PSPHead, fused_psp_heads  # noqa: E402


def _max_rel(a, b):
    """Largest |a - b| / max|a| over the leaves of two trees."""
    errs = [
        float(
            np.max(np.abs(np.asarray(x) - np.asarray(y))) / (np.max(np.abs(np.asarray(x))) + 1e-30)
        )
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    ]
    return max(errs)


@pytest.mark.parametrize("stride,use_bias", [(1, False), (2, False), (2, True), (1, True)])
def test_conv1x1_matches_nn_conv(rng, stride, use_bias):
    """Same variables, outputs and gradients as a 1x1 nn.Conv (wide and narrow outputs)."""
    x = jnp.asarray(rng.normal(size=(2, 9, 7, 12)), jnp.float32)
    for cout in (5, 24):
        nn_conv = resnet.nn.Conv(
            cout,
            (1, 1),
            strides=(stride, stride),
            padding=((0, 0), (0, 0)),
            use_bias=use_bias,
            kernel_init=resnet.conv_init,
        )
        new = resnet.Conv1x1(cout, stride=stride, use_bias=use_bias)
        v_ref = nn_conv.init(jax.random.key(0), x)
        v_new = new.init(jax.random.key(0), x)
        assert jax.tree_util.tree_structure(v_ref) == jax.tree_util.tree_structure(v_new)
        for a, b in zip(jax.tree_util.tree_leaves(v_ref), jax.tree_util.tree_leaves(v_new)):
            np.testing.assert_array_equal(a, b)  # same initial values too
        if use_bias:
            v_ref = jax.tree_util.tree_map(lambda p: p + 0.1, v_ref)
        w = jnp.asarray(rng.normal(size=(2, -(-9 // stride), -(-7 // stride), cout)), jnp.float32)

        def loss(mod):
            return lambda v, x: jnp.sum(mod.apply(v, x) * w)

        y_ref, y_new = nn_conv.apply(v_ref, x), new.apply(v_ref, x)
        assert y_new.shape == y_ref.shape
        assert _max_rel(y_ref, y_new) < 1e-5
        g_ref = jax.grad(loss(nn_conv), argnums=(0, 1))(v_ref, x)
        g_new = jax.jit(jax.grad(loss(new), argnums=(0, 1)))(v_ref, x)
        assert _max_rel(g_ref, g_new) < 1e-5
    kernel, bias = new.apply(v_ref, in_features=12)
    assert kernel.shape == (1, 1, 12, 24) and (bias is None) == (not use_bias)


def test_block_barrier_is_bit_exact():
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 4))
    variables = fast_variables(ResNet(depth=18, width=8), x.shape)

    def run(barrier):
        model = ResNet(depth=18, width=8, formulation=resnet.Formulation(block_barrier=barrier))
        f = jax.jit(
            jax.value_and_grad(
                lambda v: sum(jnp.sum(jnp.sin(f)) for f in model.apply(v, x).values())
            )
        )
        return f(variables)

    ref, new = run(False), run(True)
    for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(new)):
        np.testing.assert_array_equal(a, b)
    assert resnet.runtime_one(jnp.asarray([jnp.inf, 2.0])) == 1.0


def test_formulation_is_a_field_not_global_state():
    assert resnet.FAST == resnet.Formulation() and create_model_default_is_fast()
    ref = tiny_model(resnet.REFERENCE)
    assert ref.formulation == resnet.REFERENCE and tiny_model().formulation == resnet.FAST
    with pytest.raises(TypeError):
        resnet.Formulation(nope=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        resnet.FAST.matmul_1x1 = False


def create_model_default_is_fast():
    return tiny_model().formulation is resnet.FAST


@pytest.mark.parametrize("depth,output_stride", [(18, 8), (50, 16)])
def test_fast_model_matches_reference(depth, output_stride, monkeypatch):
    """Custom-VJP 1x1 convolutions + fusion barriers + fused heads against the plain
    formulation (nn.Conv, heads one by one): same variables; in float64 the same
    outputs (train and eval mode) and gradients to rounding; in float32 the fast one
    within its rounding of the float64 values.

    (Train-mode BatchNorm in the heads amplifies float32 rounding at these tiny
    widths to 1e-5..1e-4 relative, hence float64 as the arbiter. Measured float32
    errors of the fast formulation without LLVM's optimisation passes, as the tests
    compile: train outputs 1e-5 (ResNet-18) / 4e-4 (ResNet-50), eval outputs 1.4e-6,
    gradients 8e-6 / 2.1e-3, each within 2x of the plain formulation's; the bounds
    below leave 5x. A wrong formulation is off by O(1).)"""
    model = tiny_model(depth=depth, output_stride=output_stride, frozen_backbone_bn=True)
    x = jax.random.normal(jax.random.key(1), (2, 44, 36, 4))
    shapes = {}
    for name, form in (("ref", resnet.REFERENCE), ("new", resnet.FAST)):
        m = tiny_model(form, depth=depth, output_stride=output_stride)
        shapes[name] = jax.eval_shape(m.init, jax.random.key(0), x)
    assert shapes["ref"] == shapes["new"]
    variables = fast_variables(model, x.shape, seed=3)
    # small final kernels, as trained heads have: g's sigmoid is not saturated (where
    # its gradient is float rounding only)
    variables = jax.tree_util.tree_map_with_path(
        lambda p, a: a * 0.01 if "final" in jax.tree_util.keystr(p) else a, variables
    )
    weights = {
        k: np.asarray(jax.random.normal(jax.random.key(5), (2, 44, 36, c)))
        for k, c in HEADS.items()
    }

    def run(form, dtype="float32"):
        """(train outputs, gradients, eval outputs), compiled as one program."""
        model = tiny_model(
            form,
            depth=depth,
            output_stride=output_stride,
            frozen_backbone_bn=True,
            compute_dtype=dtype,
        )
        dtype = model.dtype
        v = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), variables)
        xx = jnp.asarray(x, dtype)

        def loss(params):
            out, upd = model.apply({**v, "params": params}, xx, train=True, mutable=["batch_stats"])
            return sum(jnp.sum(out[k] * weights[k]) for k in HEADS), out

        def all_three(params):
            (_, out), grads = jax.value_and_grad(loss, has_aux=True)(params)
            return out, grads, model.apply({**v, "params": params}, xx)

        return jax.tree_util.tree_map(np.asarray, jax.jit(all_three)(v["params"]))

    # float64 is no compute dtype of the schema; the arbiter adds it for this test only
    monkeypatch.setitem(dls._DTYPES, "float64", jnp.float64)
    with jax.enable_x64(True):
        exact = run(resnet.REFERENCE, "float64")
        exact_new = run(resnet.FAST, "float64")
    # the same math: in float64 the two formulations agree to rounding
    assert _max_rel(exact, exact_new) < 1e-9
    new = run(resnet.FAST)
    assert _max_rel(exact[0], new[0]) < 2e-3  # train outputs
    assert _max_rel(exact[2], new[2]) < 1e-5  # eval outputs

    # Gradients, as one vector: float32 rounding can move a head pre-activation across
    # ReLU's kink (train-mode BN centres them on 0), which changes a leaf's gradient at
    # the 1/pixels level for either formulation; per leaf they agree to ~1e-5 otherwise.
    def global_rel(a, b):
        la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
        num = sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2)) for x, y in zip(la, lb))
        return np.sqrt(num / sum(float(np.sum(np.asarray(x) ** 2)) for x in la))

    assert global_rel(exact[1], new[1]) < 1e-2


def test_psp_head_call_matches_fused_path(rng):
    """A single PSPHead applied directly equals fused_psp_heads on one part."""
    x = jnp.asarray(rng.normal(size=(2, 10, 12, 16)), jnp.float32)
    head = PSPHead(3, in_channels=16, channels=8)
    variables = head.init(jax.random.key(0), x)
    ref = head.apply(variables, x)
    fused = head.apply(
        variables, [x], method=lambda h, parts: fused_psp_heads([h], parts, (10, 12), False)[0]
    )
    assert _max_rel(ref, fused) < 1e-5
    with pytest.raises(ValueError, match="input channels"):
        head.apply(variables, x[..., :8])
