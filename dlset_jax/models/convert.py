"""Import PyTorch (torchvision-layout) weights into the Flax models.

Files: ``.pth``/``.pt`` (a state dict, read with ``torch.load`` -- needs torch),
``.safetensors`` (needs the ``safetensors`` package) or ``.npz`` (numpy only;
the CLI below turns a ``.pth`` into one: ``python -m dlset_jax.models.convert
resnet101.pth resnet101.npz``).

Names map one to one (``convert_state_dict``):

  torch ``layer3.5.conv2.weight``          -> params ``layer3_5/conv2/kernel``   (OIHW -> HWIO)
  torch ``layer3.0.downsample.0.weight``   -> params ``layer3_0/downsample_conv/kernel``
  torch ``layer3.0.downsample.1.weight``   -> params ``layer3_0/downsample_bn/scale``
  torch ``bn1.bias``                       -> params ``bn1/bias``
  torch ``bn1.running_mean`` / ``running_var`` -> batch_stats ``bn1/mean`` / ``var``
  ``num_batches_tracked`` and (for the backbone) ``fc.*`` are ignored.

Extra input channels: ImageNet weights have a 3-channel ``conv1``; the network
takes image + guidance (4 channels). As in the authors' code
(``ResNet.load_pretrained_ms`` in their ``networks/backend_cnn.py``), every
input channel beyond the file's ones is initialised with a COPY OF THE LAST
filter channel of the file (the blue channel for RGB weights). Nothing is
rescaled.

Missing keys, unexpected keys and shape mismatches raise ``ValueError`` naming
the keys.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable, Mapping

import numpy as np

IGNORED_SUFFIXES = ("num_batches_tracked",)
BACKBONE_IGNORED_PREFIXES = ("fc.",)
STEM_CONV = "conv1.weight"


# ----------------------------------------------------------------------------- files


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read a state dict (name -> array) from .pth/.pt, .safetensors or .npz."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".pth", ".pt"):
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"reading {path} needs PyTorch, which is not installed; convert it to .npz "
                "where torch is available (python -m dlset_jax.models.convert IN.pth OUT.npz) "
                "or use a .safetensors file"
            ) from e
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = sd["state_dict"]
        return {k: v.detach().cpu().numpy() for k, v in sd.items()}
    if ext == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError as e:
            raise ImportError(f"reading {path} needs the 'safetensors' package") from e
        return dict(load_file(path))
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    raise ValueError(f"unsupported weight file {path!r}: expected .pth, .pt, .safetensors or .npz")


# ----------------------------------------------------------------------------- names


def torch_key_to_flax(key: str) -> tuple[str, tuple[str, ...]]:
    """``'layer1.0.downsample.1.running_var'`` -> ``('batch_stats', ('layer1_0',
    'downsample_bn', 'var'))``. Module paths elsewhere map dot for slash."""
    *mods, leaf = key.split(".")
    path: list[str] = []
    i = 0
    while i < len(mods):
        m = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if re.fullmatch(r"layer\d+", m) and nxt is not None and nxt.isdigit():
            path.append(f"{m}_{nxt}")
            i += 2
        elif m == "downsample" and nxt in ("0", "1"):
            path.append("downsample_conv" if nxt == "0" else "downsample_bn")
            i += 2
        else:
            path.append(m)
            i += 1
    if leaf == "running_mean":
        return "batch_stats", (*path, "mean")
    if leaf == "running_var":
        return "batch_stats", (*path, "var")
    if leaf == "weight":
        return "params", (*path, "weight")  # kernel or scale: decided by the template
    if leaf == "bias":
        return "params", (*path, "bias")
    raise ValueError(f"cannot map tensor {key!r}")


def _flatten(tree, prefix=()) -> dict[tuple[str, ...], object]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat: Mapping[tuple[str, ...], object]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def _flax_to_torch_name(collection: str, path: tuple[str, ...]) -> str:
    """Inverse of ``torch_key_to_flax`` (for error messages)."""
    mods = []
    for m in path[:-1]:
        mt = re.fullmatch(r"(layer\d+)_(\d+)", m)
        if mt:
            mods += [mt.group(1), mt.group(2)]
        elif m == "downsample_conv":
            mods += ["downsample", "0"]
        elif m == "downsample_bn":
            mods += ["downsample", "1"]
        else:
            mods.append(m)
    leaf = {
        "kernel": "weight",
        "scale": "weight",
        "bias": "bias",
        "mean": "running_mean",
        "var": "running_var",
    }[path[-1]]
    return ".".join(mods + [leaf])


# ----------------------------------------------------------------------------- conversion


def extend_input_channels(weight: np.ndarray, in_channels: int) -> np.ndarray:
    """OIHW conv weight with more input channels: channels beyond the file's are
    copies of its last input channel (the authors' initialisation)."""
    have = weight.shape[1]
    if in_channels < have:
        raise ValueError(
            f"conv1 has {have} input channels in the file but the model takes "
            f"{in_channels}; dropping channels is not supported"
        )
    extra = np.repeat(weight[:, -1:], in_channels - have, axis=1)
    return np.concatenate([weight, extra], axis=1)


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    template,
    ignore_prefixes: Iterable[str] = (),
    extend_keys: Iterable[str] = (STEM_CONV,),
) -> dict:
    """Fill a Flax variables tree ``{'params': ..., 'batch_stats': ...}`` (arrays or
    ShapeDtypeStructs, used for names, shapes and dtypes) from a torch state dict.

    Every template leaf must be found and every state-dict tensor (except
    ``ignore_prefixes`` and ``num_batches_tracked``) must be used. Conv weights
    (4-D) are transposed OIHW -> HWIO. Tensors named in ``extend_keys`` may have
    fewer input channels than the model: see ``extend_input_channels``.
    """
    ignore_prefixes = tuple(ignore_prefixes)
    extend_keys = set(extend_keys)
    flat_t = {}
    for coll in ("params", "batch_stats"):
        for path, leaf in _flatten(template.get(coll, {})).items():
            flat_t[(coll,) + path] = leaf

    out: dict[tuple[str, ...], np.ndarray] = {}
    unexpected, mismatched = [], []
    for key, value in state_dict.items():
        if key.endswith(IGNORED_SUFFIXES) or key.startswith(ignore_prefixes):
            continue
        value = np.asarray(value)
        try:
            coll, path = torch_key_to_flax(key)
        except ValueError:
            unexpected.append(key)
            continue
        if path[-1] == "weight":
            path = path[:-1] + ("kernel" if value.ndim == 4 else "scale",)
        full = (coll,) + path
        if full not in flat_t:
            unexpected.append(key)
            continue
        target = flat_t[full]
        if value.ndim == 4:
            if key in extend_keys and value.shape[1] < target.shape[2]:
                value = extend_input_channels(value, target.shape[2])
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if tuple(value.shape) != tuple(target.shape):
            mismatched.append(
                f"{key}: file {tuple(value.shape)} (as Flax) vs model "
                f"{tuple(target.shape)} ({'/'.join(full)})"
            )
            continue
        out[full] = value.astype(target.dtype)
    missing = sorted(_flax_to_torch_name(p[0], p[1:]) for p in flat_t if p not in out)
    # leaves that were mismatched are reported as such, not as missing
    mismatched_names = {m.split(":")[0] for m in mismatched}
    missing = [m for m in missing if m not in mismatched_names]
    errors = []
    if missing:
        errors.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        errors.append(f"unexpected keys ({len(unexpected)}): {', '.join(sorted(unexpected))}")
    if mismatched:
        errors.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
    if errors:
        raise ValueError("cannot load the state dict: " + " | ".join(errors))
    return _unflatten(out)


def import_torchvision_resnet(source, variables, subtree: str = "backbone") -> dict:
    """Replace the backbone of ``variables`` by torchvision ImageNet weights.

    ``source`` is a file path or a state dict. ``variables`` is a model's
    variables (``{'params': {'backbone': ..., ...}, 'batch_stats': ...}``) or a
    bare ResNet's (then ``subtree=None``). ``fc.*`` is ignored. Returns a new
    variables dict; the rest of the tree is unchanged.
    """
    sd = load_state_dict(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if subtree is None:
        template = variables
    else:
        template = {c: variables[c][subtree] for c in ("params", "batch_stats") if c in variables}
    new = convert_state_dict(sd, template, ignore_prefixes=BACKBONE_IGNORED_PREFIXES)
    if subtree is None:
        return {**variables, **new}
    out = dict(variables)
    for c, tree in new.items():
        out[c] = {**variables[c], subtree: tree}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Convert a torch state dict (.pth) to .npz "
        "(same names), so that no torch is needed to load it."
    )
    p.add_argument("src")
    p.add_argument("dst")
    a = p.parse_args(argv)
    sd = load_state_dict(a.src)
    np.savez(a.dst, **sd)
    print(f"wrote {len(sd)} tensors to {a.dst}")


if __name__ == "__main__":
    main()
