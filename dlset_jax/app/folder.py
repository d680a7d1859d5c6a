"""The image folder the annotation tool serves: listing, safe paths, reading, saving.

Everything the server reads or writes goes through an `ImageFolder`, which holds the
one rule of the tool's file access: an image id is a path relative to the folder, and
it must stay inside it after every symbolic link is resolved. Hidden names (a leading
dot: also the temporary files of an atomic write) are neither listed nor served. A
subfolder holding nothing but the DICOM files of one series (at least two, by the
"DICM" preamble or a DICOM suffix, none a link out of the folder) is one volume, listed
and served by the subfolder's id instead of its files.

Saved beside an image `NAME.EXT` (all files of one save written together, each whole
through a temporary file, none of them where a write fails, `files.atomic_write_files`;
two inputs of a folder with one NAME are refused, as they would share these files):
  NAME.labels.png       2-D images: the label map (uint8, or uint16 beyond 255
                        labels): 0 background, label k = the k-th label name
  NAME.seg.dcm          DICOM input: a DICOM Segmentation (highdicom) referencing the
                        source image, one segment per label name
  NAME.labels.nii.gz    NIfTI volumes: the label volume with the source's affine and
                        header (slices without objects are 0; each object painted
                        through the axis it was annotated along); a DICOM series folder
                        NAME/: the same beside the folder, with the series' affine
                        (`readers.read_dicom_series`)
  NAME.annotation.json  the clicks of every object (label name, colour, slice, the four
                        points, corrective clicks, brush edits; for an object propagated
                        through a volume its extent and the clicks and edits on other
                        slices), the label
                        table, the checkpoint and threshold used, a revision number
                        that the next save must quote, and `outlines`: each object's
                        outline on each slice it covers, closed polylines of [x, y] px
                        on the slice as shown (the level set's contour; the mask's
                        outline where painted or propagated; `dlset_jax/outlines.py`)
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import threading

import numpy as np

from dlset_jax import files, readers, segment_files, segmenter

LABEL_SUFFIXES = (".labels.png", ".labels.nii.gz", ".seg.dcm", ".annotation.json")
INPUT_SUFFIXES = segment_files.IMAGE_SUFFIXES + segment_files.VOLUME_SUFFIXES
INPUT_SUFFIXES += segment_files.DICOM_SUFFIXES


class FolderError(ValueError):
    """A request the folder refuses; `status` is the HTTP status that fits it."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Loaded:
    """One image, or one volume sliced along one axis, read and mapped to the model's
    0..255 input once.

    `frames`: (S, H, W) or (S, H, W, 3) uint8 (S = 1 for a 2-D image); what the model is
    given and what the page shows (window / level is applied on these values). A volume's
    slices are along the array axis it was loaded with (`load`; `source["axis"]`), a view
    of its one uint8 volume (`source["volume"]`); other inputs have axis 2 only.
    """

    image_id: str
    kind: str  # "image" | "nifti" | "dicom" | "dicom_series"
    frames: np.ndarray
    spacing: tuple[float, float] | None
    intensity: str | None
    source: dict  # what `segment_files.read_input` returned (affine, header for NIfTI)

    @property
    def n_slices(self) -> int:
        return int(self.frames.shape[0])

    def frame(self, z: int) -> np.ndarray:
        if not 0 <= z < self.n_slices:
            raise FolderError(f"slice {z} out of range (0..{self.n_slices - 1})")
        return self.frames[z]


def _input_name(name: str) -> bool:
    """Whether a file name is one the tool lists: an image, volume or DICOM file, not
    hidden, not one of its own outputs."""
    low = name.lower()
    return (
        not name.startswith(".")
        and low.endswith(INPUT_SUFFIXES)
        and not low.endswith(LABEL_SUFFIXES)
    )


class ImageFolder:
    """The folder of images one tool instance annotates.

    Args:
      root: the folder (must exist).
      max_pixels: largest image (or volume: all voxels) the tool reads, in pixels.
      cache_size: how many read images are kept in memory.
      nonfinite: what NaN / inf intensities mean (`readers.fill_nonfinite`).
    """

    def __init__(
        self, root: str, *, max_pixels: int, cache_size: int = 4, nonfinite: str = "error"
    ):
        real = os.path.realpath(root)
        if not os.path.isdir(real):
            raise FolderError(f"{root}: not a folder")
        self.root = real
        self.max_pixels = int(max_pixels)
        if nonfinite not in readers.NONFINITE:
            raise FolderError(f"--nonfinite must be one of {readers.NONFINITE}, got {nonfinite!r}")
        self.nonfinite = nonfinite
        self._cache: collections.OrderedDict[str, tuple[tuple, Loaded]] = collections.OrderedDict()
        self._cache_size = int(cache_size)
        self._lock = threading.Lock()  # the cache
        self._save_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        # folder -> (its mtime, its series files): resolve() runs on every request, and
        # deciding whether a folder is a series opens each of its files
        self._series: dict[str, tuple[int, list[str]]] = {}

    # ---- paths

    def resolve(self, image_id: str) -> str:
        """The absolute path of `image_id`, refused unless it is a file (or a DICOM series
        folder) inside the root."""
        if not isinstance(image_id, str) or not image_id or "\x00" in image_id:
            raise FolderError("no image id given")
        parts = image_id.replace("\\", "/").split("/")
        if image_id.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise FolderError(f"image id {image_id!r}: not a path inside the image folder", 403)
        if any(p.startswith(".") for p in parts):
            raise FolderError(f"image id {image_id!r}: hidden files are not served", 403)
        path = os.path.realpath(os.path.join(self.root, *parts))
        if os.path.commonpath([path, self.root]) != self.root:
            raise FolderError(f"image id {image_id!r}: a link that leaves the image folder", 403)
        if os.path.isdir(path) and path != self.root and self._series_files(path):
            return path
        if not os.path.isfile(path):
            raise FolderError(f"unknown image {image_id!r}", 404)
        if not path.lower().endswith(INPUT_SUFFIXES) or path.lower().endswith(LABEL_SUFFIXES):
            raise FolderError(f"image id {image_id!r}: not an image, volume or DICOM file", 404)
        return path

    def list(self) -> list[dict]:
        """Every image, volume and DICOM file under the root (sorted ids), without reading them."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if dirpath != self.root and self._series_files(dirpath):
                rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
                annotated = os.path.exists(self.annotation_path(dirpath))
                out.append({"id": rel, "kind": "dicom_series", "annotated": annotated})
                continue  # its files are slices of that volume, not images of their own
            for name in sorted(filenames):
                if not _input_name(name):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                try:
                    path = self.resolve(rel)
                except FolderError:  # links out of the root are not listed
                    continue
                out.append(
                    {
                        "id": rel,
                        "kind": segment_files.input_kind(path),
                        "annotated": os.path.exists(self.annotation_path(path)),
                    }
                )
        return out

    def _series_files(self, folder: str) -> list[str]:
        """The files of `folder` if it holds one DICOM series (module doc), else [];
        decided again only when the folder's entries change (its mtime). `uploads/` is
        never a series: its DICOM files are the single files users uploaded."""
        if folder == os.path.join(self.root, "uploads"):
            return []
        try:
            mtime = os.stat(folder).st_mtime_ns
        except OSError:
            return []
        cached = self._series.get(folder)
        if cached is None or cached[0] != mtime:
            cached = self._series[folder] = (mtime, self._find_series_files(folder))
        return cached[1]

    def _find_series_files(self, folder: str) -> list[str]:
        try:
            names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
        except OSError:
            return []
        out = []
        for name in names:
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if not os.path.isfile(real) or os.path.commonpath([real, self.root]) != self.root:
                return []  # a subfolder, or a link out of the image folder
            if not name.lower().endswith(segment_files.DICOM_SUFFIXES):
                try:
                    with open(real, "rb") as f:
                        if f.read(132)[128:132] != b"DICM":
                            return []
                except OSError:
                    return []
            out.append(path)
        return out if len(out) >= 2 else []

    # ---- reading

    def load(self, image_id: str, axis: int = 2) -> Loaded:
        """`image_id` read (or from the cache); a volume sliced along `axis`.

        A volume is read once whatever the axes it is shown along: each axis's frames
        are a view of the one uint8 volume (`readers.volume_frames`)."""
        path = self.resolve(image_id)
        kind = segment_files.input_kind(path)
        if axis not in (0, 1, 2):
            raise FolderError(f"axis must be 0, 1 or 2, got {axis}")
        if axis != 2 and kind not in segment_files.VOLUME_KINDS:
            raise FolderError(f"{image_id}: a {kind} is sliced along axis 2 only, not {axis}")
        stamp = self._stamp(path)
        with self._lock:
            stamped, loaded = self._cache.get(image_id, (None, None))
            if loaded is not None and stamped == stamp:
                self._cache.move_to_end(image_id)
            else:  # not read yet, or the file changed on disk since
                loaded = None
        if loaded is None:
            loaded = self._read(image_id, path)
            with self._lock:
                self._cache[image_id] = (stamp, loaded)
                self._cache.move_to_end(image_id)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        if axis == loaded.source.get("axis", 2):
            return loaded
        inp = segment_files.along_axis(loaded.source, axis)
        frames = readers.volume_frames(inp["volume"], axis, inp["rot90"])
        return dataclasses.replace(loaded, frames=frames, spacing=inp["spacing"], source=inp)

    def _stamp(self, path: str) -> tuple:
        """What tells a changed input from the one in the cache: the file's size and
        modification time (a series folder: those of each of its files)."""
        files = self._series_files(path) if os.path.isdir(path) else [path]
        try:
            stats = [os.stat(f) for f in files]
        except OSError:
            return ()
        return tuple((st.st_size, st.st_mtime_ns) for st in stats)

    def _read(self, image_id: str, path: str) -> Loaded:
        kind = segment_files.input_kind(path)
        self._check_size(image_id, path, kind)
        try:
            inp = segment_files.read_input(
                path, kind, page=0 if kind == "image" else None, nonfinite=self.nonfinite
            )
        except (readers.DataError, segment_files.RequestError) as e:
            message = str(e).replace(path, image_id)  # the reader names the file already
            if not message.startswith(image_id):
                message = f"{image_id}: {message}"
            raise FolderError(message, 422) from None
        is_volume = kind in segment_files.VOLUME_KINDS
        if is_volume:  # a view of the volume, not a copy
            frames = readers.volume_frames(inp["volume"], inp["axis"], inp["rot90"])
        elif "n_frames" in inp:
            frames = np.stack([segment_files.frame(inp, i) for i in range(inp["n_frames"])])
        else:
            frames = inp["image"][None]
        if frames.ndim == 4 and frames.shape[-1] == 1:
            frames = frames[..., 0]
        if int(np.prod(frames.shape[:3])) > self.max_pixels:
            raise FolderError(
                f"{image_id}: {int(np.prod(frames.shape[:3]))} pixels, more than this "
                f"tool's limit of {self.max_pixels} (--max_pixels)",
                413,
            )
        if is_volume:  # uint8 grey already (`read_input`): what the model is given, as it is
            intensity = inp["intensity"] or segmenter.prepare_image(frames[0])[1]["intensity"]
            return Loaded(image_id, kind, frames, inp["spacing"], intensity, inp)
        try:
            # grey stays one channel (three equal channels are grey), colour three
            kinds = (
                ("grey",) if segmenter.prepare_image(frames[0])[1]["kind"] == "grey" else ("rgb",)
            )
            prepared = [segmenter.prepare_image(f, kinds) for f in frames]
        except ValueError as e:
            raise FolderError(f"{image_id}: {e}", 422) from None
        shown = np.stack([p[0] for p in prepared])
        intensity = inp.get("intensity") or prepared[0][1]["intensity"]
        if shown.ndim == 4 and shown.shape[-1] == 1:
            shown = shown[..., 0]
        return Loaded(image_id, kind, shown, inp.get("spacing"), intensity, inp)

    def _check_size(self, image_id: str, path: str, kind: str) -> None:
        """Refuses images over the pixel limit before decoding them, from their headers
        (2-D images, NIfTI volumes, DICOM series; a DICOM file is checked once read)."""
        try:
            if kind == "image":
                from PIL import Image

                with Image.open(path) as im:
                    n = im.size[0] * im.size[1]
            elif kind == "nifti":
                import nibabel as nib

                n = int(np.prod(nib.load(path).shape[:3]))
            elif kind == "dicom_series":
                import pydicom

                members = self._series_files(path)
                ds = pydicom.dcmread(members[0], stop_before_pixels=True)
                n = int(ds.Rows) * int(ds.Columns) * len(members)
            else:
                return
        except Exception as e:  # PIL, nibabel and pydicom raise many types for bad files
            raise FolderError(f"{image_id}: cannot read image ({e})", 422) from None
        if n > self.max_pixels:
            raise FolderError(
                f"{image_id}: {n} pixels, more than this tool's limit of {self.max_pixels} "
                "(--max_pixels)",
                413,
            )

    # ---- annotations

    @staticmethod
    def annotation_path(path: str) -> str:
        return os.path.join(
            os.path.dirname(path), segment_files.file_stem(path) + ".annotation.json"
        )

    def _check_own_outputs(self, image_id: str, path: str) -> None:
        """Refuses `image_id` where another input of its folder has the same name stem
        (`a.png` and `a.jpg`, `v.nii` and `v.nii.gz`, a series folder `scan/` beside
        `scan.nii.gz`): they would read and write the same annotation and label map."""
        folder, stem = os.path.dirname(path), segment_files.file_stem(path)
        try:
            names = os.listdir(folder)
        except OSError:
            return
        clash = []
        for name in sorted(names):
            other = os.path.join(folder, name)
            if name.startswith(".") or other == path or segment_files.file_stem(other) != stem:
                continue
            if os.path.isdir(other):
                if self._series_files(other):
                    clash.append(name + "/")
            elif _input_name(name):
                clash.append(name)
        if clash:
            raise FolderError(
                f"{image_id}: {', '.join(clash)} in the same folder would share its "
                f"annotation and label map ({stem}.annotation.json, {stem}.labels.*): "
                "rename one of them",
                409,
            )

    def annotation(self, image_id: str) -> dict | None:
        """The saved annotation of `image_id`, or None."""
        path = self.resolve(image_id)
        self._check_own_outputs(image_id, path)
        p = self.annotation_path(path)
        if not os.path.lexists(p):
            return None
        if os.path.commonpath([os.path.realpath(p), self.root]) != self.root:
            raise FolderError(f"{image_id}: its annotation file is a link out of the folder", 403)
        try:
            with open(p) as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise FolderError(f"{image_id}: saved annotation unreadable ({e})", 422) from None
        if not (
            isinstance(saved, dict)
            and isinstance(saved.get("revision"), int)
            and isinstance(saved.get("objects"), list)
        ):
            raise FolderError(
                f"{image_id}: {os.path.basename(p)} is not an annotation of this tool (a "
                "JSON object with a revision number and a list of objects)",
                422,
            )
        return saved

    def save(self, image_id: str, revision: int, objects: list[dict], masks, extra: dict) -> dict:
        """Writes the label map and the annotation of `image_id` together.

        Args:
          revision: the revision the client loaded (0: none saved); a different saved
            revision means another tab saved in between: 409, nothing written.
          objects: per object {"label", "color", "axis", "slice", "points",
            "corrections", "propagate", "extent", "corrections_on", "edits",
            "edits_on"} (JSON-ready).
          masks: per object {slice: (H, W) bool mask} (its own slice, or every slice
            a propagated object reaches), slices along the object's axis.
          extra: more JSON facts to store (checkpoint, threshold).

        Returns: {"revision", "files"} of what was written.
        """
        path = self.resolve(image_id)
        loaded = self.load(image_id)
        with self._save_locks[path]:
            saved = self.annotation(image_id)
            current = int(saved["revision"]) if saved else 0
            if int(revision) != current:
                raise FolderError(
                    f"{image_id}: saved meanwhile (revision {current}, this page has "
                    f"{revision}); reload the image to see that save before saving again",
                    409,
                )
            names = list(dict.fromkeys(o["label"] for o in objects))
            label_of = {n: i + 1 for i, n in enumerate(names)}
            dtype = np.uint8 if len(names) < 256 else np.uint16
            is_volume = loaded.kind in segment_files.VOLUME_KINDS
            # a volume's labels in the file's own array order, other inputs' per frame
            labels = np.zeros(
                loaded.source["shape"][:3] if is_volume else loaded.frames.shape[:3], dtype
            )
            for o, by_slice in zip(objects, masks, strict=True):
                # painted in order: a later object wins where two overlap (an inner
                # structure given after the outer one)
                inp = self.load(image_id, o["axis"]).source if is_volume else None
                for z, m in by_slice.items():
                    if is_volume:
                        view = readers.slice_view(labels, inp["axis"], z, inp["rot90"])
                    else:
                        view = labels[z]
                    view[m] = label_of[o["label"]]
            stem = segment_files.file_stem(path)
            out = {}
            if is_volume:
                src = loaded.source
                out[stem + ".labels.nii.gz"] = segment_files.nifti_bytes(
                    labels, src["affine"], src["header"], gz=True
                )
            elif loaded.kind == "dicom":
                out[stem + ".seg.dcm"] = dicom_seg_bytes(path, labels, names)
            else:
                out[stem + ".labels.png"] = segment_files.png_bytes(labels[0])
            doc = {
                "image": image_id,
                "revision": current + 1,
                "labels": [{"name": n, "value": label_of[n]} for n in names],
                "objects": objects,
                **extra,
            }
            out[stem + ".annotation.json"] = json.dumps(doc, indent=1).encode()
            files.atomic_write_files(os.path.dirname(path), out)
        return {"revision": current + 1, "files": sorted(out)}

    # ---- uploads

    def add_upload(self, name: str, data: bytes, max_bytes: int) -> str:
        """Stores an uploaded file under `uploads/` (never over an existing file); its id.

        The file is read back before it becomes visible: a corrupt upload leaves nothing.
        """
        base = os.path.basename(name.replace("\\", "/"))
        if not base or base.startswith(".") or not base.lower().endswith(INPUT_SUFFIXES):
            raise FolderError(
                f"upload {name!r}: expected an image {segment_files.IMAGE_SUFFIXES}, a NIfTI "
                f"volume {segment_files.VOLUME_SUFFIXES} or a DICOM file"
            )
        if base.lower().endswith(LABEL_SUFFIXES):
            raise FolderError(f"upload {name!r}: names ending in {LABEL_SUFFIXES} are outputs")
        if len(data) > max_bytes:
            raise FolderError(
                f"upload {name!r}: {len(data)} bytes, more than the limit of {max_bytes} "
                "(--max_upload_mb)",
                413,
            )
        if len(base.encode()) > 200:  # the check file's name adds to it; file systems stop at 255
            raise FolderError(f"upload {name[:40]!r}...: a file name of at most 200 bytes, please")
        folder = os.path.join(self.root, "uploads")
        if os.path.lexists(folder) and not os.path.isdir(folder):
            raise FolderError("uploads refused: the image folder holds a file named uploads", 409)
        os.makedirs(folder, exist_ok=True)
        if os.path.realpath(folder) != folder:
            raise FolderError("uploads/ is a link: uploads refused", 403)
        final = os.path.join(folder, base)
        if os.path.lexists(final):
            raise FolderError(f"upload {name!r}: uploads/{base} exists already", 409)
        hidden = f".upload-check-{threading.get_ident()}-{base}"
        files.atomic_write_bytes(os.path.join(folder, hidden), data)
        tmp = os.path.join(folder, hidden)
        try:
            image_id = f"uploads/{base}"
            self._read(image_id, tmp)  # raises on a corrupt file
            os.link(tmp, final)  # fails if the name was taken meanwhile: no overwrite
        except FileExistsError:
            raise FolderError(f"upload {name!r}: uploads/{base} exists already", 409) from None
        finally:
            os.remove(tmp)
        return image_id


def dicom_seg_bytes(source_path: str, labels: np.ndarray, names: list[str]) -> bytes:
    """A DICOM Segmentation of `labels` ((frames, H, W), values 1..len(names)) that
    references the DICOM file `source_path`: one binary segment per label name."""
    import io

    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    import dlset_jax

    if not names:
        raise FolderError(
            f"{os.path.basename(source_path)}: a DICOM Segmentation holds at least one "
            "segment; keep an object, or delete the .seg.dcm file to clear it (nothing saved)"
        )
    source = pydicom.dcmread(source_path)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="dlset_jax deep level set",
        version=dlset_jax.__version__,
        family=codes.cid7162.ArtificialIntelligence,
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=name,
            segmented_property_category=codes.cid7150.Tissue,
            # what the object is, the tool does not know: the generic "tissue"
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
        )
        for k, name in enumerate(names, 1)
    ]
    pixels = labels if int(getattr(source, "NumberOfFrames", 1) or 1) > 1 else labels[0]
    missing = [a for a in ("StudyInstanceUID", "SeriesInstanceUID", "PatientID") if a not in source]
    if missing:
        raise FolderError(
            f"{os.path.basename(source_path)}: lacks {', '.join(missing)}: a DICOM "
            "Segmentation cannot reference it (nothing saved)",
            422,
        )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=9000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="dlset_jax",
        manufacturer_model_name="four-click annotation tool",
        software_versions=dlset_jax.__version__,
        device_serial_number="none",
    )
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()
