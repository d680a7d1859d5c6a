"""Evaluates a trained model of a workdir on a split and writes the reports.

    python eval.py --workdir workdirs/default [--split test] [--step 1500]
                   [--config.eval.sweep_thresholds=true]

The configuration is the one saved with the checkpoint; `--config` overrides are
applied on top of it (e.g. a different data directory).
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Optional get_config() file whose fields override the checkpoint's config."
)
flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.DEFINE_integer("step", -1, "Checkpoint step (-1: latest).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    from dlset_jax import config as config_lib
    from dlset_jax import evaluate

    logging.set_verbosity(logging.WARNING)
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # one line per phase instead of per-example bars
    try:
        result = evaluate.evaluate_workdir(
            FLAGS.workdir,
            split=FLAGS.split,
            step=None if FLAGS.step < 0 else FLAGS.step,
            overrides=FLAGS.config,
        )
    except (config_lib.ConfigError, FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    print(result["table"])
    print(json.dumps({k: round(v, 4) for k, v in result["scalars"].items()}))


if __name__ == "__main__":
    app.run(main)
