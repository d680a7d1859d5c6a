"""Trains and evaluates the four ablation variants and prints the paper's Table 1.

    python scripts/ablation.py --workdir runs/ablation [--epochs 15] [--data synthetic_prostate]

Each variant (configs/ablation.py: baseline, cm, bd, cm_bd) trains in its own
`<workdir>/<variant>` (rerunning resumes), is evaluated on the test split, and the
rows are written to `<workdir>/table1.md`.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--data", default=None, help="data.name override")
    parser.add_argument("--variants", default="baseline,cm,bd,cm_bd")
    args = parser.parse_args()

    import ablation  # configs/ablation.py

    from dlset_jax import train_lib
    from dlset_jax.files import atomic_write_text

    rows = []
    for variant in args.variants.split(","):
        config = ablation.get_config(variant)
        if args.epochs:
            config.train.num_epochs = args.epochs
        if args.steps:
            config.train.num_steps = args.steps
        if args.data:
            config.data.name = args.data
        print(f"=== {variant}", flush=True)
        result = train_lib.train_and_evaluate(config, os.path.join(args.workdir, variant))
        overall = result["summary"]["overall"]
        rows.append((variant, overall))

    def cell(o, key, scale=1.0):
        return f"{o[key]['mean'] * scale:.1f} ± {o[key]['std'] * scale:.1f}"

    lines = [
        "| Model | DSC (%) | RVD (%) | HD (mm) | ABD (mm) | 4-point polygon DSC (%) |",
        "|---|:---:|:---:|:---:|:---:|:---:|",
    ]
    names = {"baseline": "Baseline (DELSE)", "cm": "+CM", "bd": "+BD", "cm_bd": "+CM+BD"}
    for variant, o in rows:
        lines.append(
            f"| {names[variant]} | {cell(o, 'dsc', 100)} | {cell(o, 'rvd')} | "
            f"{cell(o, 'hd')} | {cell(o, 'abd')} | {cell(o, 'baseline_dsc', 100)} |"
        )
    table = "\n".join(lines)
    print(table)
    atomic_write_text(os.path.join(args.workdir, "table1.md"), table + "\n")
    atomic_write_text(
        os.path.join(args.workdir, "table1.json"),
        json.dumps({v: o for v, o in rows}, indent=1, default=float),
    )


if __name__ == "__main__":
    main()
