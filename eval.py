"""Evaluates a trained model of a workdir on a split and writes the reports.

    python eval.py --workdir workdirs/default [--split test] [--step 1500]
    python eval.py --workdir runs/x --config.data.data_dir=/data --config.eval.sweep_thresholds=true

The configuration is the one saved with the checkpoint: the saved config is the truth.
Only fields given explicitly as `--config.a.b=value` apply (`--config`, by default
configs/default.py, only carries those overrides: its own values are not used), and
fields that define the network's inputs or architecture (`data.guidance`, `data.sigma`,
`data.resolution`, `data.relax`, `model.*`, ...) cannot be overridden: one line on
stderr, exit status 2. The mask threshold is the run's (chosen on validation when the
run swept it); `--config.eval.sweep_thresholds=true` sweeps it again.
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dlset_jax.config import define_config_flag, flags_parser

FLAGS = flags.FLAGS
# Any get_config() file carries the overrides (its values are not used); this one is
# the default so that `--config.a.b=...` works without naming a file.
CARRIER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
define_config_flag(
    "eval.py", CARRIER, "A get_config() file that carries --config.* overrides (see above)."
)
flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.DEFINE_integer("step", -1, "Checkpoint step (-1: latest).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    from dlset_jax import config as config_lib
    from dlset_jax import evaluate

    logging.set_verbosity(logging.ERROR)  # one line per problem on stderr
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # one line per phase instead of per-example bars
    overrides = {}
    if FLAGS.config is not None:
        overrides = dict(config_flags.get_override_values(FLAGS["config"]))
    try:
        result = evaluate.evaluate_workdir(
            FLAGS.workdir,
            split=FLAGS.split,
            step=None if FLAGS.step < 0 else FLAGS.step,
            overrides=overrides,
        )
    except (config_lib.ConfigError, FileNotFoundError, ValueError) as e:
        print(f"eval.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(result["table"])
    print(json.dumps({k: round(v, 4) for k, v in result["scalars"].items()}))
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=flags_parser("eval.py"))
