"""Corrective clicks: maps, the simulated user (against scipy's exact distance
transform), iterative training, the Segmenter's corrections and the warm start."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from tiny_models import RES, tiny_config

from dlset_jax import checkpoint, corrections, inference, models, train_lib
from dlset_jax import config as config_lib
from dlset_jax import segmenter as seglib

CLICKS = {"clicks.enabled": True, "model.in_channels": 6}


def blobs(rng, shape, p=0.55):
    return ndimage.binary_opening(rng.random(shape) < p)


# ----------------------------------------------------------------- the simulator


@pytest.mark.parametrize("shape", [(9, 9), (23, 31), (32, 32)])
def test_squared_depth_is_scipys_exact_edt(rng, shape):
    for _ in range(5):
        region = blobs(rng, shape)
        padded = np.pad(region, 1)  # the frame beyond the image counts as outside
        want = ndimage.distance_transform_edt(padded)[1:-1, 1:-1] ** 2
        got = np.asarray(corrections.squared_depth(region))
        np.testing.assert_allclose(got, want, atol=1e-3)
    batch = np.stack([blobs(rng, shape) for _ in range(3)])
    np.testing.assert_array_equal(
        np.asarray(corrections.squared_depth(batch))[1],
        np.asarray(corrections.squared_depth(batch[1])),
    )


def test_next_click_lands_in_the_error_it_corrects(rng):
    for _ in range(30):
        gt, pred = blobs(rng, (32, 32)), blobs(rng, (32, 32))
        x, y, sign = np.asarray(corrections.next_click(pred, gt))
        np.testing.assert_array_equal([x, y, sign], corrections.next_click_host(pred, gt))
        xi, yi = int(x), int(y)
        assert sign in (1.0, -1.0)
        if sign > 0:  # positive: a missed object pixel
            assert gt[yi, xi] and not pred[yi, xi]
        else:  # negative: a leaked background pixel
            assert pred[yi, xi] and not gt[yi, xi]


def test_next_click_goes_to_the_centre_of_the_deeper_error():
    gt = np.zeros((40, 40), bool)
    gt[5:16, 5:16] = True  # an 11 x 11 square missed entirely: centre (10, 10), depth 6
    pred = np.zeros_like(gt)
    pred[30:35, 30:35] = True  # a 5 x 5 leak: depth 3
    np.testing.assert_array_equal(np.asarray(corrections.next_click(pred, gt)), [10, 10, 1])
    # roles swapped: the square is now leaked background, deeper than the missed 5 x 5
    np.testing.assert_array_equal(np.asarray(corrections.next_click(gt, pred)), [10, 10, -1])
    both = gt | pred
    np.testing.assert_array_equal(np.asarray(corrections.next_click(gt, both)), [32, 32, 1])
    np.testing.assert_array_equal(np.asarray(corrections.next_click(gt, gt)), [0, 0, 0])


def test_add_click_fills_the_first_empty_slot_and_no_more():
    c = corrections.empty_clicks((2,), 2)
    c = corrections.add_click(c, jnp.array([[1.0, 2.0, 1.0], [3.0, 4.0, 0.0]]))
    np.testing.assert_array_equal(c[0], [[1, 2, 1], [0, 0, 0]])
    np.testing.assert_array_equal(c[1], np.zeros((2, 3)))  # sign 0: nothing to add
    c = corrections.add_click(c, jnp.array([[5.0, 6.0, -1.0], [7.0, 8.0, -1.0]]))
    c = corrections.add_click(c, jnp.array([[9.0, 9.0, 1.0], [1.0, 1.0, 1.0]]))
    np.testing.assert_array_equal(c[0], [[1, 2, 1], [5, 6, -1]])  # full: unchanged
    np.testing.assert_array_equal(c[1], [[7, 8, -1], [1, 1, 1]])


def test_click_maps_are_gaussians_of_their_sign():
    sigma = 6.0
    c = jnp.array([[[10.0, 12.0, 1.0], [20.0, 5.0, -1.0], [0.0, 0.0, 0.0]]])
    m = np.asarray(corrections.click_maps(c, 24, 32, sigma))
    assert m.shape == (1, 24, 32, 2)
    assert m[0, 12, 10, 0] == pytest.approx(1.0) and m[0, 5, 20, 1] == pytest.approx(1.0)
    assert m[0, 12, 13, 0] == pytest.approx(0.5)  # half maximum at FWHM / 2
    assert m[0, 12, 10, 1] < 1e-3 and m[0, 5, 20, 0] < 1e-3  # each sign its own map
    assert m[0, 0, 0, 0] < 1e-3  # the empty slot at (0, 0) draws nothing
    assert not np.asarray(corrections.click_maps(jnp.zeros((4, 3)), 8, 8, sigma)).any()


# ----------------------------------------------------------------- training


def honour_reference(phi, clicks, width, margin, threshold):
    """`honour_clicks` of one crop in numpy: scipy's bilinear sample, bumps in order."""
    out = np.array(phi, np.float64)
    yy, xx = np.mgrid[: phi.shape[0], : phi.shape[1]]
    for x, y, s in clicks:
        if s == 0:
            continue
        at = ndimage.map_coordinates(out, [[y], [x]], order=1, mode="nearest")[0]
        need = max(s * (at - threshold) + margin, 0.0)
        out -= s * need * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * width**2))
    return out


def test_honour_clicks_is_the_sequential_bump_of_the_reference(rng):
    yy, xx = np.mgrid[:24, :30]
    phi = np.hypot(yy - 11.0, xx - 14.0) - 7.0  # a disc of radius 7 px
    phi = np.stack([phi, phi + rng.normal(0, 0.5, phi.shape)])[..., None].astype(np.float32)
    clicks = np.array(
        [
            [[22.5, 11.2, 1], [14.0, 11.0, -1], [3.0, 3.0, 0], [20.0, 12.0, 1]],
            [[0.0, 0.0, -1], [29.0, 23.0, 1], [14.0, 11.0, 1], [0, 0, 0]],
        ],
        np.float32,
    )
    for width, margin, threshold in [(3.0, 1.0, 0.0), (6.0, 3.0, 2.5)]:
        got = corrections.honour_clicks(
            phi, clicks, width=width, margin=margin, threshold=threshold
        )
        assert got.shape == phi.shape
        for b in range(2):
            want = honour_reference(phi[b, ..., 0], clicks[b], width, margin, threshold)
            np.testing.assert_allclose(got[b, ..., 0], want, atol=1e-4)


def test_honoured_clicks_land_on_their_side_and_others_change_nothing():
    yy, xx = np.mgrid[:32, :32]
    phi = (np.hypot(yy - 16.0, xx - 16.0) - 8.0)[None, ..., None].astype(np.float32)
    # positive 3 px outside the disc, negative at its centre, far apart
    clicks = np.array([[[27.0, 16.0, 1], [16.0, 16.0, -1]]], np.float32)
    got = np.asarray(corrections.honour_clicks(phi, clicks, width=2.0, margin=1.0, threshold=0.0))
    assert got[0, 16, 27, 0] <= -1.0 + 1e-3 and got[0, 16, 16, 0] >= 1.0 - 1e-3
    # the contour moved outwards around the positive click: the mask grew there only
    grown = (got[0, ..., 0] <= 0) & ~(phi[0, ..., 0] <= 0)
    assert grown[16, 25:28].all() and not grown[:, :20].any()
    # clicks already inside (positive) or outside (negative) by the margin, and empty
    # slots, leave the level set as it is
    fine = np.array([[[16.0, 16.0, 1], [2.0, 2.0, -1], [5.0, 5.0, 0]]], np.float32)
    same = corrections.honour_clicks(phi, fine, width=4.0, margin=2.0, threshold=0.0)
    np.testing.assert_allclose(same, phi, atol=1e-6)
    with pytest.raises(ValueError, match="width must be > 0"):
        corrections.honour_clicks(phi, fine, width=0.0, margin=1.0, threshold=0.0)


def test_gradients_flow_through_honoured_clicks():
    yy, xx = np.mgrid[:16, :16]
    phi = jnp.asarray((np.hypot(yy - 8.0, xx - 8.0) - 4.0)[None, ..., None], jnp.float32)
    clicks = jnp.array([[[13.0, 8.0, 1]]])
    f = lambda p: jnp.sum(
        corrections.honour_clicks(p, clicks, width=2.0, margin=1.0, threshold=0.0) ** 2
    )
    g = jax.grad(f)(phi)
    eps = 1e-2
    d = jnp.zeros_like(phi).at[0, 8, 12, 0].set(eps)
    numeric = (f(phi + d) - f(phi - d)) / (2 * eps)
    np.testing.assert_allclose(g[0, 8, 12, 0], numeric, rtol=2e-2)


def test_inference_honours_the_extreme_points_first_then_the_clicks(rng):
    """`inference.honour_clicks`: the four points as positive clicks (their own width and
    margin, with or without click channels), then the corrective clicks; the reference
    is the numpy bump sequence."""
    yy, xx = np.mgrid[:24, :24]
    phi = np.hypot(yy - 12.0, xx - 12.0) - 6.0  # a disc of radius 6 px, centre (12, 12)
    phi = np.stack([phi, phi + rng.normal(0, 0.3, phi.shape)])[..., None].astype(np.float32)
    # left, right, top, bottom; some 2-3 px outside the disc, one inside
    points = np.array([[[4.0, 12.0], [21.0, 12.5], [12.0, 3.0], [12.0, 16.0]]] * 2, np.float32)
    clicks = np.array([[[12.0, 12.0, -1], [0, 0, 0]], [[2.0, 2.0, 1], [0, 0, 0]]], np.float32)
    threshold = 0.5
    off = tiny_config(**CLICKS, **{"clicks.honour_width": 3.0})
    assert off.clicks.points_width == 0.0  # the schema's default: the points as they are
    np.testing.assert_allclose(
        inference.honour_clicks(phi, clicks, off, threshold, points),
        corrections.honour_clicks(phi, clicks, width=3.0, margin=3.0, threshold=threshold),
    )
    on = tiny_config(**CLICKS, **{"clicks.honour_width": 3.0, "clicks.points_width": 4.0})
    got = np.asarray(inference.honour_clicks(phi, clicks, on, threshold, points))
    only_points = tiny_config(**{"clicks.points_width": 4.0, "clicks.points_margin": 1.0})
    alone = np.asarray(inference.honour_clicks(phi, None, only_points, threshold, points))
    for b in range(2):
        pos = np.concatenate([points[b], np.ones((4, 1), np.float32)], axis=1)
        want = honour_reference(phi[b, ..., 0], pos, 4.0, 0.5, threshold)
        want = honour_reference(want, clicks[b], 3.0, 3.0, threshold)
        np.testing.assert_allclose(got[b, ..., 0], want, atol=1e-4)
        # positive bumps only lower the level set: every point ends inside by its margin
        # (less the bump's bilinear sag between pixel centres, for a point off the grid)
        at = ndimage.map_coordinates(alone[b, ..., 0], points[b].T[::-1], order=1)
        assert (at <= threshold - 0.95).all(), at
    # without points (the training loss) nothing happens to them
    np.testing.assert_allclose(inference.honour_clicks(phi, None, only_points), phi)


def test_config_needs_click_channels():
    c = tiny_config(**{"clicks.enabled": True})
    with pytest.raises(config_lib.ConfigError, match="in_channels must be 6"):
        config_lib.validate(c)
    config_lib.validate(tiny_config(**CLICKS))
    with pytest.raises(config_lib.ConfigError, match="honour_width must be >= 0"):
        config_lib.validate(tiny_config(**CLICKS, **{"clicks.honour_width": -1.0}))
    for field in ("points_width", "points_margin"):
        with pytest.raises(config_lib.ConfigError, match=f"clicks.{field} must be >= 0"):
            config_lib.validate(tiny_config(**{f"clicks.{field}": -1.0}))


@pytest.fixture(scope="module")
def click_model():
    config = tiny_config(**CLICKS, **{"clicks.train_prob": 1.0, "clicks.train_rounds": 3})
    model = models.create_model(config.model)
    variables = jax.tree.map(np.asarray, model.init_variables(jax.random.key(1), RES))
    return config, model, variables


def ellipse_batch(n=2):
    yy, xx = np.mgrid[:RES, :RES]
    mask = (((yy - 16) / 10) ** 2 + ((xx - 15) / 7) ** 2 <= 1).astype(np.float32)
    rng = np.random.default_rng(0)
    return {
        "image": jnp.asarray(rng.random((n, RES, RES, 3)), jnp.float32),
        "points": jnp.tile(jnp.array([[8.0, 16], [22, 16], [15, 6], [15, 26]]), (n, 1, 1)),
        "mask": jnp.tile(jnp.asarray(mask)[None, ..., None], (n, 1, 1, 1)),
        "sdt": jnp.zeros((n, RES, RES, 1)),
        "direction": jnp.zeros((n, RES, RES, 2)),
    }


def test_simulated_corrections_follow_the_models_own_errors(click_model):
    config, model, variables = click_model
    batch = ellipse_batch()
    simulate = jax.jit(
        functools.partial(train_lib.simulate_corrections, model=model, config=config)
    )
    predict = jax.jit(functools.partial(inference.predict_crops, model=model, config=config))
    clicks = np.asarray(simulate(variables, batch, jax.random.key(3)))
    n = (clicks[..., 2] != 0).sum(-1)
    assert 1 <= n[0] <= 3 and n[0] == n[1]  # 1..train_rounds rounds, per batch
    gt = np.asarray(batch["mask"][..., 0]) > 0.5
    # replay: each click is the host simulator's choice after the clicks before it
    for k in range(n[0]):
        before = clicks[:, :, :].copy()
        before[:, k:] = 0
        out = predict(variables, batch["image"], batch["points"], before)
        pred = np.asarray(out["phi_t"][..., 0]) <= config.levelset.threshold
        for b in range(2):
            np.testing.assert_array_equal(clicks[b, k], corrections.next_click_host(pred[b], gt[b]))


def test_train_step_with_corrections_learns(click_model):
    config, model, variables = click_model
    sched = train_lib.learning_rate_schedule(config.optim, 10, 100)
    tx = train_lib.make_optimizer(config, variables["params"], sched)
    state = train_lib.create_train_state(config, model, tx, 0)
    step = jax.jit(
        functools.partial(
            train_lib.train_step, model=model, tx=tx, config=config, warmup_steps=0, schedule=sched
        )
    )
    batch = ellipse_batch()
    losses = []
    for _ in range(8):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
        assert 1 <= float(m["corrective_clicks"]) <= 3
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


# ----------------------------------------------------------------- warm start


def test_warm_start_widens_the_input_and_keeps_the_four_click_model(random_model, tmp_path):
    wd, config4, variables4 = random_model
    config6 = tiny_config(**CLICKS)
    model6 = models.create_model(config6.model)
    fresh = jax.tree.map(np.asarray, model6.init_variables(jax.random.key(5), RES))
    warm = checkpoint.warm_start(str(wd), fresh)
    k4 = variables4["params"]["backbone"]["conv1"]["kernel"]
    k6 = warm["params"]["backbone"]["conv1"]["kernel"]
    np.testing.assert_array_equal(k6[:, :, :4], k4)
    assert not np.any(k6[:, :, 4:])
    batch = ellipse_batch()
    model4 = models.create_model(config4.model)
    out4 = inference.predict_crops(
        variables4, batch["image"], batch["points"], model=model4, config=config4
    )
    out6 = inference.predict_crops(
        warm, batch["image"], batch["points"], model=model6, config=config6
    )
    # the same function: zero weights add only float32 rounding (the sums run in
    # another order), far below what any trained weight on the new channels changes
    for key in ("phi0", "motion", "phi_t"):
        scale = float(np.abs(out4[key]).max())
        np.testing.assert_allclose(out6[key], out4[key], atol=2e-3 * scale, err_msg=key)

    wider = tiny_config(**{"model.width": 8})
    fresh = jax.eval_shape(
        lambda: models.create_model(wider.model).init_variables(jax.random.key(0), RES)
    )
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), fresh)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="only the input convolution"):
        checkpoint.warm_start(str(wd), fresh)
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        checkpoint.warm_start(str(tmp_path / "nothing"), fresh)


# ----------------------------------------------------------------- the Segmenter


@pytest.fixture(scope="module")
def click_segmenter(click_model):
    config, _, variables = click_model
    return seglib.Segmenter(config, variables, bucket_size=2)


IMAGE = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
POINTS = [[10, 30], [50, 30], [30, 10], [30, 50]]


def test_corrections_change_the_mask_in_one_program(click_segmenter):
    seg = click_segmenter
    assert seg.takes_corrections and seg.max_corrections == 24
    plain = seg.segment(IMAGE, [POINTS]).objects[0]
    traces = seg.trace_count
    ann = seglib.Annotation(POINTS).add(30, 30)
    once = seg.refine(IMAGE, ann)
    twice = seg.refine(IMAGE, ann.add(20, 20, positive=False))
    assert seg.trace_count == traces  # same compiled program with 0, 1 and 2 clicks
    assert not np.array_equal(once.phi_window, plain.phi_window)
    assert not np.array_equal(twice.phi_window, once.phi_window)
    assert twice.summary()["corrections"] == [
        {"x": 30.0, "y": 30.0, "kind": "positive"},
        {"x": 20.0, "y": 20.0, "kind": "negative"},
    ]
    np.testing.assert_array_equal(seg.refine(IMAGE, ann.undo()).phi_window, once.phi_window)
    # a positive click on a pixel the mask already covers is fine
    inside = np.argwhere(once.mask)[0]
    seg.refine(IMAGE, seglib.Annotation(POINTS).add(inside[1], inside[0]))


def test_a_segmenter_that_honours_clicks_flips_the_clicked_pixels(click_model):
    config, _, variables = click_model
    config = config.copy_and_resolve_references()
    config.clicks.honour_width = 3.0
    seg = seglib.Segmenter(config, variables, bucket_size=2, threshold=0.5)
    plain = seg.segment(IMAGE, [POINTS]).objects[0].mask
    y0, x0, y1, x1 = seg.segment(IMAGE, [POINTS]).objects[0].window
    box = np.zeros_like(plain)
    box[y0:y1, x0:x1] = True
    out_y, out_x = np.argwhere(box & ~plain)[len(np.argwhere(box & ~plain)) // 2]
    ann = seglib.Annotation(POINTS).add(out_x, out_y)
    first = seg.refine(IMAGE, ann).mask
    assert first[out_y, out_x]
    in_y, in_x = np.argwhere(first)[len(np.argwhere(first)) // 2]
    second = seg.refine(IMAGE, ann.add(in_x, in_y, positive=False)).mask
    assert not second[in_y, in_x]


def test_bad_corrections_get_one_clear_error(click_segmenter):
    seg = click_segmenter
    with pytest.raises(
        ValueError, match=r"corrective click 1 \(x=70, y=3\) lies outside the image"
    ):
        seg.segment(IMAGE, [POINTS], corrections=[[[70, 3, 1]]])
    with pytest.raises(ValueError, match="has sign 2"):
        seg.segment(IMAGE, [POINTS], corrections=[[[30, 30, 2]]])
    with pytest.raises(ValueError, match=r"shape \(K, 3\)"):
        seg.segment(IMAGE, [POINTS], corrections=[[[30, 30]]])
    with pytest.raises(ValueError, match="at most 24"):
        seg.segment(IMAGE, [POINTS], corrections=[[[30, 30, 1]] * 25])
    with pytest.raises(ValueError, match="for 2 objects, 1 objects"):
        seg.segment(IMAGE, [POINTS], corrections=[None, None])
    small = [[20, 30], [30, 30], [25, 25], [25, 35]]
    with pytest.raises(ValueError, match="outside the object's crop box"):
        seg.segment(IMAGE, [small], corrections=[[[60, 60, 1]]])
    out = seg.segment(IMAGE, [small], corrections=[[[60, 60, -1]]]).objects[0]
    assert any("no effect" in w for w in out.warnings)
    with pytest.raises(ValueError, match="no corrective click to undo"):
        seglib.Annotation(POINTS).undo()


def test_errors_name_objects_by_the_callers_ids(click_segmenter):
    # a caller that segments some of its objects per call (one slice of a volume, one
    # object of the annotation tool) names them by its own numbers
    seg = click_segmenter
    small = [[20, 30], [30, 30], [25, 25], [25, 35]]
    with pytest.raises(ValueError, match=r"^object 7: positive click 1 .* crop box"):
        seg.segment(IMAGE, [POINTS, small], corrections=[None, [[60, 60, 1]]], object_ids=[3, 7])
    with pytest.raises(ValueError, match=r"^object 3: corrective click 1 \(x=70"):
        seg.segment(IMAGE, [POINTS, small], corrections=[[[70, 3, 1]], None], object_ids=[3, 7])
    with pytest.raises(ValueError, match=r"^object 7: 25 corrective clicks"):
        seg.segment(
            IMAGE, [POINTS, small], corrections=[None, [[30, 30, 1]] * 25], object_ids=[3, 7]
        )
    swapped = [small[1], small[0], small[2], small[3]]
    with pytest.raises(ValueError, match=r"^object 7: point 0 \(left\)"):
        seg.segment(IMAGE, [POINTS, swapped], object_ids=[3, 7])
    with pytest.raises(ValueError, match="1 object ids for 2 objects"):
        seg.segment(IMAGE, [POINTS, small], object_ids=[3])


def test_a_model_without_click_channels_refuses_corrections(random_model):
    _, config, variables = random_model
    seg = seglib.Segmenter(config, variables, bucket_size=1)
    assert not seg.takes_corrections and seg.max_corrections == 0
    seg.segment(IMAGE, [POINTS], corrections=[None])  # no clicks: fine
    with pytest.raises(ValueError, match="takes no corrective clicks"):
        seg.refine(IMAGE, seglib.Annotation(POINTS).add(30, 30))
    with pytest.raises(ValueError, match="^object 5: this model takes no corrective clicks"):
        seg.segment(IMAGE, [POINTS, POINTS], corrections=[None, [[30, 30, 1]]], object_ids=[2, 5])
    with pytest.raises(ValueError, match="^object 2: this model takes no corrective clicks"):
        seg.check_accepts([[], [[30, 30, 1]]])  # the check callers run before any compute
