"""Starts the annotation tool: a local web page to segment a folder's images by clicking.

    python -m dlset_jax.app --workdir workdirs/default --images /path/to/folder

Prints the URL (http://127.0.0.1:8765/ by default) and serves until Ctrl-C. It binds to
127.0.0.1 unless `--host` says otherwise, and reads and writes only under `--images`
(`dlset_jax/app/folder.py` says what is saved where).
"""

import os
import socket
import sys

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/).")
flags.DEFINE_string("images", None, "Folder of images / volumes / DICOM files to annotate.")
flags.DEFINE_string(
    "host", "127.0.0.1", "Address to bind (another than localhost exposes the files)."
)
flags.DEFINE_integer("port", 8765, "Port (0: a free one).", lower_bound=0, upper_bound=65535)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_integer(
    "max_pixels", 100_000_000, "Largest image or volume read, in pixels.", lower_bound=1
)
flags.DEFINE_integer("max_upload_mb", 256, "Largest upload, in MiB.", lower_bound=1)
flags.DEFINE_enum(
    "nonfinite", "error", ["error", "min"], "NaN/inf intensities: refuse, or read as the lowest."
)
flags.mark_flags_as_required(["workdir", "images"])


def main(argv) -> int:
    del argv
    logging.set_verbosity(logging.ERROR)
    import uvicorn

    from dlset_jax import checkpoint
    from dlset_jax.app import folder, server

    try:
        images = folder.ImageFolder(
            FLAGS.images, max_pixels=FLAGS.max_pixels, nonfinite=FLAGS.nonfinite
        )
        print(f"loading {FLAGS.workdir} and compiling its model ...", flush=True)
        seg = server.load_segmenter(FLAGS.workdir, FLAGS.step)
    except (folder.FolderError, checkpoint.CheckpointMismatchError, FileNotFoundError) as e:
        print(f"python -m dlset_jax.app: {e}", file=sys.stderr)
        return 1
    # bound to this machine alone: only its own names (a rebound domain name is not);
    # exposed with --host: any name the network gives it
    local = FLAGS.host in server.LOCAL_HOSTS
    api = server.create_app(
        seg,
        images,
        max_upload_bytes=FLAGS.max_upload_mb << 20,
        hosts=server.LOCAL_HOSTS if local else None,
    )
    sock = socket.socket(socket.AF_INET6 if ":" in FLAGS.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((FLAGS.host, FLAGS.port))
    except OSError as e:
        print(
            f"python -m dlset_jax.app: cannot bind {FLAGS.host}:{FLAGS.port} ({e})", file=sys.stderr
        )
        return 1
    sock.listen()  # the URL printed below answers at once (queued until uvicorn runs)
    port = sock.getsockname()[1]
    print(f"annotating {images.root} with {FLAGS.workdir} (step {seg.step})")
    print(f"open http://{FLAGS.host}:{port}/", flush=True)
    uvicorn.Server(uvicorn.Config(api, log_level="warning")).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
