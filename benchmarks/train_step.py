"""Full training step of the whole deep level set model, JAX vs PyTorch, plus inference.

A training step is what ``train.py`` runs: forward of the whole network (ResNet skip
fusion + four PSP heads, train mode, frozen backbone BatchNorm), T=5 level set
evolution from the predicted ``phi0`` + a random shift, level-set BCE (eq. 6) +
boundary loss (eq. 8) (+ the warm-up terms, weighted 0), backward, gradient clipping,
weight decay and the SGD-momentum update with 10x head learning rate. JAX runs
``dlset_jax.train_lib.train_step`` (jit, state donated); PyTorch runs the same
architecture in plain torch.nn (``dlset_jax.models.torch_reference``), the
authors' evolution transcribed in PyTorch (``benchmarks/levelset.py``) and the same
losses written here.

Each variant (framework x implementation x depth x size) runs in its own process,
which reports the median of ``--repeats`` steps after compilation / warm-up and its
peak RSS (``ru_maxrss``, includes compilation). ``--rounds`` repeats the whole set,
variants interleaved, and reports the median over rounds (a machine whose load
changes over time then slows variants alike). Ratios are JAX / PyTorch.

Both frameworks see the same input: the fake batch's image and the guidance channel of
its click points (``benchmarks/common.py``), which JAX builds on the device inside the
step (``inference.model_inputs``, as in training) and PyTorch gets precomputed by the
same function (``dlset_jax.guidance.guidance_channel``, once per variant).

Inference (``--infer``): latency for ONE object, as a user waits after the fourth
click: network (eval) + evolution (jit) on a (1, S, S) crop, then
``inference.paste_back`` of the level set into a 512x512 image.

  python benchmarks/train_step.py                                   # 18/50/101, 128 and 256
  python benchmarks/train_step.py --depths 101 --sizes 128 --repeats 3
  python benchmarks/train_step.py --impls fast,reference --frameworks jax   # before/after
  python benchmarks/train_step.py --depths 18 --sizes 32 --width 8 --repeats 1   # smoke

``--impls``: JAX model implementations to compare (same network and parameters):
``fast`` (``dlset_jax.models.resnet.FAST``), ``reference`` (``REFERENCE``, all off:
plain nn.Conv, no fusion barriers, heads evaluated one by one), or ``+`` joined
``field=0/1`` settings of ``resnet.Formulation`` (the rest as in ``fast``), e.g.
``matmul_1x1=1+block_barrier=0+fused_heads=0``.

Set ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` before starting Python (the Makefile
does). On a machine shared with other jobs, prefer ``taskset -c 0 ... --threads 1``
(see benchmarks/model.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import common  # noqa: E402  (benchmarks/common.py)

from dlset_jax import hostmem  # noqa: E402  (no JAX import: safe in PyTorch children)


def parse_impl(spec: str) -> dict:
    """`resnet.Formulation` fields of an --impls entry, as a dict (sent to children)."""
    import dataclasses

    from dlset_jax.models import resnet

    names = [f.name for f in dataclasses.fields(resnet.Formulation)]
    if spec == "fast":
        return {}
    if spec == "reference":
        return dataclasses.asdict(resnet.REFERENCE)
    flags = {}
    for item in spec.split("+"):
        k, _, v = item.partition("=")
        if k not in names or v not in ("0", "1"):
            raise SystemExit(f"bad --impls entry {item!r}: fields {sorted(names)}, values 0/1")
        flags[k] = v == "1"
    return flags


def make_config(a, depth: int, size: int):
    """The benchmark's config. Not validated: the authors' frozen backbone BatchNorm
    without pretrained weights is refused for training, but it is the network to time."""
    from dlset_jax.config import base_config

    c = base_config()
    c.model.depth = depth
    c.model.width = a.width
    c.model.output_stride = a.output_stride
    c.model.frozen_backbone_bn = True  # the authors' setting
    c.model.fusion_channels = a.head_channels
    c.model.psp_channels = a.head_channels
    c.data.resolution = size
    c.train.batch_size = a.batch
    return c


# ----------------------------------------------------------------------------- JAX


def setup_jax(a, depth: int, size: int, impl: dict) -> dict:
    import functools

    import jax
    import numpy as np

    from dlset_jax import inference, train_lib
    from dlset_jax.models import create_model, resnet

    c = make_config(a, depth, size)
    model = create_model(c.model, resnet.Formulation(**impl))
    schedule = train_lib.learning_rate_schedule(
        c.optim, steps_per_epoch=100, total_steps=100 * c.train.num_epochs
    )
    shapes = jax.eval_shape(lambda: model.init_variables(jax.random.key(0), size))
    tx = train_lib.make_optimizer(c, shapes["params"], schedule)
    variables = jax.jit(model.init_variables, static_argnums=(1,))(
        jax.random.key(0, impl="unsafe_rbg"), size
    )
    state = train_lib.TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
        rng=jax.random.key_data(jax.random.key(1)),
    )
    batch = jax.device_put(common.fake_batch(a.batch, size))
    hostmem.release_freed_memory()  # as train.py: the init compilation's scratch memory
    step_fn = jax.jit(
        functools.partial(
            train_lib.train_step, model=model, tx=tx, config=c, warmup_steps=0, schedule=schedule
        ),
        donate_argnums=(0,),
    )
    holder = [state]

    def step():
        holder[0], metrics = step_fn(holder[0], batch)
        jax.block_until_ready(metrics["loss"])
        return float(metrics["loss"])

    fns = {"step": step}
    if a.infer:
        predict = jax.jit(functools.partial(inference.predict_crops, model=model, config=c))
        one = common.fake_batch(1, size, seed=1)
        image_shape, box = (512, 512), (80, 100, 400, 440)

        def infer():
            v = holder[0].variables()
            out = predict(v, one["image"], one["points"])
            phi = np.asarray(out["phi_t"][0, ..., 0])
            return inference.paste_back(phi, box, image_shape)

        fns["infer"] = infer
    return fns


# ----------------------------------------------------------------------------- PyTorch


def _torch_evolution():
    spec = importlib.util.spec_from_file_location(
        "_bench_levelset", os.path.join(REPO, "benchmarks", "levelset.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import torch

    return mod.torch_evolution(torch)


def torch_losses(torch, out, phi_t, t, c):
    """The losses of ``train_lib.compute_losses`` (eq. 6, eq. 8 'mean', warm-up terms x0)."""
    import numpy as np

    F = torch.nn.functional
    mask = t["mask"]
    # level set BCE: 100 * class-balanced BCE of H(phi_T), H = 0.5 (1 + 2/pi atan(-phi))
    prob = (0.5 * (1 + 2 / np.pi * torch.atan(phi_t / c.levelset.epsilon))).clamp(1e-7, 1 - 1e-7)
    n_pos = mask.sum()
    n_neg = (1 - mask).sum()
    nll = -(mask * torch.log(prob) + (1 - mask) * torch.log(1 - prob))
    ls = (
        100
        * (
            n_neg / mask.numel() * (mask * nll).sum()
            + n_pos / mask.numel() * ((1 - mask) * nll).sum()
        )
        / mask.numel()
    )
    # boundary loss, eq. 8, per-pixel mean, weighted
    labels = torch.cat([mask, 1 - mask], 1)
    h = 0.5 * (1 + torch.tanh(40 * (F.softmax(out["logits"], 1) - 0.5)))
    t_in = (h * labels).sum((2, 3), keepdim=True) / (h.sum((2, 3), keepdim=True) + 1e-5)
    t_out = ((1 - h) * labels).sum((2, 3), keepdim=True) / (
        (1 - h).sum((2, 3), keepdim=True) + 1e-5
    )
    energy = ((labels - t_in) ** 2 * h + (labels - t_out) ** 2 * (1 - h)).sum((2, 3))
    boundary = c.loss.boundary_weight * (energy / (mask.shape[2] * mask.shape[3])).mean()
    # warm-up terms (weight 0 after warm-up, computed as in JAX)
    sdt = ((t["sdt"] - out["phi0"]) ** 2).mean()
    mo = F.normalize(out["motion"], dim=1, eps=1e-12)
    cos = (mo * t["direction"]).sum(1)
    motion = (torch.arccos(cos * (1 - 1e-4)) ** 2).mean()
    return ls + boundary + 0.0 * sdt + 0.0 * motion


def setup_torch(a, depth: int, size: int, impl: dict) -> dict:
    import numpy as np
    import torch

    from dlset_jax import inference
    from dlset_jax.models.torch_reference import TorchDeepLevelSet

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    c = make_config(a, depth, size)
    net = TorchDeepLevelSet(**common.torch_model_kwargs(c.model))
    evolve = _torch_evolution()
    nchw = lambda v: torch.from_numpy(np.ascontiguousarray(np.moveaxis(v, -1, 1)))
    batch = common.fake_batch(a.batch, size)
    one = common.fake_batch(1, size, seed=1)
    # The guidance channel of the clicks, as the JAX step builds it on the device.
    points = np.concatenate([batch["points"], one["points"]] if a.infer else [batch["points"]])
    guid = common.guidance_input(points, size, c.data)
    t = {k: nchw(batch[k]) for k in ("image", "mask", "sdt", "direction")}
    x = torch.cat([t["image"], nchw(guid[: a.batch]) / 255.0], 1)
    o = c.optim
    backbone = [p for p in net.backbone.parameters() if p.requires_grad]
    heads = [p for n, p in net.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.SGD(
        [
            {"params": backbone, "lr": o.learning_rate},
            {"params": heads, "lr": o.learning_rate * o.head_lr_multiplier},
        ],
        lr=o.learning_rate,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
    )
    params = backbone + heads

    def step():
        net.train()
        opt.zero_grad(set_to_none=True)
        out = net(x)
        shift = (torch.rand(a.batch, 1, 1, 1) * 2 - 1) * c.levelset.init_shift
        phi_t = evolve(out["phi0"] + shift, out["motion"], out["g"], c.levelset.steps)
        loss = torch_losses(torch, out, phi_t, t, c)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, o.clip_norm)
        opt.step()
        return float(loss)

    fns = {"step": step}
    if a.infer:
        x1 = torch.cat([nchw(one["image"]), nchw(guid[a.batch :]) / 255.0], 1)

        def infer():
            net.eval()
            with torch.no_grad():
                out = net(x1)
                phi = evolve(out["phi0"], out["motion"], out["g"], c.levelset.steps)
            return inference.paste_back(phi[0, 0].numpy(), (80, 100, 400, 440), (512, 512))

        fns["infer"] = infer
    return fns


SETUP = {"jax": setup_jax, "torch": setup_torch}


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux; False elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def bench_single(a, fw: str, impl_spec: str, depth: int, size: int) -> dict:
    """Set up, warm up and time one variant in this process."""
    impl = parse_impl(impl_spec) if fw == "jax" else {}
    t0 = time.perf_counter()
    fns = SETUP[fw](a, depth, size, impl)
    res = {}
    for kind, fn in fns.items():
        t = time.perf_counter()
        loss = fn()
        res[f"first_{kind}_s"] = time.perf_counter() - t  # compilation included (JAX)
        for _ in range(a.warmup):
            fn()
        if fw == "jax":  # as train.py does after compiling its step
            hostmem.release_freed_memory()
        times = []
        if kind == "step":  # before the reset: ru_maxrss follows the reset peak mark
            res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        reset = kind == "step" and _reset_peak_rss()
        for _ in range(a.repeats):
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
        if reset:  # peak while stepping, compilation excluded
            res["step_rss_mb"] = _peak_rss_mb()
        res[f"{kind}_ms"] = statistics.median(times)
        res[f"{kind}_all_ms"] = [round(v, 1) for v in times]
        if kind == "step":
            res["loss"] = loss
    res["setup_s"] = time.perf_counter() - t0
    if res.get("step_rss_mb") is None:
        res["step_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def bench_interleaved(a, impl_spec: str, depth: int, size: int) -> dict:
    """JAX and PyTorch in one process, their timed steps alternating (on a machine
    whose load changes, both see the same load: the fairer ratio). No per-framework
    RSS here."""
    fns = {
        "jax": setup_jax(a, depth, size, parse_impl(impl_spec)),
        "torch": setup_torch(a, depth, size, {}),
    }
    times = {fw: [] for fw in fns}
    for f in fns.values():
        for _ in range(1 + a.warmup):
            f["step"]()
    for _ in range(a.repeats):
        for fw, f in fns.items():
            t = time.perf_counter()
            f["step"]()
            times[fw].append(1e3 * (time.perf_counter() - t))
    return {
        fw: {"step_ms": statistics.median(ts), "step_all_ms": [round(v) for v in ts]}
        for fw, ts in times.items()
    }


def run_variant(a, fw: str, impl_spec: str, depth: int, size: int) -> dict:
    return common.run_single(
        os.path.abspath(__file__), f"{fw}:{impl_spec}:{depth}:{size}", a.passthrough
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_model_arguments(p)
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat every variant this many times, interleaved; median over rounds",
    )
    p.add_argument("--head_channels", type=int, default=128, help="fusion and PSP channels")
    p.add_argument("--impls", default="fast", help="JAX implementations, comma separated")
    p.add_argument(
        "--infer",
        action="store_true",
        help="also time inference of one object (forward + evolution + paste back)",
    )
    a = common.parse(p, argv)

    if a._single:
        fw, impl, depth, size = a._single.split(":")
        if fw == "jax+torch":
            print(json.dumps(bench_interleaved(a, impl, int(depth), int(size))))
        else:
            print(json.dumps(bench_single(a, fw, impl, int(depth), int(size))))
        return

    frameworks = common.torch_available(a.frameworks.split(","))
    impls = a.impls.split(",")
    for spec in impls:
        parse_impl(spec)
    import jax

    print(
        f"jax {jax.__version__} ({jax.default_backend()}), batch {a.batch}, width {a.width}, "
        f"heads {a.head_channels} ch, output stride {a.output_stride}, T=5, median of "
        f"{a.repeats} x {a.rounds} round(s), torch threads {a.threads}, "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}, "
        f"cpus {len(os.sched_getaffinity(0))}",
        flush=True,
    )
    if a.interleave:
        if "torch" not in frameworks:
            raise SystemExit("--interleave needs PyTorch")
        for depth in (int(d) for d in a.depths.split(",")):
            for size in (int(s) for s in a.sizes.split(",")):
                r = run_variant(a, "jax+torch", impls[0], depth, size)
                if "error" in r:
                    print(f"{depth:>5} {size:>5} failed: {r['error']}", flush=True)
                    continue
                j, t = r["jax"], r["torch"]
                print(
                    f"{depth:>5} {size:>5} interleaved | JAX {impls[0]} {j['step_ms']:8.0f} ms "
                    f"{j['step_all_ms']} | PyTorch {t['step_ms']:8.0f} ms {t['step_all_ms']} | "
                    f"JAX / PyTorch {j['step_ms'] / t['step_ms']:.2f}",
                    flush=True,
                )
        return
    variants = [("jax", s) for s in impls] + [("torch", "-")] * ("torch" in frameworks)
    header = (
        f"{'depth':>5} {'size':>5} {'framework':<26} | {'step ms':>8} {'x torch':>7} "
        f"{'peak MB':>8} {'step MB':>8} {'compile':>8}" + (f" | {'infer ms':>8}" if a.infer else "")
    )
    for depth in (int(d) for d in a.depths.split(",")):
        for size in (int(s) for s in a.sizes.split(",")):
            rounds = {v: [] for v in variants}
            for _ in range(a.rounds):
                for fw, spec in variants:
                    rounds[(fw, spec)].append(run_variant(a, fw, spec, depth, size))
            print(header)
            print("-" * len(header), flush=True)
            med = {}
            for v, rs in rounds.items():
                ok = [r for r in rs if "error" not in r]
                if not ok:
                    med[v] = {"error": rs[0]["error"]}
                    continue
                med[v] = {
                    k: statistics.median(r[k] for r in ok)
                    for k in ok[0]
                    if isinstance(ok[0][k], (int, float))
                }
                med[v]["all"] = [r["step_all_ms"] for r in ok]
            t_step = med.get(("torch", "-"), {}).get("step_ms")
            for (fw, spec), r in med.items():
                name = "PyTorch" if fw == "torch" else f"JAX {spec}"
                if "error" in r:
                    print(f"{depth:>5} {size:>5} {name:<26} | failed: {r['error']}")
                    continue
                ratio = r["step_ms"] / t_step if t_step else None
                print(
                    f"{depth:>5} {size:>5} {name:<26} | {common.fmt(r['step_ms'])} "
                    f"{common.fmt(ratio, '{:7.2f}')} {common.fmt(r['peak_rss_mb'])} {common.fmt(r.get('step_rss_mb'))} "
                    f"{common.fmt(r['first_step_s'], '{:7.1f}s')}"
                    + (f" | {common.fmt(r.get('infer_ms'))}" if a.infer else ""),
                    flush=True,
                )
                if a.rounds > 1 or a.repeats > 1:
                    print(f"{'':>38}steps ms: {r['all']}", flush=True)
    print(
        "step: median ms per training step; x torch: JAX / PyTorch (<1: JAX faster); "
        "peak MB: peak RSS of the variant's process up to the timed steps (compilation "
        "included); step MB: peak RSS during the timed steps (Linux; elsewhere the "
        "process peak); "
        "compile: first step (JAX: compilation)"
        + ("; infer: one object, forward + evolution + paste back" if a.infer else "")
    )


if __name__ == "__main__":
    main()
