"""Atomic file writes: readers never see half a file, a failure leaves nothing behind.

Every output of the project (reports, thresholds, masks, overlays, summaries) goes
through these: write to a temporary file in the target directory, then rename.
"""

from __future__ import annotations

import os
import tempfile


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_files(out_dir: str, contents: dict[str, bytes]) -> None:
    """Writes every `{name: bytes}` to a temporary name first, then renames them all.

    If any write fails, no file of the group is created (nor any temporary left).
    """
    os.makedirs(out_dir or ".", exist_ok=True)
    umask = _umask()
    tmps = []
    try:
        for name, data in contents.items():
            fd, tmp = tempfile.mkstemp(dir=out_dir or ".", prefix=f".{name}.", suffix=".tmp")
            tmps.append((tmp, os.path.join(out_dir, name)))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        for tmp, final in tmps:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    atomic_write_files(os.path.dirname(path), {os.path.basename(path): data})


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_savefig(fig, path: str, dpi: int = 110) -> None:
    """A matplotlib figure saved as PNG through a temporary file."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
