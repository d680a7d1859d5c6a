"""Latency of the annotation tool: one click-to-contour request, and a bounded load test.

    python benchmarks/app_latency.py --workdir workdirs/default [--requests 50] [--clients 4]

Starts the tool's server (`dlset_jax.app`) on a free 127.0.0.1 port in this process
with the workdir's model and a generated 512 x 512 image of ellipses, then over real
HTTP (localhost only):
  1. sequential: `--requests` /api/segment calls, each four new clicks on one object
     (what the page sends after the fourth click): p50 / p95 / max in ms, the server's
     own time for the same calls, and the first call apart (the model is loaded as the
     tool loads it, `server.load_segmenter`: compiled before the first click);
  2. load: `--clients` threads x `--requests` calls at once: p50 / p95, requests per
     second and the number of errors (must be 0);
  3. 3-D: `--volume_requests` calls that follow an ellipsoid through a generated
     256 x 256 x 48 NIfTI volume from four clicks on its middle slice (what the page's
     3-D button sends): the slices reached, p50 / p95 per request and per slice;
  4. clicks during 3-D: `--requests` 2-D calls (as in 1) while another client keeps
     asking for the 3-D walk of 3: how long a click waits behind someone's 3-D request.
Without `--workdir`, a randomly initialised CPU-default model (the same network and
evolution: the latency does not depend on the weights).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import tempfile
import threading
import time
import urllib.request

import numpy as np


def percentiles(ms) -> str:
    a = np.asarray(ms)
    return f"p50 {np.percentile(a, 50):.0f} ms, p95 {np.percentile(a, 95):.0f} ms, max {a.max():.0f} ms"


def make_image(root: str, rng) -> list[list[list[float]]]:
    """A 512 x 512 grey image with 12 ellipses; returns their exact extreme points."""
    from PIL import Image

    from dlset_jax import targets

    h = w = 512
    yy, xx = np.mgrid[:h, :w]
    img = rng.normal(60, 10, (h, w))
    clicks = []
    for cy in (80, 256, 430):
        for cx in (70, 200, 320, 440):
            a, b = rng.uniform(15, 40, 2)
            m = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1
            img[m] += 110
            clicks.append(targets.extreme_points(m).tolist())
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(root, "bench.png"))
    return clicks


def make_volume(root: str, rng) -> tuple[int, list[list[float]]]:
    """A 256 x 256 x 48 NIfTI volume holding a noisy bright ellipsoid over about 36
    slices; returns its middle slice (as the tool numbers them) and that slice's exact
    extreme points in the tool's view (`np.rot90` of each NIfTI slice)."""
    import nibabel as nib

    from dlset_jax import targets

    z, y, x = np.mgrid[:48, :256, :256]
    ball = ((z - 24) / 18) ** 2 + ((y - 120) / 40) ** 2 + ((x - 140) / 28) ** 2 <= 1
    vol = rng.normal(60, 10, ball.shape) + 110 * ball
    # stored (x, y, z): the tool shows np.rot90 of vol[..., k]
    stored = np.stack([np.rot90(vol[k], -1) for k in range(48)], axis=2).astype(np.int16)
    nib.save(nib.Nifti1Image(stored, np.eye(4)), os.path.join(root, "bench.nii"))
    return 24, targets.extreme_points(ball[24]).tolist()


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=None)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--volume_requests", type=int, default=5)
    a = p.parse_args(argv)

    import jax
    import uvicorn

    from dlset_jax import config as config_lib
    from dlset_jax import models, segmenter
    from dlset_jax.app import folder, server

    if a.workdir:
        t0 = time.perf_counter()
        seg = server.load_segmenter(a.workdir)  # as the tool loads it
        what = f"{a.workdir} (step {seg.step}; loaded and compiled in {time.perf_counter() - t0:.1f} s)"
    else:
        c = config_lib.cpu_sized(config_lib.base_config())
        model = models.create_model(c.model)
        v = model.init_variables(jax.random.key(0), c.data.resolution)
        seg = server.warm_up(segmenter.Segmenter(c, v, check=False))
        what = "randomly initialised CPU-default model"
    root = tempfile.mkdtemp(prefix="dlset_app_bench_")
    clicks = make_image(root, np.random.default_rng(0))
    mid, vol_clicks = make_volume(root, np.random.default_rng(1))
    app = server.create_app(seg, folder.ImageFolder(root, max_pixels=10**7), max_upload_bytes=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/api/segment"
    print(f"model: {what}; {os.cpu_count()} CPUs; jax {jax.__version__} on {jax.default_backend()}")

    def call(k: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        out = post(url, {"id": "bench.png", "slice": 0, "points": clicks[k % len(clicks)]})
        return 1e3 * (time.perf_counter() - t0), out["ms"]

    first, _ = call(0)
    print(f"first request: {first:.0f} ms")
    seq = [call(k) for k in range(a.requests)]
    print(
        f"sequential, {a.requests} requests: {percentiles([s[0] for s in seq])} "
        f"(server side {percentiles([s[1] for s in seq])})"
    )

    errors = []

    def client(i: int) -> list[float]:
        out = []
        for k in range(a.requests):
            try:
                out.append(call(i * a.requests + k)[0])
            except Exception as e:  # counted, not raised: the figure is the error count
                errors.append(repr(e))
        return out

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(a.clients) as pool:
        lat = [ms for got in pool.map(client, range(a.clients)) for ms in got]
    wall = time.perf_counter() - t0
    n = a.clients * a.requests
    print(
        f"load, {a.clients} clients x {a.requests} requests: {percentiles(lat)}, "
        f"{n / wall:.1f} requests/s, errors {len(errors)}"
        + (f" (first: {errors[0]})" if errors else "")
    )

    body = {"id": "bench.nii", "slice": mid, "points": vol_clicks, "propagate": True}
    post(url, body)  # compiles nothing new; reads the volume once
    t3d, n = [], 0
    for _ in range(a.volume_requests):
        t0 = time.perf_counter()
        n = len(post(url, body)["slices"])
        t3d.append(1e3 * (time.perf_counter() - t0))
    print(
        f"3-D, {a.volume_requests} requests of {n} slices each: {percentiles(t3d)} per "
        f"request, {np.median(t3d) / n:.0f} ms per slice (median)"
    )

    walking = threading.Event()
    stop = threading.Event()

    def walker() -> int:
        walks = 0
        while not stop.is_set():
            walking.set()
            post(url, body)
            walks += 1
        return walks

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        walks = pool.submit(walker)
        walking.wait()
        during = [call(k)[0] for k in range(a.requests)]
        stop.set()
        print(
            f"clicks during 3-D walks, {a.requests} requests: {percentiles(during)} "
            f"({walks.result()} walks of {n} slices meanwhile)"
        )
    srv.should_exit = True


if __name__ == "__main__":
    main()
