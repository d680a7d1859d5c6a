"""Weight import: a PyTorch ResNet (torchvision names) -> the Flax backbone / model."""

import sys

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from conftest import tiny_model_config  # noqa: E402

from dlset_jax.models import ResNet, convert, create_model  # noqa: E402
from dlset_jax.models import torch_reference as tr  # noqa: E402

pytestmark = pytest.mark.torch
torch.set_num_threads(2)


def _rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-12))


def _torch_model(module, seed=0):
    """Random weights at a healthy scale, non-trivial BatchNorm, eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_out) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    tr.randomize_batchnorm(module, g)
    return module.eval()


def _imagenet_like_state_dict(depth, width, output_stride=8, seed=0):
    """torchvision-like checkpoint: 3-channel conv1, a 10-way ``fc`` and
    ``num_batches_tracked`` buffers."""
    net = _torch_model(
        tr.TorchResNet(depth, width, in_channels=3, output_stride=output_stride), seed
    )
    sd = dict(net.state_dict())
    sd["fc.weight"] = torch.randn(10, net.out_channels)
    sd["fc.bias"] = torch.randn(10)
    assert any(k.endswith("num_batches_tracked") for k in sd)
    return net, sd


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize(
    "depth,output_stride,fmt", [(18, 8, "pth"), (50, 8, "npz"), (50, 16, "pth")]
)
def test_backbone_reproduces_torch_features(tmp_path, depth, output_stride, fmt):
    width = 8
    net, sd = _imagenet_like_state_dict(depth, width, output_stride)
    path = tmp_path / f"resnet{depth}.{fmt}"
    if fmt == "pth":
        torch.save(sd, path)
    else:
        np.savez(path, **{k: v.numpy() for k, v in sd.items()})

    flax_net = ResNet(depth=depth, width=width, in_channels=4, output_stride=output_stride)
    x4 = jax.ShapeDtypeStruct((2, 40, 48, 4), jnp.float32)
    template = jax.eval_shape(flax_net.init, jax.random.key(0), x4)
    variables = convert.import_torchvision_resnet(str(path), template, subtree=None)

    # 4th input channel = copy of the last RGB filter (the authors' initialisation)
    k = np.asarray(variables["params"]["conv1"]["kernel"])
    np.testing.assert_array_equal(k[:, :, 3], k[:, :, 2])
    np.testing.assert_array_equal(k[:, :, :3], sd["conv1.weight"].numpy().transpose(2, 3, 1, 0))

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 40, 48, generator=g)
    with torch.no_grad():
        ref = {k: _nhwc(v) for k, v in net(x).items()}
    # guidance channel zero: exactly the 3-channel network
    x_jax = np.concatenate([_nhwc(x), np.zeros((2, 40, 48, 1), np.float32)], axis=-1)
    feats = jax.jit(lambda v, x: flax_net.apply(v, x, train=False))(variables, x_jax)
    for name in ("stem", "layer1", "layer2", "layer3", "layer4"):
        assert feats[name].shape == ref[name].shape, name
        assert _rel_err(ref[name], np.asarray(feats[name])) < 1e-4, name

    # a non-zero guidance channel acts like a second copy of the blue channel
    x_dup = np.concatenate([x_jax[..., :3], 0.5 * x_jax[..., 2:3]], axis=-1)
    x_ref = x.clone()
    x_ref[:, 2] *= 1.5
    with torch.no_grad():
        ref4 = _nhwc(net(x_ref)["layer4"])
    got4 = np.asarray(jax.jit(lambda v, x: flax_net.apply(v, x)["layer4"])(variables, x_dup))
    assert _rel_err(ref4, got4) < 1e-4


def test_whole_model_matches_torch_reference():
    """Fusion, PSP heads, resizing (corners aligned or not) and output layout
    against the plain-PyTorch model, eval and train mode."""
    cfg = tiny_model_config(width=8, frozen_backbone_bn=True)
    same = ("depth", "width", "in_channels", "output_stride", "fusion_channels", "psp_channels")
    tnet = tr.TorchDeepLevelSet(
        **{k: cfg[k] for k in same},
        frozen_bn=cfg.frozen_backbone_bn,
        fusion_align_corners=cfg.fusion_align_corners,
        psp_bins=tuple(cfg.psp_bins),
    )
    tnet = _torch_model(tnet, seed=3)
    with torch.no_grad():  # O(1) outputs, so that the sigmoid of g is not saturated
        for name in ("phi0", "motion", "g", "logits"):
            getattr(tnet, f"head_{name}").final.weight.mul_(1e-3)
    model = create_model(cfg)
    h, w = 44, 36
    template = jax.eval_shape(lambda: model.init_variables(jax.random.key(0), (h, w)))
    sd = {k: v.numpy() for k, v in tnet.state_dict().items()}
    variables = convert.convert_state_dict(sd, template)

    x = torch.randn(2, 4, h, w, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = tnet(x)
    out = jax.jit(lambda v, x: model.apply(v, x))(variables, _nhwc(x))
    for name, n in {"phi0": 1, "motion": 2, "g": 1, "logits": 2}.items():
        assert out[name].shape == (2, h, w, n)
        assert _rel_err(_nhwc(ref[name]), np.asarray(out[name])) < 1e-4, name

    # train mode: heads normalise with batch statistics, the frozen backbone does not
    tnet.train()
    with torch.no_grad():
        ref = tnet(x)
    out, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, _nhwc(x)
    )
    for name in ("phi0", "motion", "logits"):
        assert _rel_err(_nhwc(ref[name]), np.asarray(out[name])) < 1e-4, name
    # running means follow PyTorch's momentum 0.1 (the variances differ: PyTorch
    # stores the unbiased batch variance, Flax the biased one)
    np.testing.assert_allclose(
        upd["batch_stats"]["head_g"]["bottleneck_bn"]["mean"],
        tnet.head_g.bottleneck_bn.running_mean.numpy(),
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_array_equal(
        upd["batch_stats"]["backbone"]["bn1"]["mean"],
        variables["batch_stats"]["backbone"]["bn1"]["mean"],
    )


def _template(depth=18, width=8):
    return jax.eval_shape(
        ResNet(depth=depth, width=width).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 32, 32, 4), jnp.float32),
    )


def test_errors_name_the_keys():
    _, sd = _imagenet_like_state_dict(18, 8)
    sd = {k: v.numpy() for k, v in sd.items()}
    template = _template()
    convert.import_torchvision_resnet(sd, template, subtree=None)  # complete: fine

    missing = dict(sd)
    del missing["layer2.1.conv2.weight"], missing["layer3.0.downsample.1.running_var"]
    with pytest.raises(ValueError, match="missing keys") as e:
        convert.import_torchvision_resnet(missing, template, subtree=None)
    assert "layer2.1.conv2.weight" in str(e.value)
    assert "layer3.0.downsample.1.running_var" in str(e.value)

    extra = dict(
        sd,
        **{
            "layer5.0.conv1.weight": np.zeros((8, 8, 3, 3), np.float32),
            "layer1.0.se.weight": np.zeros(3, np.float32),
        },
    )
    with pytest.raises(ValueError, match="unexpected keys") as e:
        convert.import_torchvision_resnet(extra, template, subtree=None)
    assert "layer5.0.conv1.weight" in str(e.value) and "layer1.0.se.weight" in str(e.value)

    bad = dict(sd)
    bad["layer1.1.bn2.weight"] = np.ones(5, np.float32)
    bad["layer4.0.conv1.weight"] = np.ones((64, 33, 3, 3), np.float32)
    with pytest.raises(ValueError, match="shape mismatches") as e:
        convert.import_torchvision_resnet(bad, template, subtree=None)
    msg = str(e.value)
    assert "layer1.1.bn2.weight" in msg and "layer4.0.conv1.weight" in msg
    assert "missing" not in msg  # mis-shaped keys are reported once, as mismatches

    # a model's tree: only the backbone is replaced
    model = create_model(tiny_model_config(width=8))
    full = jax.eval_shape(lambda: model.init_variables(jax.random.key(0), 32))
    new = convert.import_torchvision_resnet({"module." + k: v for k, v in sd.items()}, full)
    assert isinstance(new["params"]["backbone"]["conv1"]["kernel"], np.ndarray)
    assert new["params"]["head_g"] is full["params"]["head_g"]


def test_npz_needs_no_torch(tmp_path, monkeypatch):
    _, sd = _imagenet_like_state_dict(18, 8)
    pth, npz = tmp_path / "w.pth", tmp_path / "w.npz"
    torch.save(sd, pth)
    convert.main([str(pth), str(npz)])  # the CLI: .pth -> .npz
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" now fails
    with pytest.raises(ImportError, match="needs PyTorch"):
        convert.load_state_dict(str(pth))
    loaded = convert.load_state_dict(str(npz))
    assert set(loaded) == set(sd)
    np.testing.assert_array_equal(
        loaded["layer1.0.conv1.weight"], sd["layer1.0.conv1.weight"].numpy()
    )
    convert.import_torchvision_resnet(str(npz), _template(), subtree=None)
    with pytest.raises(ValueError, match="unsupported"):
        convert.load_state_dict(str(tmp_path / "w.h5"))


def test_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    _, sd = _imagenet_like_state_dict(18, 8)
    path = tmp_path / "w.safetensors"
    st.save_file({k: v.numpy() for k, v in sd.items()}, str(path))
    convert.import_torchvision_resnet(str(path), _template(), subtree=None)
