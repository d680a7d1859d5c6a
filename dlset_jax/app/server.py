"""The annotation tool's HTTP API (FastAPI) over one `Segmenter` and one `ImageFolder`.

Endpoints (JSON unless said; every error is `{"error": message}` with its status):
  GET  /                     the page (static/index.html; its script and style under /static)
  GET  /api/info             the model (checkpoint, step, threshold, image kinds,
                             whether it takes corrective clicks) and the limits
  GET  /api/images           the images, volumes and DICOM files of the folder
  GET  /api/image?id=        one image: size, slices, spacing, intensity mapping and
                             its saved annotation (or null)
  GET  /api/slice?id=&z=&lo=&hi=   one slice as PNG, window [lo, hi] of the 0..255
                             values the model is given (default 0, 255)
  POST /api/segment          {"id", "slice", "points": [[x, y] x 4], "corrections":
                             [[x, y, sign]]} (left, right, top, bottom; pixel centres at
                             integers; corrective clicks +1 / -1 for a model that takes
                             them) -> the zero contour (polylines in image pixels),
                             area, warnings, milliseconds
  POST /api/save             {"id", "revision", "objects": [{"label", "color", "slice",
                             "points", "corrections"}]} -> every object segmented again
                             from its clicks and written with its label map
                             (`ImageFolder.save`)
  POST /api/upload           multipart `file` -> stored as uploads/NAME (never over a file)

Statuses: 400 bad input (clicks, JSON, slice), 403 a path outside the folder or a
hidden file, 404 unknown image, 409 a save that another tab's save overtook or an
upload name taken, 413 an image or upload over the limits, 422 a file that cannot be
read, 500 a model error (the message is shown in the page; the server keeps running).
"""

import io
import os
import threading
import time

import numpy as np

from dlset_jax import segmenter as seglib
from dlset_jax.app.folder import FolderError, ImageFolder

STATIC = os.path.join(os.path.dirname(__file__), "static")
MAX_JSON_BYTES = 1 << 20
MAX_OBJECTS = 256
MAX_CORRECTIONS = 64  # per object in a request; the model's own limit is checked after


def _contours(phi_window: np.ndarray, window, threshold: float) -> list[list[list[float]]]:
    """The `phi = threshold` polylines of one object, closed, in image (x, y) pixels."""
    import contourpy

    # A margin of "outside" around the window closes contours that reach its edge.
    z = np.pad(np.asarray(phi_window, np.float64), 1, constant_values=threshold + 1e3)
    lines = contourpy.contour_generator(z=z).lines(threshold)
    y0, x0 = window[0] - 1, window[1] - 1
    return [[[float(x + x0), float(y + y0)] for x, y in line] for line in lines if len(line) > 2]


def create_app(seg: seglib.Segmenter, folder: ImageFolder, *, max_upload_bytes: int):
    """The FastAPI application (run it with uvicorn; `__main__` does)."""
    from typing import Annotated

    from fastapi import FastAPI, File, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, Field

    class SegmentIn(BaseModel):
        id: str
        slice: int = 0
        points: list[list[float]]
        corrections: list[list[float]] = Field(default=[], max_length=MAX_CORRECTIONS)

    class ObjectIn(BaseModel):
        label: str = Field(min_length=1, max_length=64)
        color: str = Field(pattern=r"^#[0-9a-fA-F]{6}$")
        slice: int = 0
        points: list[list[float]]
        corrections: list[list[float]] = Field(default=[], max_length=MAX_CORRECTIONS)

    class SaveIn(BaseModel):
        id: str
        revision: int = Field(ge=0)
        objects: list[ObjectIn] = Field(max_length=MAX_OBJECTS)

    app = FastAPI(title="dlset_jax annotation", docs_url=None, redoc_url=None)
    model_lock = threading.Lock()  # one model: requests take turns on the CPU

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
    def image(id: str):
        im = folder.load(id)
        return {
            "id": id,
            "kind": im.kind,
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
        lo: Annotated[float, Query(ge=0, le=255)] = 0.0,
        hi: Annotated[float, Query(ge=0, le=255)] = 255.0,
    ):
        if hi <= lo:
            raise FolderError(f"window: hi ({hi:g}) must be above lo ({lo:g})")
        from PIL import Image

        f = folder.load(id).frame(z).astype(np.float32)
        shown = np.clip(np.round((f - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(shown).save(buf, format="PNG", compress_level=1)
        return Response(buf.getvalue(), media_type="image/png")

    def segment_slice(im, z, points_list, corrections_list, ids):
        frame = im.frame(z)
        checked = []
        for k, p in zip(ids, points_list, strict=True):
            # clicked in any order: named by position, or taken as given (left, right,
            # top, bottom) where two points tie for an extreme
            try:
                checked.append(seglib.check_points(p, frame.shape[:2], obj=k, reorder=True)[0])
            except ValueError as e:
                try:
                    checked.append(seglib.check_points(p, frame.shape[:2], obj=k)[0])
                except ValueError:
                    raise FolderError(str(e)) from None
        with model_lock:
            try:  # corrective clicks (and the model's refusal of them), the image contract
                return seg.segment(
                    frame,
                    checked,
                    spacing=im.spacing,
                    corrections=corrections_list,
                    object_ids=ids,
                )
            except ValueError as e:
                raise FolderError(str(e)) from None

    @app.post("/api/segment")
    def segment(body: SegmentIn):
        t0 = time.perf_counter()
        im = folder.load(body.id)
        out = segment_slice(im, body.slice, [body.points], [body.corrections], [1]).objects[0]
        return {
            "contours": _contours(out.phi_window, out.window, out.threshold),
            "area_px": out.area_px,
            "warnings": out.warnings,
            "ms": 1e3 * (time.perf_counter() - t0),
        }

    @app.post("/api/save")
    def save(body: SaveIn):
        im = folder.load(body.id)
        objects = [o.model_dump() for o in body.objects]
        masks = [None] * len(objects)
        by_slice: dict[int, list[int]] = {}
        for k, o in enumerate(objects):
            if not 0 <= o["slice"] < im.n_slices:
                raise FolderError(
                    f"object {k + 1}: slice {o['slice']} out of range (0..{im.n_slices - 1})"
                )
            by_slice.setdefault(o["slice"], []).append(k)
        for z, ks in by_slice.items():
            res = segment_slice(
                im,
                z,
                [objects[k]["points"] for k in ks],
                [objects[k]["corrections"] for k in ks],
                [k + 1 for k in ks],
            )
            for k, r in zip(ks, res.objects, strict=True):
                masks[k] = r.mask
        extra = {
            "checkpoint": {"workdir": seg.workdir, "step": seg.step},
            "threshold": seg.threshold,
        }
        return folder.save(body.id, body.revision, objects, masks, extra)

    @app.post("/api/upload")
    async def upload(file: Annotated[UploadFile, File()]):
        data = await file.read(max_upload_bytes + 1)
        return {"id": folder.add_upload(file.filename or "", data, max_upload_bytes)}

    return app
