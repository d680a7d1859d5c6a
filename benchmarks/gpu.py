"""Training throughput, inference latency, memory and FLOP utilisation on one device.

Run on a GPU at the paper's setting (ResNet-101, output stride 8, batch 10, T = 5):

    python benchmarks/gpu.py                       # 256 and 512 px, float32 and bfloat16
    python benchmarks/gpu.py --sizes 256 --dtypes bfloat16 --steps 20
    python benchmarks/gpu.py --sizes 256 --dtypes bfloat16 --impls fast,reference

The same script runs on a CPU with a tiny model (what the tests do):

    python benchmarks/gpu.py --depth 18 --width 8 --sizes 32 --batch 2 --steps 2

Figures per row (size x dtype x model implementation):
  * step s, img/s: median time of the full training step (guidance channel from the
    clicks, forward, T = 5 evolution, losses, backward, SGD-momentum update with 10x
    heads), state donated;
  * infer ms/obj: latency of ONE object (batch 1): guidance channel, network in eval
    mode + evolution (`inference.predict_crops`);
  * infer obj/s: objects per second when the batch of `--batch` objects is segmented
    in one call (what `predict.py` does with several objects of an image);
  * mem GB: XLA's memory plan of the compiled step (arguments + outputs + temporaries
    - donated aliases), i.e. the step's own peak, independent of earlier rows;
  * TFLOP/step: XLA's FLOP count of the compiled step (cost analysis);
  * MFU: that count / step time / the device's dense peak. float32 rows are measured
    against the TF32 tensor-core peak, because XLA's default matmul precision on
    NVIDIA GPUs since Ampere uses TF32 for float32 convolutions and dots (pass
    `--precision highest` for true float32, then the FP32 peak applies);
  * compile s: lowering + compilation of the training step.

`--impls`: the model formulations (`dlset_jax.models.resnet.Formulation`) to compare: `fast`
(the defaults, tuned for XLA:CPU) and `reference` (plain nn.Conv, no fusion barriers,
heads one by one). They compute the same function with the same parameters.
"""

import argparse
import functools
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import common  # noqa: E402  (benchmarks/common.py)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from dlset_jax import config as config_lib  # noqa: E402
from dlset_jax import inference, models, train_lib  # noqa: E402
from dlset_jax.models import resnet  # noqa: E402

# Dense peak TFLOP/s (without sparsity) by device-kind substring: (fp32, tf32, bf16).
# Vendors' datasheets, SXM parts where there are several.
PEAK_TFLOPS = {
    "H200": (67.0, 494.7, 989.4),
    "H100": (67.0, 494.7, 989.4),
    "A100": (19.5, 156.0, 312.0),
    "L4": (30.3, 60.0, 121.0),
    "V100": (15.7, 15.7, 125.0),
    "RTX 4090": (82.6, 82.6, 165.2),
}


def peak_tflops(device, dtype: str, precision: str, override: float | None):
    """Peak TFLOP/s the step's math can reach on `device` (None when unknown)."""
    if override:
        return override
    kind = getattr(device, "device_kind", "")
    for name, (fp32, tf32, bf16) in PEAK_TFLOPS.items():
        if name in kind:
            if dtype == "bfloat16":
                return bf16
            return fp32 if precision == "highest" else tf32
    return None


def timed(fn, steps):
    """Median wall time (s) of `steps` calls after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def planned_memory_gb(compiled) -> float:
    """XLA's memory plan of a compiled computation (GiB), NaN where not reported."""
    try:
        m = compiled.memory_analysis()
        total = (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            + m.temp_size_in_bytes
            - m.alias_size_in_bytes
        )
        return total / 2**30
    except Exception:  # noqa: BLE001 - not every backend / version reports it
        return float("nan")


def flop_count(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def bench(args, size, dtype, impl):
    config = config_lib.base_config()
    config.model.depth, config.model.width = args.depth, args.width
    config.model.compute_dtype = dtype
    config.data.resolution = size
    config.train.batch_size = args.batch
    config.optim.name = "sgd"
    config_lib.validate(config)
    formulation = resnet.FAST if impl == "fast" else resnet.REFERENCE
    model = models.create_model(config.model, formulation)
    schedule = train_lib.learning_rate_schedule(
        config.optim, steps_per_epoch=100, total_steps=100 * config.train.num_epochs
    )
    abstract = jax.eval_shape(lambda: model.init_variables(jax.random.key(0), size))
    tx = train_lib.make_optimizer(config, abstract["params"], schedule)
    state = train_lib.create_train_state(config, model, tx, 0)
    batch = jax.device_put(common.fake_batch(args.batch, size))
    step = jax.jit(
        functools.partial(
            train_lib.train_step,
            model=model,
            tx=tx,
            config=config,
            warmup_steps=0,
            schedule=schedule,
        ),
        donate_argnums=(0,),
    )
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    t_compile = time.perf_counter() - t0
    predict = jax.jit(functools.partial(inference.predict_crops, model=model, config=config))
    one = {k: v[:1] for k, v in batch.items()}
    variables = state.variables()
    t_infer = timed(lambda: predict(variables, one["image"], one["points"])["phi_t"], args.steps)
    t_infer_batch = timed(
        lambda: predict(variables, batch["image"], batch["points"])["phi_t"], args.steps
    )
    flops = flop_count(compiled)
    holder = {"state": state}

    def train_once():
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics["loss"]

    t_step = timed(train_once, args.steps)
    loss = float(train_once())
    if not np.isfinite(loss):
        raise FloatingPointError(f"training loss is {loss}")
    peak = peak_tflops(jax.devices()[0], dtype, args.precision, args.peak_tflops)
    return {
        "size": size,
        "dtype": dtype,
        "impl": impl,
        "step_s": t_step,
        "images_per_s": args.batch / t_step,
        "infer_ms": t_infer * 1e3,
        "infer_objects_per_s": args.batch / t_infer_batch,
        "mem_gb": planned_memory_gb(compiled),
        "tflop_per_step": flops / 1e12,
        "achieved_tflops": flops / t_step / 1e12,
        "mfu": flops / t_step / (peak * 1e12) if peak else float("nan"),
        "peak_tflops": peak,
        "compile_s": t_compile,
        "loss": loss,
    }


HEADER = (
    f"{'size':>5} {'dtype':>9} {'impl':>9} {'step s':>8} {'img/s':>8} "
    f"{'infer ms/obj':>13} {'infer obj/s':>12} {'mem GB':>7} {'TFLOP/step':>11} "
    f"{'TFLOP/s':>8} {'MFU':>6} {'compile s':>10}"
)


def format_row(r):
    return (
        f"{r['size']:>5} {r['dtype']:>9} {r['impl']:>9} {r['step_s']:8.4f} "
        f"{r['images_per_s']:8.2f} {r['infer_ms']:13.2f} {r['infer_objects_per_s']:12.1f} "
        f"{r['mem_gb']:7.2f} {r['tflop_per_step']:11.4f} {r['achieved_tflops']:8.3f} "
        f"{r['mfu']:6.1%} {r['compile_s']:10.1f}"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=101)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--impls", default="fast", help="comma separated: fast, reference")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument(
        "--precision",
        choices=("default", "highest"),
        default="default",
        help="jax_default_matmul_precision for float32 rows",
    )
    p.add_argument("--peak_tflops", type=float, default=None)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    for impl in args.impls.split(","):
        if impl not in ("fast", "reference"):
            p.error(f"--impls: unknown implementation {impl!r} (fast, reference)")
    if args.precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")
    device = jax.devices()[0]
    print(
        f"device: {getattr(device, 'device_kind', device.platform)} "
        f"({jax.device_count()} visible, using 1), jax {jax.__version__}; "
        f"ResNet-{args.depth} width {args.width}, batch {args.batch}, T=5, "
        f"matmul precision {args.precision}",
        flush=True,
    )
    print(HEADER, flush=True)
    rows, failed = [], []
    for size in (int(s) for s in args.sizes.split(",")):
        for dtype in args.dtypes.split(","):
            for impl in args.impls.split(","):
                try:
                    row = bench(args, size, dtype, impl)
                except Exception:  # noqa: BLE001 - report and go on with the other rows
                    failed.append((size, dtype, impl))
                    print(
                        f"{size:>5} {dtype:>9} {impl:>9} FAILED:\n{traceback.format_exc()}",
                        flush=True,
                    )
                    continue
                rows.append(row)
                print(format_row(row), flush=True)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(
                {
                    "device": getattr(device, "device_kind", device.platform),
                    "jax": jax.__version__,
                    "args": vars(args),
                    "rows": rows,
                },
                f,
                indent=1,
            )
        os.replace(args.json + ".tmp", args.json)
    if failed:
        sys.exit(f"{len(failed)} row(s) failed: {failed}")
    return rows


if __name__ == "__main__":
    main()
