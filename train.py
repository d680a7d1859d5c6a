r"""Trains a deep level set model, then evaluates it on the test split.

    python train.py --config configs/default.py --workdir workdirs/default \
        [--config.train.batch_size=16 ...]

Rerunning the same command on the same workdir resumes from the last checkpoint.
"""

from absl import app, flags, logging

from dlset_jax.config import define_config_flag, flags_parser

FLAGS = flags.FLAGS
define_config_flag(
    "train.py", "configs/default.py", "Path to a get_config() file.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    from dlset_jax import checkpoint, readers, train_lib
    from dlset_jax import config as config_lib
    from dlset_jax.data import pipeline

    logging.set_verbosity(logging.WARNING)
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # one line per phase instead of per-example bars
    try:
        config_lib.validate(FLAGS.config)
        train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (
        config_lib.ConfigError,
        pipeline.DataSetNameError,
        readers.DataError,  # the user's files, named with what is wrong
        checkpoint.CheckpointMismatchError,  # a workdir of another model
        FileNotFoundError,
    ) as e:
        raise app.UsageError(str(e)) from None


if __name__ == "__main__":
    app.run(main, flags_parser=flags_parser("train.py"))
