"""Forward and training-step time of the whole DeepLevelSet network, JAX vs PyTorch.

A training step is forward (train mode) + a loss on all four outputs + backward
+ SGD (momentum 0.9) update; the forward is inference (eval mode). Times are
medians of ``--repeats`` runs after compilation / warm-up. By default each
variant (framework x depth x size) runs in its own process, as in
docs/performance.md. PyTorch runs the same architecture in plain torch.nn
(``dlset_jax.models.torch_reference``) with ``--threads`` threads.

  python benchmarks/model.py                                  # depths 18 50 101, 128 and 256 px
  python benchmarks/model.py --depths 18 --sizes 64 --repeats 2   # quick

Set ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` before starting Python (the
Makefile does) for the allocation savings described in docs/performance.md.

On a machine shared with other jobs, PyTorch with 2 OpenMP threads slows down
by 10-20x whenever a core is taken (its threads wait for each other), which
makes the ratio meaningless. Then pin everything to one core and interleave:

  taskset -c 0 python benchmarks/model.py --threads 1 --interleave

(Both then compute on one core; XLA also sizes its thread pools from the affinity mask.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import common  # noqa: E402  (benchmarks/common.py)


def model_config(a, depth: int):
    """The config schema's ``model`` fields for this variant (heads at their defaults).

    Not validated: frozen backbone BatchNorm without pretrained weights is refused for
    training, but it is the authors' network, the one timed here (unless ``--train_bn``).
    """
    from dlset_jax.config import base_config

    m = base_config().model
    m.depth = depth
    m.width = a.width
    m.output_stride = a.output_stride
    m.frozen_backbone_bn = not a.train_bn
    m.compute_dtype = "bfloat16" if a.bf16 else "float32"
    return m


def setup_jax(a, depth: int, size: int) -> dict:
    """Compiled forward and train step of the Flax model (callables)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from dlset_jax.models import create_model

    model = create_model(model_config(a, depth))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(a.batch, size, size, 4)), jnp.float32)
    targets = {
        "phi0": jnp.asarray(rng.normal(size=(a.batch, size, size, 1)), jnp.float32),
        "motion": jnp.asarray(rng.normal(size=(a.batch, size, size, 2)), jnp.float32),
        "g": jnp.asarray(rng.uniform(size=(a.batch, size, size, 1)), jnp.float32),
        "labels": jnp.asarray(rng.integers(0, 2, size=(a.batch, size, size)), jnp.int32),
    }
    variables = jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), x)
    tx = optax.sgd(1e-3, momentum=0.9)
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

    def loss_fn(params, batch_stats, x, t):
        out, upd = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        loss = (
            jnp.mean(jnp.square(out["phi0"] - t["phi0"]))
            + jnp.mean(jnp.square(out["motion"] - t["motion"]))
            + jnp.mean(jnp.square(out["g"] - t["g"]))
            + jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out["logits"], t["labels"]))
        )
        return loss, upd["batch_stats"]

    @jax.jit
    def train_step(state, x, t):
        params, batch_stats, opt_state = state
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, x, t
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    @jax.jit
    def forward(params, batch_stats, x):
        return model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)

    t0 = time.perf_counter()
    jax.block_until_ready(forward(state[0], state[1], x))
    compile_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, loss = train_step(state, x, targets)
    jax.block_until_ready(loss)
    compile_step = time.perf_counter() - t0
    holder = [state]

    def fwd():
        jax.block_until_ready(forward(holder[0][0], holder[0][1], x))

    def step():
        holder[0], loss = train_step(holder[0], x, targets)
        jax.block_until_ready(loss)

    return {"fwd": fwd, "step": step, "compile_s": compile_fwd + compile_step}


def setup_torch(a, depth: int, size: int) -> dict:
    """Forward and train step of the plain-PyTorch model (callables)."""
    import torch
    import torch.nn.functional as F

    from dlset_jax.models.torch_reference import TorchDeepLevelSet

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = TorchDeepLevelSet(**common.torch_model_kwargs(model_config(a, depth)))
    x = torch.randn(a.batch, 4, size, size)
    t = {
        "phi0": torch.randn(a.batch, 1, size, size),
        "motion": torch.randn(a.batch, 2, size, size),
        "g": torch.rand(a.batch, 1, size, size),
        "labels": torch.randint(0, 2, (a.batch, size, size)),
    }
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def forward():
        net.eval()
        with torch.no_grad():
            net(x)

    def step():
        net.train()
        opt.zero_grad(set_to_none=True)
        out = net(x)
        loss = (
            F.mse_loss(out["phi0"], t["phi0"])
            + F.mse_loss(out["motion"], t["motion"])
            + F.mse_loss(out["g"], t["g"])
            + F.cross_entropy(out["logits"], t["labels"])
        )
        loss.backward()
        opt.step()

    return {"fwd": forward, "step": step}


SETUP = {"jax": setup_jax, "torch": setup_torch}


def bench(a, frameworks, depth: int, size: int) -> dict:
    """Set up every framework, warm up, then time. With several frameworks the
    repeats alternate between them, so that a machine whose load changes over
    time slows them alike (the ratio stays meaningful)."""
    fns = {fw: SETUP[fw](a, depth, size) for fw in frameworks}
    res = {fw: {k: v for k, v in f.items() if not callable(v)} for fw, f in fns.items()}
    for kind in ("fwd", "step"):
        for f in fns.values():
            for _ in range(max(a.warmup, 1)):
                f[kind]()
        times = {fw: [] for fw in fns}
        for _ in range(a.repeats):
            for fw, f in fns.items():
                t = time.perf_counter()
                f[kind]()
                times[fw].append(1e3 * (time.perf_counter() - t))
        for fw in fns:
            res[fw][f"{kind}_ms"] = statistics.median(times[fw])
    return res


def run_variant(a, frameworks, depth: int, size: int) -> dict:
    """{framework: result}; a child process per framework, or one for all of
    them with --interleave, or none with --no_isolate."""
    if not a.isolate:
        return bench(a, frameworks, depth, size)
    groups = [frameworks] if a.interleave else [[fw] for fw in frameworks]
    out = {}
    for group in groups:
        res = common.run_single(
            os.path.abspath(__file__), f"{'+'.join(group)}:{depth}:{size}", a.passthrough
        )
        out.update({fw: res for fw in group} if "error" in res else res)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_model_arguments(p)
    p.add_argument("--train_bn", action="store_true", help="trainable backbone BatchNorm")
    p.add_argument("--bf16", action="store_true", help="JAX: bfloat16 compute")
    p.add_argument(
        "--no_isolate",
        dest="isolate",
        action="store_false",
        help="run every variant in this process",
    )
    a = common.parse(p, argv)

    if a._single:
        fws, depth, size = a._single.split(":")
        print(json.dumps(bench(a, fws.split("+"), int(depth), int(size))))
        return

    frameworks = common.torch_available(a.frameworks.split(","))
    import jax

    print(
        f"jax {jax.__version__} ({jax.default_backend()}), batch {a.batch}, width {a.width}, "
        f"output stride {a.output_stride}, frozen backbone BN {not a.train_bn}, "
        f"{'bf16' if a.bf16 else 'fp32'}, median of {a.repeats}, torch threads {a.threads}, "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}, "
        f"{'one process' if not a.isolate else 'interleaved, one process per size' if a.interleave else 'one process per variant'}",
        flush=True,
    )
    header = (
        f"{'depth':>5} {'size':>5} | {'jax fwd':>8} {'jax step':>8} {'compile':>8} | "
        f"{'pt fwd':>8} {'pt step':>8} | {'fwd x':>6} {'step x':>6}"
    )
    print(header)
    print("-" * len(header), flush=True)
    for depth in (int(d) for d in a.depths.split(",")):
        for size in (int(s) for s in a.sizes.split(",")):
            r = run_variant(a, frameworks, depth, size)
            j, t = r.get("jax", {}), r.get("torch", {})
            ratio = lambda k: (j[k] / t[k]) if k in j and k in t else None
            print(
                f"{depth:>5} {size:>5} | {common.fmt(j.get('fwd_ms'))} {common.fmt(j.get('step_ms'))} "
                f"{common.fmt(j.get('compile_s'), '{:7.1f}s')} | {common.fmt(t.get('fwd_ms'))} "
                f"{common.fmt(t.get('step_ms'))} | {common.fmt(ratio('fwd_ms'), '{:6.2f}')} "
                f"{common.fmt(ratio('step_ms'), '{:6.2f}')}",
                flush=True,
            )
            for fw, res in r.items():
                if "error" in res:
                    print(f"      {fw} failed: {res['error']}", flush=True)
    print("times in ms; ratios are JAX / PyTorch (>1: JAX slower)")


if __name__ == "__main__":
    main()
