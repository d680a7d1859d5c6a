"""The same network in plain PyTorch (NCHW), for tests and benchmarks only.

Needs torch; nothing in the package imports this module. Parameter names are
torchvision's for the backbone (``conv1``, ``bn1``, ``layer3.5.conv2``,
``layer3.0.downsample.0`` ...) and mirror the Flax names for the fusion and
heads (``fusion.conv_stem``, ``head_phi0.pool6_conv`` ...), so that
``convert.convert_state_dict`` maps a whole model. Written from the
architecture description (docs/method.md), not copied from torchvision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlset_jax.models.resnet import STAGE_DEPTHS, is_bottleneck, stage_strides_dilations

HEADS = {"phi0": 1, "motion": 2, "g": 1, "logits": 2}


def _conv(cin, cout, k, stride=1, dilation=1, bias=False):
    return nn.Conv2d(
        cin, cout, k, stride=stride, padding=dilation * (k - 1) // 2, dilation=dilation, bias=bias
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, dilation=1):
        super().__init__()
        self.conv1 = _conv(cin, planes, 3, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(_conv(cin, planes, 1, stride), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        res = x if self.downsample is None else self.downsample(x)
        return F.relu(out + res)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, dilation=1):
        super().__init__()
        self.conv1 = _conv(cin, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * 4, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(
                _conv(cin, planes * 4, 1, stride), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = x if self.downsample is None else self.downsample(x)
        return F.relu(out + res)


class TorchResNet(nn.Module):
    """torchvision-layout ResNet with width multiplier and dilation; returns the
    features dict of ``resnet.ResNet`` (NCHW). No ``fc``."""

    def __init__(self, depth=101, width=64, in_channels=4, output_stride=8):
        super().__init__()
        block = Bottleneck if is_bottleneck(depth) else BasicBlock
        strides, dilations = stage_strides_dilations(output_stride)
        self.conv1 = _conv(in_channels, width, 7, stride=2)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for s, n in enumerate(STAGE_DEPTHS[depth]):
            planes = width * 2**s
            blocks = []
            for b in range(n):
                blocks.append(block(cin, planes, strides[s] if b == 0 else 1, dilations[s]))
                cin = planes * block.expansion
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.out_channels = cin

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        feats = {"stem": x}
        x = self.maxpool(x)
        for s in range(1, 5):
            x = getattr(self, f"layer{s}")(x)
            feats[f"layer{s}"] = x
        return feats


def _conv_bn_relu(conv, bn, x):
    return F.relu(bn(conv(x)))


class TorchSkipFusion(nn.Module):
    def __init__(
        self,
        in_channels: dict,
        channels=128,
        align_corners=False,
        sources=("stem", "layer1", "layer2", "layer4"),
    ):
        super().__init__()
        self.sources, self.align_corners = sources, align_corners
        for s in sources:
            setattr(self, f"conv_{s}", _conv(in_channels[s], channels, 3))
            setattr(self, f"bn_{s}", nn.BatchNorm2d(channels))

    def forward(self, feats):
        size = feats["stem"].shape[2:]
        outs = []
        for s in self.sources:
            y = _conv_bn_relu(getattr(self, f"conv_{s}"), getattr(self, f"bn_{s}"), feats[s])
            if tuple(y.shape[2:]) != tuple(size):
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=self.align_corners)
            outs.append(y)
        return torch.cat(outs, 1)


class TorchPSPHead(nn.Module):
    def __init__(self, cin, n_out, channels=128, bins=(1, 2, 3, 6)):
        super().__init__()
        self.bins = bins
        for b in bins:
            setattr(self, f"pool{b}_conv", _conv(cin, cin // 4, 1))
            setattr(self, f"pool{b}_bn", nn.BatchNorm2d(cin // 4))
        self.bottleneck_conv = _conv(cin + len(bins) * (cin // 4), channels, 1)
        self.bottleneck_bn = nn.BatchNorm2d(channels)
        self.final = _conv(channels, n_out, 1, bias=True)

    def forward(self, x):
        size = x.shape[2:]
        priors = []
        for b in self.bins:
            y = F.adaptive_avg_pool2d(x, b)
            y = _conv_bn_relu(getattr(self, f"pool{b}_conv"), getattr(self, f"pool{b}_bn"), y)
            priors.append(F.interpolate(y, size=size, mode="bilinear", align_corners=True))
        y = _conv_bn_relu(self.bottleneck_conv, self.bottleneck_bn, torch.cat(priors + [x], 1))
        return self.final(y)


class TorchDeepLevelSet(nn.Module):
    def __init__(
        self,
        depth=101,
        width=64,
        in_channels=4,
        output_stride=8,
        frozen_bn=True,
        fusion_channels=128,
        fusion_align_corners=False,
        psp_channels=128,
        psp_bins=(1, 2, 3, 6),
    ):
        super().__init__()
        self.backbone = TorchResNet(depth, width, in_channels, output_stride)
        e = 4 if is_bottleneck(depth) else 1
        chans = {
            "stem": width,
            "layer1": width * e,
            "layer2": 2 * width * e,
            "layer4": 8 * width * e,
        }
        self.fusion = TorchSkipFusion(chans, fusion_channels, fusion_align_corners)
        for name, n in HEADS.items():
            setattr(
                self,
                f"head_{name}",
                TorchPSPHead(4 * fusion_channels, n, psp_channels, tuple(psp_bins)),
            )
        self.frozen_bn = frozen_bn
        if frozen_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        if self.frozen_bn:  # frozen backbone BN: always running statistics
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x):
        size = x.shape[2:]
        fused = self.fusion(self.backbone(x))
        out = {}
        for name in HEADS:
            y = getattr(self, f"head_{name}")(fused)
            out[name] = F.interpolate(y, size=size, mode="bilinear", align_corners=True)
        out["g"] = torch.sigmoid(out["g"])
        return out


def randomize_batchnorm(module: nn.Module, generator: torch.Generator | None = None):
    """Give every BatchNorm non-trivial affine parameters and statistics (tests)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(c, generator=generator) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
    return module
