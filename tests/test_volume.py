"""3-D propagation (`dlset_jax.volume`) and the interactive benchmark's bookkeeping.

The propagation's mechanics are checked with an oracle in place of the network (it
"segments" the bright object inside the crop box of the points, and obeys corrective
clicks), so that every slice's expected answer is known; the tiny models check that
the real Segmenter runs through the same code.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dlset_jax import interactive_benchmark as ib
from dlset_jax import segmenter as seglib
from dlset_jax import targets, volume


def ball_volume(n=21, size=48, radius=7.0, centre=10):
    z, y, x = np.mgrid[:n, :size, :size]
    ball = (z - centre) ** 2 + (y - 24) ** 2 + (x - 22) ** 2 <= radius**2
    return (ball * 200 + 20).astype(np.uint8), ball


@dataclasses.dataclass
class _Obj:
    mask: np.ndarray
    points: np.ndarray
    corrections: np.ndarray
    warnings: list
    window: tuple

    @property
    def area_px(self):
        return int(self.mask.sum())


class Oracle:
    """Segments the bright connected part of the image inside the points' box (+2 px);
    a negative click removes a 3x3 square, a positive one adds it."""

    takes_corrections = True

    def __init__(self):
        self.calls = []
        self.honoured = []  # per call: whether the points were to be honoured

    def segment(
        self,
        image,
        points_list,
        spacing=None,
        classes=None,
        *,
        corrections=None,
        honour_points=True,
    ):
        pts, _ = seglib.check_points(points_list[0], image.shape)
        clicks = seglib.check_corrections((corrections or [None])[0], image.shape)
        self.calls.append((image, pts, clicks))
        self.honoured.append(honour_points)
        h, w = image.shape[:2]
        y0, y1 = max(int(pts[:, 1].min()) - 2, 0), min(int(pts[:, 1].max()) + 3, h)
        x0, x1 = max(int(pts[:, 0].min()) - 2, 0), min(int(pts[:, 0].max()) + 3, w)
        mask = np.zeros((h, w), bool)
        mask[y0:y1, x0:x1] = image[y0:y1, x0:x1] > 100
        for x, y, s in clicks:
            mask[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] = s > 0
        obj = _Obj(mask, pts, clicks, [], (y0, x0, y1, x1))
        return seglib.Segmentation([obj], (h, w), None, 0.0, "oracle", {}, {})

    def check_accepts(self, corrections, object_ids=None):
        pass  # the oracle obeys any number of clicks

    def refine(self, image, ann, spacing=None):
        return self.segment(image, [ann.points], spacing, corrections=[ann.corrections]).objects[0]


def start_points(ball, s):
    return targets.extreme_points(ball[s])


# the mechanics below are checked on the oracle's exact answers, kept as they are
EXACT = {"prior_weight": 0.0}


def test_propagation_stops_where_the_object_vanishes():
    vol, ball = ball_volume()
    res = volume.propagate(Oracle(), vol, 10, start_points(ball, 10), **EXACT)
    # the oracle is exact on every slice but the ball's poles, single pixels: there the
    # area collapses (1 px against the previous slice's 37), the object has ended
    want = ball.copy()
    want[[3, 17]] = False
    np.testing.assert_array_equal(res.labels, want)
    assert [f["slice"] for f in res.slices] == list(range(4, 17))
    assert res.slices[6]["source"] == "clicks" and res.slices[0]["source"] == "propagated"
    assert res.stops == {"below": "vanished at slice 3", "above": "vanished at slice 17"}


class Blob(Oracle):
    """A network that answers the same mask wherever it is clicked (as a real one answers
    a blob near its clicks past the end of a structure)."""

    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def segment(self, image, points_list, spacing=None, classes=None, **kwargs):
        out = super().segment(image, points_list, spacing, classes, **kwargs)
        out.objects[0].mask = self.mask.copy()
        return out


class Jumping(Oracle):
    """A network whose answer on the slices above the clicked one lies beside the last
    slice's answer (a small object whose answer jumps by more than its width)."""

    def segment(self, image, points_list, spacing=None, classes=None, **kwargs):
        out = super().segment(image, points_list, spacing, classes, **kwargs)
        if len(self.calls) > 1:  # 17 px to the right: past the ball's 15 px width
            mask = np.zeros_like(out.objects[0].mask)
            mask[:, 17:] = out.objects[0].mask[:, :-17]
            out.objects[0].mask = mask
        return out


@pytest.mark.parametrize("extent", [None, (3, 17)])
def test_an_answer_beside_the_last_slices_one_ends_the_walk(extent):
    """Fused with the last slice's mask, an answer that does not overlap it leaves
    nothing: the walk stops there (it crashed without a named end, and stored empty
    slices up to a named one)."""
    vol, ball = ball_volume()
    res = volume.propagate(Jumping(), vol, 10, start_points(ball, 10), extent=extent)
    assert [f["slice"] for f in res.slices] == [10]
    assert res.stops["above"] == "vanished at slice 11 (the answer does not overlap slice 10's)"
    assert res.stops["below"].startswith("vanished at slice 9 (the answer does not overlap")
    np.testing.assert_array_equal(res.labels[11:], False)


def test_without_a_named_end_propagation_stops_where_the_inside_looks_like_the_surroundings():
    vol, ball = ball_volume()  # ball 220, background 20, slices 3..17
    blob = ball[10]
    # the share of the blob the ball still fills on slice s is its appearance there:
    # (mean inside - 20) / (220 - 20)
    share = {s: (ball[s] & blob).sum() / blob.sum() for s in range(21)}
    floor = volume.APPEARANCE_FLOOR
    above = next(s for s in range(11, 21) if share[s] < floor)
    below = next(s for s in range(9, -1, -1) if share[s] < floor)
    assert 0 < below < 10 < above < 20  # the blob's area never falls: only this rule acts
    res = volume.propagate(Blob(blob), vol, 10, start_points(ball, 10))
    assert [f["slice"] for f in res.slices] == list(range(below + 1, above))
    assert res.stops["below"].startswith(f"vanished at slice {below} (its inside looks like")
    assert res.stops["above"].startswith(f"vanished at slice {above} (its inside")
    for s in range(below + 1, above):
        np.testing.assert_array_equal(res.labels[s], blob)
    assert not res.labels[: below + 1].any() and not res.labels[above:].any()
    # a named end is the user's word: that side runs to it; the rule switched off: the
    # blob runs to the volume's edge
    res = volume.propagate(Blob(blob), vol, 10, start_points(ball, 10), extent=(None, 18))
    assert res.stops["above"] == "extent" and res.labels[18].any() and not res.labels[19].any()
    assert res.stops["below"].startswith(f"vanished at slice {below}")
    res = volume.propagate(Blob(blob), vol, 10, start_points(ball, 10), appearance_floor=0.0)
    assert res.stops == {"below": "volume edge", "above": "volume edge"}
    with pytest.raises(ValueError, match=r"appearance_floor must be in \[0, 1\)"):
        volume.propagate(Blob(blob), vol, 10, start_points(ball, 10), appearance_floor=1.0)


def test_appearance_is_the_inside_between_the_reference_surroundings_and_inside():
    mask = np.zeros((20, 20), bool)
    mask[6:14, 6:14] = True
    img = np.where(mask, 100.0, 40.0)
    img[mask.nonzero()[0][:8], mask.nonzero()[1][:8]] = 180.0  # 8 of 64 pixels brighter
    inside, ring = volume.inside_and_ring(img, mask)
    assert inside == pytest.approx((56 * 100 + 8 * 180) / 64) and ring == 40.0
    ref = (140.0, 40.0)
    assert volume.appearance(img, mask, ref) == pytest.approx((inside - 40) / 100)
    # a dark object on a bright background: the same share
    assert volume.appearance(255 - img, mask, (255 - 140.0, 255 - 40.0)) == pytest.approx(
        (inside - 40) / 100
    )
    rgb = np.stack([img, img, img], -1)  # colour: the channels' mean
    assert volume.appearance(rgb, mask, ref) == pytest.approx((inside - 40) / 100)
    assert volume.appearance(img, mask, (40.0, 40.0)) == 1.0  # no contrast to compare


def test_propagation_stops_at_the_extent_and_the_volume_edge():
    vol, ball = ball_volume()
    res = volume.propagate(Oracle(), vol, 10, start_points(ball, 10), extent=(8, 12), **EXACT)
    np.testing.assert_array_equal(res.labels[8:13], ball[8:13])
    assert not res.labels[:8].any() and not res.labels[13:].any()
    assert res.stops == {"below": "extent", "above": "extent"}
    vol, ball = ball_volume(n=12, centre=4)  # the ball reaches past slice 0
    res = volume.propagate(Oracle(), vol, 4, start_points(ball, 4), **EXACT)
    assert res.stops == {"below": "volume edge", "above": "vanished at slice 11"}
    np.testing.assert_array_equal(res.labels[:11], ball[:11])


def test_propagation_stops_when_the_area_collapses():
    vol, ball = ball_volume()
    vol[13] = 20  # the object disappears from slice 13 on (a dark slice)
    res = volume.propagate(Oracle(), vol, 10, start_points(ball, 10), **EXACT)
    assert res.stops["above"] == "vanished at slice 13"
    assert not res.labels[13:].any()


def test_corrections_reach_their_slice_and_repropagate_beyond_it():
    vol, ball = ball_volume()
    oracle = Oracle()
    res = volume.propagate(oracle, vol, 10, start_points(ball, 10), extent=(6, 14), **EXACT)
    assert not res.labels[12, 28, 29]
    # only the user's points are honoured (`clicks.points_width`), not those taken from
    # a neighbouring slice's answer
    assert oracle.honoured == [True] + [False] * 8
    # a positive click on slice 12 outside the ball (inside the crop box)
    oracle.calls.clear()
    oracle.honoured.clear()
    click = [[29, 28, 1]]
    again = volume.repropagate(oracle, vol, res, 12, click, **EXACT)
    assert again.labels[12, 27:30, 28:31].all()
    np.testing.assert_array_equal(again.labels[6:12], res.labels[6:12])  # kept
    np.testing.assert_array_equal(again.labels[13:15], res.labels[13:15])
    # the segmenter ran on slice 12 (with the click) and above it only, once per slice
    images = [c[0] for c in oracle.calls]
    assert len(images) == 3 and np.array_equal(images[0], vol[12])
    np.testing.assert_array_equal(oracle.calls[0][2], click)
    assert oracle.honoured == [False] * 3  # slice 12's points were propagated ones
    assert again.slices[6]["corrections"] == [[29.0, 28.0, 1.0]]
    # the same clicks given up front
    direct = volume.propagate(
        Oracle(), vol, 10, start_points(ball, 10), extent=(6, 14), corrections={12: click}, **EXACT
    )
    np.testing.assert_array_equal(direct.labels, again.labels)
    # two passes: each propagated slice twice, the click on the second
    oracle.calls.clear()
    two = volume.repropagate(oracle, vol, res, 12, click, passes=2, **EXACT)
    assert len(oracle.calls) == 5 and not len(oracle.calls[3][2]) and len(oracle.calls[0][2])
    np.testing.assert_array_equal(two.labels, again.labels)
    # on the start slice both directions are redone
    oracle = Oracle()
    start = volume.repropagate(oracle, vol, res, 10, [[22, 24, -1]], **EXACT)
    assert not start.labels[10, 24, 22] and start.stops == res.stops
    assert oracle.honoured == [True] + [False] * 8  # the user's own points again


def test_repropagation_applies_the_clicks_given_on_other_slices_again():
    """Clicks on slice 12 re-propagate beyond it: slice 13's earlier negative click is
    given to the model again where the walk reaches 13 (and on the start slice too)."""
    vol, ball = ball_volume()
    neg = [[22, 24, -1]]  # inside the ball on slice 13
    assert ball[13, 24, 22]
    res = volume.propagate(
        Oracle(), vol, 10, start_points(ball, 10), extent=(6, 14), corrections={13: neg}, **EXACT
    )
    assert not res.labels[13, 24, 22] and res.corrections[13].tolist() == [[22.0, 24.0, -1.0]]
    for at in (12, 10):
        again = volume.repropagate(Oracle(), vol, res, at, [[29, 28, 1]], **EXACT)
        assert not again.labels[13, 24, 22], at
        assert again.slices[7]["corrections"] == [[22.0, 24.0, -1.0]]
        assert sorted(again.corrections) == sorted({at, 13})
    # the slice's own clicks are replaced: an empty list takes them back
    undone = volume.repropagate(Oracle(), vol, res, 13, [], **EXACT)
    assert undone.labels[13, 24, 22] and 13 not in undone.corrections


def test_predict_warns_about_corrective_clicks_on_slices_the_walk_never_reached():
    """predict.py's propagation (`segment_files._propagate`) with the oracle: the ball
    ends at slice 17, so a click on slice 19 has no effect, and the object says so."""
    from dlset_jax import segment_files

    vol, ball = ball_volume()
    inp = {"kind": "dicom", "frames": vol, "n_frames": len(vol)}
    obj = {
        "slice": 10,
        "points": start_points(ball, 10),
        "extent": None,
        "corrections": np.zeros((0, 3)),
        "corrections_on": {19: np.array([[22.0, 24.0, -1.0]]), 12: np.array([[9.0, 9.0, -1.0]])},
    }
    per_object = {1: {"warnings": []}}
    segment_files._propagate(Oracle(), inp, [obj], None, per_object, {}, np.uint8)
    (warning,) = per_object[1]["warnings"]
    assert warning.startswith("corrective clicks on slice 19 had no effect")
    assert "above: vanished at slice 17" in warning


def lobe_volume():
    """The ball with a bright lobe on slices 12..16, far right of it (x 38..42): the
    oracle, given the ball's points, never looks there."""
    vol, ball = ball_volume()
    lobe = np.zeros_like(ball)
    lobe[12:17, 22:27, 38:43] = True
    vol[lobe] = 220
    return vol, ball, lobe


def paint_lobe(mask):
    out = mask.copy()
    out[22:27, 38:43] = True
    return out


def test_hand_edits_are_kept_and_followed_beyond_their_slice():
    vol, ball, lobe = lobe_volume()
    plain = volume.propagate(Oracle(), vol, 10, start_points(ball, 10), extent=(6, 14), **EXACT)
    assert not plain.labels[12:15][lobe[12:15]].any()  # the lobe is never found
    oracle = Oracle()
    res = volume.propagate(
        oracle, vol, 10, start_points(ball, 10), extent=(6, 14), edits={12: paint_lobe}, **EXACT
    )
    np.testing.assert_array_equal(res.labels[:12], plain.labels[:12])  # before it: unchanged
    np.testing.assert_array_equal(res.labels[12], paint_lobe(ball[12]))  # the edit kept
    for s in (13, 14):  # beyond it, clicked from the painted mask: ball and lobe
        np.testing.assert_array_equal(res.labels[s], ball[s] | lobe[s])
    facts = {f["slice"]: f for f in res.slices}
    assert [s for s in facts if facts[s]["edited"]] == [12]
    np.testing.assert_array_equal(
        facts[13]["points"], targets.extreme_points(res.labels[12], ties="middle")
    )
    assert facts[12]["area_px"] == res.labels[12].sum()
    # on the start slice: both directions follow the edited mask (the lobe is not on
    # slices below 12, so the walk down finds the ball again)
    res = volume.propagate(
        Oracle(), vol, 12, start_points(ball, 12), extent=(8, 14), edits={12: paint_lobe}, **EXACT
    )
    assert res.slices[4]["source"] == "clicks" and res.slices[4]["edited"]
    np.testing.assert_array_equal(res.labels[13], ball[13] | lobe[13])
    np.testing.assert_array_equal(res.labels[11], ball[11])
    # an edit that erases the object ends the walk after its slice
    erase = volume.propagate(
        Oracle(),
        vol,
        10,
        start_points(ball, 10),
        edits={12: lambda m: np.zeros_like(m)},
        **EXACT,
    )
    assert erase.stops["above"] == "vanished after slice 12" and not erase.labels[12:].any()
    # a slice where the model finds nothing, painted: kept, and the walk goes on from it
    dark = vol.copy()
    dark[12] = 20
    assert volume.propagate(Oracle(), dark, 10, start_points(ball, 10), **EXACT).stops["above"] == (
        "vanished at slice 12"
    )
    painted = volume.propagate(
        Oracle(), dark, 10, start_points(ball, 10), edits={12: lambda m: ball[12]}, **EXACT
    )
    np.testing.assert_array_equal(painted.labels[12:17], ball[12:17])
    assert painted.stops["above"] == "vanished at slice 17"
    # clicks re-propagated from slice 11 paint the edits beyond it again
    click = [[22, 24, -1]]
    kw = dict(extent=(6, 14), edits={12: paint_lobe}, **EXACT)
    first = volume.propagate(Oracle(), vol, 10, start_points(ball, 10), **kw)
    again = volume.repropagate(Oracle(), vol, first, 11, click, edits={12: paint_lobe}, **EXACT)
    direct = volume.propagate(
        Oracle(), vol, 10, start_points(ball, 10), corrections={11: click}, **kw
    )
    np.testing.assert_array_equal(again.labels, direct.labels)
    assert again.labels[13][lobe[13]].all() and not again.labels[11, 24, 22]
    forgot = volume.repropagate(Oracle(), vol, first, 11, click, **EXACT)
    assert not forgot.labels[13][lobe[13]].any()
    with pytest.raises(ValueError, match="edits for slice 21: out of range"):
        volume.propagate(Oracle(), vol, 10, start_points(ball, 10), edits={21: paint_lobe})
    with pytest.raises(ValueError, match="expected a function mask -> mask"):
        volume.propagate(Oracle(), vol, 10, start_points(ball, 10), edits={12: "paint"})
    with pytest.raises(ValueError, match=r"edits for slice 12: returned shape \(3, 3\)"):
        volume.propagate(
            Oracle(), vol, 10, start_points(ball, 10), edits={12: lambda m: np.ones((3, 3))}
        )


def disc(radius, size=48, centre=(24.0, 23.0)):
    y, x = np.mgrid[:size, :size]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2


def test_fuse_with_previous_moves_the_contour_part_of_the_way():
    small, big = disc(6.0), disc(12.0)
    # concentric discs: the fused contour is a disc of the weighted radius (analytic)
    for w, r in ((0.25, 7.5), (0.5, 9.0), (0.75, 10.5)):
        fused = volume.fuse_with_previous(small, big, w)
        radius = np.sqrt(fused.sum() / np.pi)
        assert abs(radius - r) < 0.35, (w, radius)
        want = disc(r)
        assert (fused != want).sum() <= 0.1 * want.sum()
        # the same from the other side
        assert abs(np.sqrt(volume.fuse_with_previous(big, small, 1 - w).sum() / np.pi) - r) < 0.35
    np.testing.assert_array_equal(volume.fuse_with_previous(small, big, 0.0), small)
    np.testing.assert_array_equal(volume.fuse_with_previous(small, big, 1.0), big)
    # a mask is its own fusion (no half-pixel drift from slice to slice), also at the border
    edge = disc(9.0, centre=(3.0, 44.0))
    np.testing.assert_array_equal(volume.fuse_with_previous(edge, edge, 0.5), edge)
    with pytest.raises(ValueError, match=r"prior_weight must be in \[0, 1\]"):
        volume.fuse_with_previous(small, big, 1.5)
    with pytest.raises(ValueError, match="2-D of one shape"):
        volume.fuse_with_previous(small, big[:40], 0.5)


def test_propagated_slices_are_smoothed_with_the_previous_answer():
    vol, ball = ball_volume()
    oracle = Oracle()
    w = volume.PRIOR_WEIGHT
    res = volume.propagate(oracle, vol, 10, start_points(ball, 10), extent=(6, 14))
    np.testing.assert_array_equal(res.labels[10], ball[10])  # the clicked slice as answered
    for s, prev in ((9, 10), (8, 9), (11, 10), (14, 13)):
        np.testing.assert_array_equal(
            res.labels[s], volume.fuse_with_previous(ball[s], ball[prev], w)
        )
        assert res.slices[s - 6]["area_px"] == res.labels[s].sum()
    # the next clicks come from the oracle's own answer (ball[s -+ 1]), not from the
    # smoothed mask: its extreme points, the middle pixel of each flat side
    assert len(oracle.calls) == 9
    for s, (image, pts, _) in zip((10, 9, 8, 7, 6, 11, 12, 13, 14), oracle.calls, strict=True):
        assert np.array_equal(image, vol[s])
        if s == 10:  # the user's clicks
            np.testing.assert_array_equal(pts, start_points(ball, 10))
            continue
        source = ball[s + 1 if s < 10 else s - 1]
        np.testing.assert_array_equal(pts, targets.extreme_points(source, ties="middle"))
        ys, xs = np.nonzero(source)  # independently: the middle of each extreme run
        left = np.sort(ys[xs == xs.min()])
        assert pts[0].tolist() == [xs.min(), left[len(left) // 2]]
    # a slice with corrective clicks keeps the answer the clicks gave
    click = [[29, 28, 1]]
    corrected = volume.propagate(
        Oracle(), vol, 10, start_points(ball, 10), extent=(6, 14), corrections={12: click}
    )
    want = ball[12].copy()
    want[27:30, 28:31] = True
    np.testing.assert_array_equal(corrected.labels[12], want)
    with pytest.raises(ValueError, match=r"prior_weight must be in \[0, 1\]"):
        volume.propagate(Oracle(), vol, 10, start_points(ball, 10), prior_weight=-0.1)


def test_bad_volume_input_gets_one_clear_error():
    vol, ball = ball_volume()
    pts = start_points(ball, 10)
    with pytest.raises(
        ValueError, match=r"start slice 21 is out of range: the volume has slices 0..20"
    ):
        volume.propagate(Oracle(), vol, 21, pts)
    with pytest.raises(ValueError, match="extent"):
        volume.propagate(Oracle(), vol, 10, pts, extent=(12, 15))
    with pytest.raises(ValueError, match=r"extent \(3, 30\)"):
        volume.propagate(Oracle(), vol, 10, pts, extent=(3, 30))
    with pytest.raises(ValueError, match="slice 40: out of range"):
        volume.propagate(Oracle(), vol, 10, pts, corrections={40: [[1, 1, 1]]})
    oracle = Oracle()  # clicks that propagation would never reach, or outside the image:
    with pytest.raises(ValueError, match=r"slice 15: outside the extent \(8, 12\)"):
        volume.propagate(oracle, vol, 10, pts, extent=(8, 12), corrections={15: [[1, 1, 1]]})
    with pytest.raises(ValueError, match="slice 12: object 1: corrective click"):
        volume.propagate(oracle, vol, 10, pts, corrections={12: [[100, 1, 1]]})
    assert not oracle.calls  # refused before any slice was segmented
    with pytest.raises(ValueError, match=r"volume must be \(S, H, W\)"):
        volume.propagate(Oracle(), vol[0], 0, pts)
    with pytest.raises(ValueError, match="lies outside the image"):
        volume.propagate(Oracle(), vol, 10, pts + 100)
    res = volume.propagate(Oracle(), vol, 10, pts)
    with pytest.raises(ValueError, match="slice 1 holds no part of the structure"):
        volume.repropagate(Oracle(), vol, res, 1, [[1, 1, 1]])


def test_the_real_segmenter_propagates(random_model):
    _, config, variables = random_model
    seg = seglib.Segmenter(config, variables, bucket_size=1)
    vol, ball = ball_volume(n=9, centre=4, radius=5)
    res = volume.propagate(seg, vol, 4, start_points(ball, 4), extent=(2, 6))
    assert res.labels.shape == vol.shape and res.labels[4].any()
    assert {f["slice"] for f in res.slices} <= set(range(2, 7))


# ----------------------------------------------------------------- the benchmark


def test_noc_counts_clicks_and_failures():
    assert ib.noc([0.9, 0.95], 0.85) == (0, True)
    assert ib.noc([0.5, 0.8, 0.86, 0.9], 0.85) == (2, True)
    assert ib.noc([0.5, 0.6, 0.7], 0.85) == (2, False)
    recs = [
        {"dsc": [0.8, 0.86, 0.91] + [0.91] * 18, "baseline_dsc": 0.7, "latency_s": [1, 0.1, 0.2]},
        {"dsc": [0.5] * 21, "baseline_dsc": 0.6, "latency_s": [1, 0.3]},
    ]
    s = ib.summarize_curves(recs)
    assert s["noc@85"] == {"mean": 10.5, "std": 9.5, "n": 2, "failures": 1}
    assert s["noc@90"]["mean"] == 11.0 and s["noc@90"]["failures"] == 1
    assert s["curve_mean"][:3] == pytest.approx([0.65, 0.68, 0.705])
    assert s["latency_ms"]["n"] == 3  # the first call of each object (compilation) left out


def test_click_curve_with_the_oracle_corrects_what_it_clicks():
    vol, ball = ball_volume(n=1, centre=0, radius=9)
    gt = ball[0].copy()
    gt[23:26, 8:13] = True  # a spur the bright threshold misses
    image = vol[0]
    rec = ib.click_curve(Oracle(), {"image": image, "mask": gt}, targets.extreme_points(gt))
    assert len(rec["dsc"]) == ib.MAX_CLICKS + 1
    assert rec["dsc"][1] > rec["dsc"][0]  # the first click is positive, on the spur
    assert rec["clicks"][0][2] == 1.0 and 8 <= rec["clicks"][0][0] <= 12


def test_interactive_benchmark_refuses_a_model_without_clicks(random_model):
    _, config, variables = random_model
    seg = seglib.Segmenter(config, variables, bucket_size=1)
    img = np.zeros((32, 32), np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[10:20, 10:20] = True
    with pytest.raises(ValueError, match="needs a model that takes corrective clicks"):
        ib.click_curve(seg, {"image": img, "mask": mask}, targets.extreme_points(mask))


def test_slab_structures_and_3d_against_the_oracle():
    vol, ball = ball_volume(n=6, centre=2, radius=6)
    other = np.zeros_like(ball)
    other[1:4, 5:12, 30:40] = True
    vol = np.where(other, 200, vol).astype(np.uint8)
    objects = []
    for s in range(6):
        for k, (name, m) in enumerate((("ball", ball), ("box", other))):
            if m[s].sum() > 1:
                objects.append(
                    {"image": vol[s], "mask": m[s], "class": name, "id": f"c/2:{60 + s:04d}/{k}"}
                )
    images, numbers, structures = ib.slab_structures(objects)
    assert numbers == list(range(60, 66)) and images.shape == (6, 48, 48)
    rows = ib.run_3d(Oracle(), images, structures)
    by = {r["class"]: r for r in rows}
    assert by["box"]["dsc_6_clicks"] == 1.0 and by["box"]["dsc_per_slice_clicks"] == 1.0
    assert by["ball"]["dsc_per_slice_clicks"] == pytest.approx(1.0)
    assert by["box"]["dsc_polygon_per_slice"] < 0.8
    gap = [o for o in objects if not o["id"].startswith("c/2:0062")]
    with pytest.raises(ValueError, match="not consecutive"):
        ib.slab_structures(gap)
