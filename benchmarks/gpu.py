"""Training throughput, inference latency, memory and FLOP utilisation on one device.

Run on a GPU at the paper's setting (ResNet-101, output stride 8, batch 10, T = 5):

    python benchmarks/gpu.py                       # 256 and 512 px, float32 and bfloat16
    python benchmarks/gpu.py --sizes 256 --dtypes bfloat16 --steps 20

The same script runs on a CPU with a tiny model (what the tests do):

    python benchmarks/gpu.py --depth 18 --width 8 --sizes 32 --batch 2 --steps 2

Figures: images/s of the full training step (forward, evolution, losses, backward,
SGD update), per-object inference latency (forward + evolution, batch 1), peak device
memory, and model FLOP utilisation = XLA's FLOP count of the compiled step / time /
the device's peak (dense bf16 or fp32 tensor throughput from a small table; pass
--peak_tflops for other devices).
"""

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dlset_jax import config as config_lib  # noqa: E402
from dlset_jax import evaluate, models, train_lib  # noqa: E402

# Dense peak TFLOP/s (without sparsity) by device kind substring: (fp32, bf16).
PEAK_TFLOPS = {
    "H200": (67.0, 989.0), "H100": (67.0, 989.0), "A100": (19.5, 312.0),
    "L4": (30.3, 121.0), "V100": (15.7, 125.0), "RTX 4090": (82.6, 165.2),
}


def peak_tflops(device, dtype: str, override: float | None) -> float | None:
  if override:
    return override
  kind = getattr(device, "device_kind", "")
  for name, (fp32, bf16) in PEAK_TFLOPS.items():
    if name in kind:
      return bf16 if dtype == "bfloat16" else fp32
  return None


def synthetic_batch(rng, batch, size):
  yy, xx = np.mgrid[:size, :size]
  mask = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2)
  mask = np.broadcast_to(mask[None, ..., None], (batch, size, size, 1)).astype(np.float32)
  sdt = np.where(mask > 0, -5.0, 5.0).astype(np.float32)
  direction = rng.normal(size=(batch, size, size, 2)).astype(np.float32)
  return {"image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
          "guidance": rng.uniform(0, 255, size=(batch, size, size, 1)).astype(np.float32),
          "mask": mask, "sdt": sdt, "dt": np.abs(sdt), "direction": direction}


def timed(fn, steps):
  out = fn()
  jax.block_until_ready(out)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def peak_memory_gb(device):
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if not stats:
    return float("nan")
  return stats.get("peak_bytes_in_use", float("nan")) / 2**30


def bench(args, size, dtype):
  config = config_lib.base_config()
  config.model.depth, config.model.width = args.depth, args.width
  config.model.compute_dtype = dtype
  config.data.resolution = size
  config.train.batch_size = args.batch
  config.optim.name = "sgd"
  config_lib.validate(config)
  model = models.create_model(config.model)
  schedule = train_lib.learning_rate_schedule(config.optim, 100)
  abstract = jax.eval_shape(lambda: model.init_variables(jax.random.key(0), size))
  tx = train_lib.make_optimizer(config, abstract["params"], schedule)
  state = train_lib.create_train_state(config, model, tx, 0)
  batch = jax.device_put(synthetic_batch(np.random.default_rng(0), args.batch, size))
  step = jax.jit(functools.partial(train_lib.train_step, model=model, tx=tx,
                                   config=config, warmup_steps=0, schedule=schedule),
                 donate_argnums=(0,))
  compiled = step.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  holder = {"state": state}

  def train_once():
    holder["state"], metrics = compiled(holder["state"], batch)
    return metrics["loss"]

  t_step = timed(train_once, args.steps)
  variables = holder["state"].variables()
  predict = jax.jit(functools.partial(evaluate.predict_crops, model=model, config=config))
  one = {k: v[:1] for k, v in batch.items()}
  t_infer = timed(lambda: predict(variables, one["image"], one["guidance"])["phi_t"],
                  args.steps)
  device = jax.devices()[0]
  peak = peak_tflops(device, dtype, args.peak_tflops)
  mfu = flops / t_step / (peak * 1e12) if peak else float("nan")
  return {"size": size, "dtype": dtype, "step_s": t_step,
          "images_per_s": args.batch / t_step, "infer_ms": t_infer * 1e3,
          "peak_mem_gb": peak_memory_gb(device), "tflop_per_step": flops / 1e12,
          "achieved_tflops": flops / t_step / 1e12, "mfu": mfu}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--depth", type=int, default=101)
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--batch", type=int, default=10)
  p.add_argument("--sizes", default="256,512")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--peak_tflops", type=float, default=None)
  args = p.parse_args()
  device = jax.devices()[0]
  print(f"device: {getattr(device, 'device_kind', device.platform)} "
        f"({jax.device_count()} visible, using 1), jax {jax.__version__}; "
        f"ResNet-{args.depth} width {args.width}, batch {args.batch}, T=5")
  rows = [bench(args, int(s), d) for s in args.sizes.split(",")
          for d in args.dtypes.split(",")]
  print(f"{'size':>5} {'dtype':>9} {'step s':>8} {'img/s':>8} {'infer ms/obj':>13} "
        f"{'peak GB':>8} {'TFLOP/step':>11} {'TFLOP/s':>8} {'MFU':>6}")
  for r in rows:
    print(f"{r['size']:>5} {r['dtype']:>9} {r['step_s']:8.4f} {r['images_per_s']:8.2f} "
          f"{r['infer_ms']:13.2f} {r['peak_mem_gb']:8.2f} {r['tflop_per_step']:11.4f} "
          f"{r['achieved_tflops']:8.3f} {r['mfu']:6.1%}")
  return rows


if __name__ == "__main__":
  main()
