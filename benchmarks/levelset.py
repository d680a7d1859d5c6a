"""Times the level set evolution (T steps) forward and forward+backward.

Compares the jit-compiled JAX `levelset.evolve` (a `lax.scan` of XLA operations) with
the same computation in plain numpy (float32, forward only: numpy has no autodiff) and,
where PyTorch is installed, with a PyTorch transcription of the authors' evolution (same
operations as their `levelset_evolution`, 2 threads), forward and with gradients. The
evolution's parameters are the config schema's (`inference.evolution_kwargs`: the
paper's timestep 5, Dirac ratio 0.3, dt_max 30), the same on every row.

    python benchmarks/levelset.py            # batch 10, 256x256, T=5
    python benchmarks/levelset.py --batch 2 --size 128 --repeats 3

Every row reports the fastest of `--repeats` runs after two warm-up runs: on the
shared 2-core machine other processes inflate single runs several-fold, most of all
PyTorch's 2 OpenMP threads, which spin while their partner is descheduled (CPU time of
one no_grad forward measured from 0.65 s to 4.3 s under load, 0.30 s with 1 thread,
the same as with gradients). Use `--stat median` for the median instead. `--json PATH`
also writes the rows (seconds, unrounded).
"""

import argparse
import functools
import json
import math
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dlset_jax import config as config_lib  # noqa: E402
from dlset_jax import inference  # noqa: E402
from dlset_jax import levelset as ls  # noqa: E402


def run_time(fn, repeats, stat="min"):
    fn()  # compile / warm up
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.min(times) if stat == "min" else np.median(times))


def numpy_evolve(phi, vy, vx, g, steps, *, timestep, ratio, dt_max):
    """float32 numpy evolution on (B, H, W) arrays (full Neumann corners)."""
    f32 = np.float32
    for _ in range(steps):
        phi = phi.copy()
        phi[:, [0, -1], :] = phi[:, [2, -3], :]
        phi[:, :, [0, -1]] = phi[:, :, [2, -3]]
        py, px = np.gradient(phi, axis=(1, 2))
        s = np.sqrt(px * px + py * py + f32(1e-10))
        kappa = np.gradient(px / s, axis=2) + np.gradient(py / s, axis=1)
        u = phi / f32(dt_max)
        delta = np.where(np.abs(u) < ratio, f32(0.5) * (1 + np.cos(f32(np.pi) * u / ratio)), f32(0))
        phi = phi + f32(timestep) * delta * (vx * px + vy * py + g * kappa)
        py, px = np.gradient(phi, axis=(1, 2))
        s = np.sqrt(px * px + py * py + f32(1e-10))
        ps = np.where(s <= 1, np.sin(f32(2 * np.pi) * s) / f32(2 * np.pi), s - 1)
        ps = np.where(np.abs(ps) <= 1e-10, f32(1), ps)
        dps = ps / np.where(s <= 1e-10, f32(1), s)
        lap = np.pad(
            phi[:, :-2, 1:-1]
            + phi[:, 2:, 1:-1]
            + phi[:, 1:-1, :-2]
            + phi[:, 1:-1, 2:]
            - 4 * phi[:, 1:-1, 1:-1],
            ((0, 0), (1, 1), (1, 1)),
            mode="edge",
        )
        reg = np.gradient((dps - 1) * px, axis=2) + np.gradient((dps - 1) * py, axis=1) + lap
        phi = phi + f32(0.2) * reg
    return phi


def torch_evolution(torch):
    """PyTorch transcription of the authors' evolution (their operations, NCHW)."""
    F = torch.nn.functional

    def gradient(x):
        gy = x.clone()
        gy[..., 1:-1, :] = (x[..., 2:, :] - x[..., :-2, :]) / 2
        gy[..., 0, :] = x[..., 1, :] - x[..., 0, :]
        gy[..., -1, :] = x[..., -1, :] - x[..., -2, :]
        gx = x.clone()
        gx[..., 1:-1] = (x[..., 2:] - x[..., :-2]) / 2
        gx[..., 0] = x[..., 1] - x[..., 0]
        gx[..., -1] = x[..., -1] - x[..., -2]
        return gy, gx

    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]

    def dist_reg(phi):
        py, px = gradient(phi)
        s = torch.sqrt(px**2 + py**2 + 1e-10)
        ps = torch.where(s <= 1, torch.sin(2 * np.pi * s) / (2 * np.pi), s - 1)
        ps = torch.where(ps.abs() <= 1e-10, torch.ones_like(ps), ps)
        dps = ps / torch.where(s <= 1e-10, torch.ones_like(s), s)
        lap = F.pad(F.conv2d(phi, kernel), (1, 1, 1, 1), mode="replicate")
        return gradient(dps * px - px)[1] + gradient(dps * py - py)[0] + lap

    def evolve(phi, vf, g, steps):
        vy, vx = vf[:, :1], vf[:, 1:]
        for _ in range(steps):
            phi = phi.clone()
            phi[..., [0, -1], :] = phi[..., [2, -3], :]
            phi[..., :, [0, -1]] = phi[..., :, [2, -3]]
            py, px = gradient(phi)
            s = torch.sqrt(px**2 + py**2 + 1e-10)
            kappa = gradient(px / s)[1] + gradient(py / s)[0]
            u = phi / 30
            delta = 0.5 * (1 + torch.cos(np.pi * u / 0.3))
            delta = torch.where(u.abs() < 0.3, delta, torch.zeros_like(delta))
            phi = phi + 5 * delta * (vx * px + vy * py + g * kappa.detach())
            phi = phi + 0.2 * dist_reg(phi.detach())
        return phi

    return evolve


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stat", choices=("min", "median"), default="min")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    b, n, t = args.batch, args.size, args.steps

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:n, :n]
    phi = np.clip(np.hypot(yy - n / 2, xx - n / 2) - n / 4, -30, 30)
    phi = np.broadcast_to(phi, (b, n, n)).astype(np.float32)
    motion = rng.normal(size=(b, n, n, 2)).astype(np.float32)
    g = rng.uniform(size=(b, n, n)).astype(np.float32)
    weights = rng.normal(size=(b, n, n, 1)).astype(np.float32)

    phi_j = jnp.asarray(phi[..., None])
    mot_j, g_j, w_j = jnp.asarray(motion), jnp.asarray(g[..., None]), jnp.asarray(weights)
    timed = functools.partial(run_time, repeats=args.repeats, stat=args.stat)
    config = config_lib.base_config()
    kw = {**inference.evolution_kwargs(config), "steps": t}
    epsilon = float(config.levelset.epsilon)
    rows = []
    jax_evolve = functools.partial(ls.evolve, **kw)
    fwd = jax.jit(jax_evolve)
    obj = lambda p, m, gg: jnp.sum(ls.heaviside(jax_evolve(p, m, gg), epsilon) * w_j)
    bwd = jax.jit(jax.grad(obj, argnums=(0, 1, 2)))
    rows.append(
        (
            "JAX (jit, XLA scan)",
            timed(lambda: fwd(phi_j, mot_j, g_j).block_until_ready()),
            timed(lambda: jax.block_until_ready(bwd(phi_j, mot_j, g_j))),
        )
    )
    jax_fwd, jax_bwd = rows[0][1:]
    np_kw = dict(timestep=kw["timestep"], ratio=kw["dirac_ratio"], dt_max=kw["dt_max"])
    np_fwd = timed(lambda: numpy_evolve(phi, motion[..., 0], motion[..., 1], g, t, **np_kw))
    rows.append(("numpy float32", np_fwd, float("nan")))

    try:
        import torch
    except ImportError:
        torch = None
        print("PyTorch not installed: the authors'-style PyTorch row is skipped.")
    if torch is not None:
        torch.set_num_threads(2)
        evolve = torch_evolution(torch)
        # Both rows read the same torch-allocated (64-byte aligned) inputs, as in the
        # authors' pipeline; numpy-backed tensors are only 16-byte aligned.
        p_t = torch.from_numpy(phi[:, None].copy()).clone()
        v_t = torch.from_numpy(np.moveaxis(motion, -1, 1).copy()).clone()
        g_t = torch.from_numpy(g[:, None].copy()).clone()
        w_t = torch.from_numpy(np.moveaxis(weights, -1, 1).copy()).clone()

        def torch_fwd():
            with torch.no_grad():
                evolve(p_t, v_t, g_t, t)

        def torch_bwd():
            leaves = [x.clone().requires_grad_(True) for x in (p_t, v_t, g_t)]
            out = evolve(*leaves, t)
            heav = 0.5 * (1 + 2 / np.pi * torch.atan(-out))
            (heav * w_t).sum().backward()

        rows.append(
            (f"PyTorch {torch.__version__} (2 threads)", timed(torch_fwd), timed(torch_bwd))
        )

    print(
        f"\nLevel set evolution, T={t}, batch {b}, {n}x{n}, float32, "
        f"{args.stat} of {args.repeats} (jax {jax.__version__}, {jax.devices()[0].platform})"
    )
    print(
        f"{'implementation':34s} {'forward ms':>11s} {'fwd+bwd ms':>11s} "
        f"{'fwd: x row 1':>16s} {'fwd+bwd: x row 1':>20s}"
    )
    out = []
    for name, f, fb in rows:
        ratio_fb = fb / jax_bwd if not math.isnan(fb) else float("nan")
        print(f"{name:34s} {f * 1e3:11.1f} {fb * 1e3:11.1f} {f / jax_fwd:15.1f}x {ratio_fb:19.1f}x")
        out.append(
            {
                "implementation": name,
                "forward_s": f,
                "fwd_bwd_s": None if math.isnan(fb) else fb,
                "forward_ratio": f / jax_fwd,
                "fwd_bwd_ratio": None if math.isnan(fb) else ratio_fb,
            }
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"batch": b, "size": n, "steps": t, "stat": args.stat, "rows": out}, fh, indent=1
            )


if __name__ == "__main__":
    main()
