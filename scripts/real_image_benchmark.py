"""The real-image benchmark of a trained workdir: Colin27 T1 + AAL deep grey test slabs.

    python scripts/real_image_benchmark.py --workdir workdirs/default [--data_dir data/tfds]

Needs Debian's mricron-data (`apt-get install mricron-data`). Segments the 60 test
objects through `Segmenter` from exact and +-2 px jittered clicks and writes
`<workdir>/eval/real/{table.md,results.json,worst.png}` (see dlset_jax/real_benchmark.py).
"""

import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/).")
flags.DEFINE_string("data_dir", "data/tfds", "Where the colin27_aal data set is built.")
flags.DEFINE_string("out_dir", None, "Output directory (default: <workdir>/eval/real).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from dlset_jax import real_benchmark, segmenter

    if not real_benchmark.available():
        print("real_image_benchmark: mricron-data is not installed", file=sys.stderr)
        return 2
    seg = segmenter.Segmenter.from_workdir(FLAGS.workdir)
    objects = real_benchmark.test_objects(FLAGS.data_dir)
    result = real_benchmark.run(seg, objects)
    out = FLAGS.out_dir or os.path.join(FLAGS.workdir, "eval", "real")
    real_benchmark.write(result, out)
    real_benchmark.worst_cases_figure(seg, objects, result, os.path.join(out, "worst.png"))
    print(real_benchmark.table(result))
    print("\n".join(real_benchmark.verdict(result)))
    return 0


if __name__ == "__main__":
    app.run(main)
