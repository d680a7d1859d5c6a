"""The annotation tool's HTTP API (FastAPI) over one `Segmenter` and one `ImageFolder`.

Endpoints (JSON unless said; every error is `{"error": message}` with its status):
  GET  /                     the page (static/index.html; its script and style under /static)
  GET  /api/info             the model (checkpoint, step, threshold, image kinds,
                             whether it takes corrective clicks) and the limits
  GET  /api/images           the images, volumes and DICOM files of the folder
  GET  /api/image?id=&axis= one image: size, slices, spacing, intensity mapping and
                             its saved annotation (or null); a volume sliced along
                             array axis 0, 1 or 2 of the file (default 2; other
                             inputs: 2 only), with the volume's shape
  GET  /api/slice?id=&z=&axis=&lo=&hi=   one slice as PNG, window [lo, hi] of the
                             0..255 values the model is given (default 0, 255)
  POST /api/segment          {"id", "axis", "slice", "points": [[x, y] x 4], "corrections":
                             [[x, y, sign]], "edits": [[x, y, r, sign]]} (left, right,
                             top, bottom; pixel centres at integers; corrective clicks
                             +1 / -1 for a model that takes them; brush discs painted
                             +1 / erased -1 after the model, `brush`) -> the zero
                             contour (polylines in image pixels; with edits the outline
                             of the painted mask), area, warnings, milliseconds. In a
                             volume, with "propagate": true (and optionally "extent":
                             [first, last], either null where not named,
                             "corrections_on": {slice: [[x, y, sign]]}, "edits_on":
                             {slice: [[x, y, r, sign]]}) the object is followed through
                             the slices (`volume.propagate`; a slice's brush edits
                             painted where it reaches them, and the next slice followed
                             from the painted mask) and "slices" lists each
                             slice it reaches or is painted on: contours, area, source
                             ("clicks" / "propagated" / "painted"); "stops" says why it
                             ended
  POST /api/save             {"id", "revision", "objects": [{"label", "color", "axis", "slice",
                             "points", "corrections", "propagate", "extent",
                             "corrections_on", "edits", "edits_on"}]} -> every object
                             segmented again from its clicks (propagated ones through
                             the volume), its brush edits painted, and written with its
                             label map (`ImageFolder.save`)
  POST /api/upload           multipart `file` -> stored as uploads/NAME (never over a file)

Statuses: 400 bad input (clicks, JSON, slice), 403 a path outside the folder or a
hidden file or a request addressed to another host name or sent from another site's
page, 404 unknown image, 409 a save that another tab's save overtook, an upload name
taken or an image whose name stem another input of its folder shares (`a.png` and
`a.jpg`: one annotation and label map for both), 413 an image or upload over the
limits, 422 a file (or a saved annotation) that cannot be read, 500 a model error
(the message is shown in the page; the server keeps running).
"""

import functools
import io
import os
import threading
import time

import numpy as np

from dlset_jax import outlines, segment_files
from dlset_jax import segmenter as seglib
from dlset_jax.app import brush
from dlset_jax.app.folder import FolderError, ImageFolder

STATIC = os.path.join(os.path.dirname(__file__), "static")
MAX_JSON_BYTES = 1 << 20
MAX_OBJECTS = 256
MAX_CORRECTIONS = 64  # per object in a request; the model's own limit is checked after
MAX_CLICKED_SLICES = 64  # slices with corrective clicks, per propagated object


def load_segmenter(workdir: str, step: int | None = None) -> seglib.Segmenter:
    """The tool's model (batches of one object, doubled when a save segments more on one
    slice: `segmenter.BUCKET_SIZE`), its one-object program compiled at start-up, where
    the first click used to wait 3-5 s for it."""
    return warm_up(seglib.Segmenter.from_workdir(workdir, step))


def warm_up(seg: seglib.Segmenter) -> seglib.Segmenter:
    """`seg` with its one-object program compiled (one call on a blank image)."""
    shape = (32, 32) if "grey" in seg.image_kinds else (32, 32, 3)
    seg.segment(np.zeros(shape, np.uint8), [[[4, 16], [27, 16], [16, 4], [16, 27]]])
    return seg


class TakingTurns:
    """The one model, shared by the requests one model call at a time, in the order the
    calls asked (a ticket lock: Python's own lock lets the thread that just released it
    take it again first). A 3-D request takes its turn per slice, so a click on another
    image waits for one slice, not for the whole walk."""

    def __init__(self, seg: seglib.Segmenter):
        self._seg = seg
        self._cond = threading.Condition()
        self._next = 0  # the next ticket to hand out
        self._serving = 0  # the ticket whose turn it is

    def __getattr__(self, name):  # everything but `segment` is the segmenter's own
        return getattr(self._seg, name)

    def segment(self, *args, **kwargs):
        with self._cond:
            ticket = self._next
            self._next += 1
            self._cond.wait_for(lambda: self._serving == ticket)
        try:
            return self._seg.segment(*args, **kwargs)
        finally:
            with self._cond:
                self._serving += 1
                self._cond.notify_all()


# The names a server bound to this machine alone answers to (the Host header): a page
# of another site that rebinds its own name to 127.0.0.1 sends its own name.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _host_name(host: str) -> str:
    """`Host` header -> its name without the port (`[::1]:8765` -> `::1`)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def create_app(
    seg: seglib.Segmenter,
    folder: ImageFolder,
    *,
    max_upload_bytes: int,
    hosts: tuple[str, ...] | None = LOCAL_HOSTS,
):
    """The FastAPI application (run it with uvicorn; `__main__` does).

    `hosts`: the host names requests may be addressed to (None: any, for a server the
    user exposed with `--host`). Whatever the host, a request that changes something
    (POST) from a page of another origin is refused: any web site could otherwise
    upload and save into the folder from the user's browser.
    """
    from typing import Annotated
    from urllib.parse import urlsplit

    from fastapi import FastAPI, File, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, Field

    class Clicks(BaseModel):  # one object's clicks
        axis: int = Field(default=2, ge=0, le=2)  # a volume's slicing axis
        slice: int = 0
        points: list[list[float]]
        corrections: list[list[float]] = Field(default=[], max_length=MAX_CORRECTIONS)
        # through the volume from `slice` (volume.propagate): optionally its first and
        # last slice, and corrective clicks on other slices, by slice number
        propagate: bool = False
        extent: list[int | None] | None = Field(default=None, min_length=2, max_length=2)
        corrections_on: dict[int, list[list[float]]] = Field(
            default={}, max_length=MAX_CLICKED_SLICES
        )
        # brush discs [x, y, r, sign] (`brush`): on `slice`, and for a propagated object
        # on other slices by slice number
        edits: list[list[float]] = Field(default=[], max_length=brush.MAX_EDITS)
        edits_on: dict[int, list[list[float]]] = Field(default={}, max_length=MAX_CLICKED_SLICES)

    class SegmentIn(Clicks):
        id: str

    class ObjectIn(Clicks):
        label: str = Field(min_length=1, max_length=64)
        color: str = Field(pattern=r"^#[0-9a-fA-F]{6}$")

    class SaveIn(BaseModel):
        id: str
        revision: int = Field(ge=0)
        objects: list[ObjectIn] = Field(max_length=MAX_OBJECTS)

    app = FastAPI(title="dlset_jax annotation", docs_url=None, redoc_url=None)
    model = TakingTurns(seg)  # requests take turns on the CPU, per model call

    def error(message: str, status: int) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(FolderError)
    async def _folder_error(request, exc: FolderError):
        return error(str(exc), exc.status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(f"bad request: {where or 'body'}: {first.get('msg', 'invalid')}", 400)

    @app.exception_handler(Exception)
    async def _model_error(request, exc: Exception):
        return error(f"internal error ({type(exc).__name__}: {exc})", 500)

    @app.middleware("http")
    async def _same_origin(request: Request, call_next):
        host = request.headers.get("host", "")
        if hosts is not None and _host_name(host) not in hosts:
            return error(
                f"requests to host {host!r} are refused: this server answers as "
                f"{' / '.join(hosts)} (start it with --host to serve another name)",
                403,
            )
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            cross = request.headers.get("sec-fetch-site") == "cross-site"
            if cross or (origin is not None and urlsplit(origin).netloc != host):
                return error(f"a request from another site ({origin}) is refused", 403)
        return await call_next(request)

    @app.middleware("http")
    async def _limit_json(request: Request, call_next):
        if request.url.path != "/api/upload" and request.method == "POST":
            size = request.headers.get("content-length")
            if size is None or int(size) > MAX_JSON_BYTES:
                return error(f"request body over {MAX_JSON_BYTES} bytes (or of unknown size)", 413)
        return await call_next(request)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    def index():
        return FileResponse(os.path.join(STATIC, "index.html"))

    @app.get("/api/info")
    def info():
        return {
            "model": {
                "workdir": seg.workdir,
                "step": seg.step,
                "threshold": seg.threshold,
                "threshold_source": seg.threshold_source,
                "image_kinds": list(seg.image_kinds),
                "takes_corrections": seg.takes_corrections,
            },
            "limits": {
                "max_pixels": folder.max_pixels,
                "max_upload_bytes": max_upload_bytes,
                "max_objects": MAX_OBJECTS,
                "max_corrections": seg.max_corrections,
            },
        }

    @app.get("/api/images")
    def images():
        return {"images": folder.list()}

    @app.get("/api/image")
    def image(id: str, axis: Annotated[int, Query()] = 2):
        im = folder.load(id, axis)
        shape = im.source.get("shape") if im.kind in segment_files.VOLUME_KINDS else None
        return {
            "id": id,
            "kind": im.kind,
            "axis": axis,
            "volume_shape": None if shape is None else [int(n) for n in shape[:3]],
            "height": int(im.frames.shape[1]),
            "width": int(im.frames.shape[2]),
            "n_slices": im.n_slices,
            "channels": 3 if im.frames.ndim == 4 else 1,
            "spacing": None if im.spacing is None else [float(v) for v in im.spacing],
            "intensity": im.intensity,
            "annotation": folder.annotation(id),
        }

    @app.get("/api/slice")
    def slice_png(
        id: str,
        z: Annotated[int, Query()] = 0,
        axis: Annotated[int, Query()] = 2,
        lo: Annotated[float, Query(ge=0, le=255)] = 0.0,
        hi: Annotated[float, Query(ge=0, le=255)] = 255.0,
    ):
        if hi <= lo:
            raise FolderError(f"window: hi ({hi:g}) must be above lo ({lo:g})")
        from PIL import Image

        f = folder.load(id, axis).frame(z).astype(np.float32)
        shown = np.clip(np.round((f - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(shown).save(buf, format="PNG", compress_level=1)
        return Response(buf.getvalue(), media_type="image/png")

    def checked_points(frame, points, k):
        # clicked in any order: named by position, or taken as given (left, right, top,
        # bottom) where two points tie for an extreme
        try:
            return seglib.check_points(points, frame.shape[:2], obj=k, reorder=True)[0]
        except ValueError as e:
            try:
                return seglib.check_points(points, frame.shape[:2], obj=k)[0]
            except ValueError:
                raise FolderError(str(e)) from None

    def segment_slice(im, z, points_list, corrections_list, ids):
        frame = im.frame(z)
        checked = [checked_points(frame, p, k) for k, p in zip(ids, points_list, strict=True)]
        try:  # corrective clicks (and the model's refusal of them), the image contract
            return model.segment(
                frame,
                checked,
                spacing=im.spacing,
                corrections=corrections_list,
                object_ids=ids,
            )
        except ValueError as e:
            raise FolderError(str(e)) from None

    def propagate(im, obj, k, edits):
        """Object `k` (a `Clicks` dict) through the volume, its brush edits ({slice: discs})
        painted where it reaches them (and followed beyond): `volume.propagate`'s result."""
        from dlset_jax import volume

        if im.kind not in segment_files.VOLUME_KINDS:
            raise FolderError(
                f"object {k}: propagation needs a volume, {im.image_id} is a {im.kind}"
            )
        points = checked_points(im.frame(obj["slice"]), obj["points"], k)  # frame: the range
        corrections = {int(z): c for z, c in obj["corrections_on"].items() if c}
        if obj["slice"] in corrections:
            raise FolderError(
                f'object {k}: clicks on its own slice {obj["slice"]} go in "corrections"'
            )
        if obj["corrections"]:
            corrections[obj["slice"]] = obj["corrections"]
        try:  # extent, clicks on any slice and the model's refusal, before any compute
            return volume.propagate(
                model,
                im.frames,
                obj["slice"],
                points,
                extent=obj["extent"],
                corrections=corrections,
                edits={z: functools.partial(brush.paint, edits=d) for z, d in edits.items()},
                spacing=im.spacing,
            )
        except ValueError as e:
            message = str(e)  # the model's refusal names its object already
            raise FolderError(
                message if message.startswith("object ") else f"object {k}: {e}"
            ) from None

    def check_flat(obj, k):
        other_slices = obj["corrections_on"] or obj["edits_on"]
        if not obj["propagate"] and (obj["extent"] is not None or other_slices):
            raise FolderError(
                f"object {k}: an extent and clicks or edits on other slices act through "
                'propagation: set "propagate": true'
            )

    def checked_edits(im, obj, k) -> dict:
        """Object `k`'s brush edits, {slice: (N, 4) discs}, checked before any model call."""
        if obj["slice"] in obj["edits_on"]:
            raise FolderError(f'object {k}: edits on its own slice {obj["slice"]} go in "edits"')
        out = {}
        for z, edits in [(obj["slice"], obj["edits"]), *obj["edits_on"].items()]:
            if not edits:
                continue  # the object's own slice is checked where it is segmented
            if not 0 <= z < im.n_slices:
                raise FolderError(
                    f"object {k}: brush edits on slice {z}, out of range (0..{im.n_slices - 1})"
                )
            try:
                out[z] = brush.check(edits, im.frames.shape[1:3], f"object {k}, slice {z}")
            except ValueError as e:
                raise FolderError(str(e)) from None
        return out

    def painted(o, discs):
        """One slice's answer with its brush edits: (mask, outline). Painted: the
        mask's outline (pixel edges, as the label map saves it); else the level set's."""
        if discs is None:
            return o.mask, o.contours()
        mask = brush.paint(o.mask, discs)
        return mask, outlines.mask_outline(mask)

    def propagated(im, obj, k, edits):
        """Object `k` through the volume with its brush edits: the `volume.propagate`
        result and {slice: (mask, source)} of every slice it reaches (edits painted, and
        the next slice propagated from the painted mask) or is painted on (those it does
        not reach: source "painted")."""
        res = propagate(im, obj, k, edits)
        out = {f["slice"]: (res.labels[f["slice"]], f["source"]) for f in res.slices}
        for z, discs in edits.items():
            if z not in out:
                out[z] = (brush.paint(np.zeros(im.frames.shape[1:3], bool), discs), "painted")
        return res, dict(sorted(out.items()))

    @app.post("/api/segment")
    def segment(body: SegmentIn):
        t0 = time.perf_counter()
        im = folder.load(body.id, body.axis)
        obj = body.model_dump()
        check_flat(obj, 1)
        edits = checked_edits(im, obj, 1)
        if obj["propagate"]:
            res, masks = propagated(im, obj, 1, edits)
            slices = [
                {
                    "slice": z,
                    "source": source,
                    "contours": outlines.as_lists(outlines.mask_outline(mask)),
                    "area_px": int(mask.sum()),
                }
                for z, (mask, source) in masks.items()
            ]
            start = next(s for s in slices if s["slice"] == res.start)
            warnings = next(f for f in res.slices if f["slice"] == res.start)["warnings"]
            return {
                "contours": start["contours"],
                "area_px": start["area_px"],
                "warnings": warnings,
                "slices": slices,
                "stops": res.stops,
                "ms": 1e3 * (time.perf_counter() - t0),
            }
        out = segment_slice(im, body.slice, [body.points], [body.corrections], [1]).objects[0]
        mask, lines = painted(out, edits.get(body.slice))
        return {
            "contours": outlines.as_lists(lines),
            "area_px": int(mask.sum()),
            "warnings": out.warnings,
            "ms": 1e3 * (time.perf_counter() - t0),
        }

    @app.post("/api/save")
    def save(body: SaveIn):
        objects = [o.model_dump() for o in body.objects]
        ims = {a: folder.load(body.id, a) for a in sorted({2} | {o["axis"] for o in objects})}
        masks = [None] * len(objects)  # per object {slice: (H, W) mask}
        lines = [None] * len(objects)  # per object {slice: its outline}
        by_slice: dict[tuple[int, int], list[int]] = {}  # (axis, slice) -> objects
        for k, o in enumerate(objects):
            check_flat(o, k + 1)
            n = ims[o["axis"]].n_slices
            if not 0 <= o["slice"] < n:
                raise FolderError(f"object {k + 1}: slice {o['slice']} out of range (0..{n - 1})")
            if not o["propagate"]:
                by_slice.setdefault((o["axis"], o["slice"]), []).append(k)
        edits = []  # per object {slice: discs}
        for k, o in enumerate(objects):  # every refusal before the slow part
            edits.append(checked_edits(ims[o["axis"]], o, k + 1))
            if o["propagate"]:
                checked_points(ims[o["axis"]].frame(o["slice"]), o["points"], k + 1)
        per_slice = [o["corrections"] for o in objects] + [
            c for o in objects for c in o["corrections_on"].values()
        ]
        ids = [k + 1 for k in range(len(objects))] + [
            k + 1 for k, o in enumerate(objects) for _ in o["corrections_on"]
        ]
        try:
            seg.check_accepts(per_slice, ids)
        except ValueError as e:
            raise FolderError(str(e)) from None
        for (axis, z), ks in by_slice.items():
            res = segment_slice(
                ims[axis],
                z,
                [objects[k]["points"] for k in ks],
                [objects[k]["corrections"] for k in ks],
                [k + 1 for k in ks],
            )
            for k, r in zip(ks, res.objects, strict=True):
                mask, outline = painted(r, edits[k].get(z))
                masks[k], lines[k] = {z: mask}, {z: outline}
        for k, o in enumerate(objects):
            if o["propagate"]:
                _, by_z = propagated(ims[o["axis"]], o, k + 1, edits[k])
                masks[k] = {z: mask for z, (mask, _) in by_z.items()}
                lines[k] = {z: outlines.mask_outline(m) for z, m in masks[k].items()}
        extra = {
            "checkpoint": {"workdir": seg.workdir, "step": seg.step},
            "threshold": seg.threshold,
            "outlines": [
                {
                    "object": k + 1,
                    "label": o["label"],
                    "axis": o["axis"],
                    "slice": z,
                    "lines": outlines.as_lists(lines[k][z]),
                }
                for k, o in enumerate(objects)
                for z in sorted(lines[k])
            ],
        }
        return folder.save(body.id, body.revision, objects, masks, extra)

    @app.post("/api/upload")
    async def upload(file: Annotated[UploadFile, File()]):
        data = await file.read(max_upload_bytes + 1)
        return {"id": folder.add_upload(file.filename or "", data, max_upload_bytes)}

    return app
