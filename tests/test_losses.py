"""Tests of dlset_jax.losses: parity with the authors' outputs and gradients, finite
differences, independent numpy formulas, and error messages."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES
from jax.test_util import check_grads

from dlset_jax import config as config_lib
from dlset_jax import levelset as ls
from dlset_jax import losses as L

REF = np.load(FIXTURES / "authors_losses.npz")
CASES = json.loads(str(REF["meta"]))["cases"]
TOL = 1e-4
# The Heaviside width of the schema (the paper's -1: H -> 1 inside).
EPSILON = float(config_lib.base_config().levelset.epsilon)


def nhwc(a):
    return jnp.asarray(np.moveaxis(a, 1, -1))


def rel_err(a, ref):
    a, ref = np.asarray(a), np.asarray(ref)
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30))


# name in the fixture -> (our loss of one argument given the case, argument key,
# argument name in the fixture's gradient key)
LOSSES = {
    "cbbce": (
        lambda r: lambda x: L.class_balanced_bce(ls.heaviside(x, EPSILON), r("gts_f")),
        "phiT",
        "phiT",
    ),
    "lse_output": (lambda r: lambda x: L.levelset_output_loss(x, r("gts_f")), "phiT", "phiT"),
    "level_map": (lambda r: lambda x: L.sdt_loss(x, r("sdt")), "phi0_pred", "phi0"),
    "vf_loss": (lambda r: lambda x: L.motion_loss(x, r("vf_gt")), "vf_pred", "vf_pred"),
    "cal_levelset": (lambda r: lambda x: L.boundary_loss(x, r("gts2")), "logits", "logits"),
    "active_contour": (lambda r: lambda x: L.active_contour_loss(x, r("gts2")), "logits", "logits"),
}


@pytest.mark.parametrize("case", CASES, ids=[c["prefix"][:-1] for c in CASES])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_parity_with_authors(case, name):
    p = case["prefix"]
    r = lambda k: nhwc(REF[p + k])
    make, arg, garg = LOSSES[name]
    value, grad = jax.value_and_grad(make(r))(r(arg))
    ref = float(REF[f"{p}{name}_f32"])
    assert abs(float(value) - ref) <= TOL * abs(ref)
    if name == "vf_loss":
        # acos' amplifies float32 rounding near cos = 1: the authors' own float32
        # gradient is 2e-4 off their float64 one, ours 5e-5; compare with float64.
        gref = REF[f"{p}grad_{name}_{garg}_f64"]
    else:
        gref = REF[f"{p}grad_{name}_{garg}_f32"]
    assert rel_err(grad, nhwc(gref)) <= TOL


def _random_case(seed=0, b=2, h=12, w=14):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - h / 2) ** 2 / 16 + (xx - w / 2) ** 2 / 20 < 1).astype(np.float32)
    mask = np.broadcast_to(mask[None, ..., None], (b, h, w, 1)).copy()
    if b > 1:
        mask[1, :2] = 1.0
    onehot = np.concatenate([mask, 1 - mask], -1)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    return dict(
        mask=jnp.asarray(mask),
        onehot=jnp.asarray(onehot),
        phi=f(b, h, w, 1) * 5,
        logits=f(b, h, w, 2),
        motion=f(b, h, w, 2),
        direction=f(b, h, w, 2),
    )


def test_bce_matches_numpy_formula():
    d = _random_case()
    prob = np.asarray(ls.heaviside(d["phi"], EPSILON), np.float64)
    y = np.asarray(d["mask"], np.float64)
    pos, neg = y.sum(), (1 - y).sum()
    nll = -(y * np.log(prob) + (1 - y) * np.log(1 - prob))
    ref = (neg / y.size * (y * nll).sum() + pos / y.size * ((1 - y) * nll).sum()) / y.size
    assert float(L.class_balanced_bce(jnp.asarray(prob, jnp.float32), d["mask"])) == (
        pytest.approx(ref, rel=1e-5)
    )
    assert float(L.levelset_output_loss(d["phi"], d["mask"])) == pytest.approx(100 * ref, rel=1e-5)
    plain = nll.mean()  # unweighted: a missed object pixel costs what a leaked one does
    assert float(L.bce(jnp.asarray(prob, jnp.float32), d["mask"])) == pytest.approx(plain, rel=1e-5)
    got = L.levelset_output_loss(d["phi"], d["mask"], EPSILON, balanced=False)
    assert float(got) == pytest.approx(100 * plain, rel=1e-5)


def test_plain_bce_does_not_push_the_contour_outwards():
    """With few object pixels the class weights make a one-pixel outward error cheaper
    than an inward one; plain BCE prices both alike."""
    y = np.zeros((1, 40, 40, 1), np.float32)
    y[0, 15:25, 15:25] = 1
    grown, shrunk = np.zeros_like(y), np.zeros_like(y)
    grown[0, 14:26, 14:26], shrunk[0, 16:24, 16:24] = 1, 1

    def cost(pred, balanced):
        phi = jnp.asarray(np.where(pred > 0, -3.0, 3.0), jnp.float32)
        return float(L.levelset_output_loss(phi, jnp.asarray(y), EPSILON, balanced=balanced))

    assert cost(grown, True) < cost(shrunk, True)  # the bias of eq. 6's weights
    assert cost(grown, False) > cost(shrunk, False)  # plain: growing errs on more pixels


def test_soft_dice_matches_numpy_formula_and_scores_each_object_alike():
    d = _random_case()
    prob = np.asarray(ls.heaviside(d["phi"], EPSILON), np.float64)
    y = np.asarray(d["mask"], np.float64)
    ref = np.mean([1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1) for p, t in zip(prob, y)])
    got = L.soft_dice_loss(jnp.asarray(prob, jnp.float32), d["mask"])
    assert float(got) == pytest.approx(ref, rel=1e-5)
    # Hard masks: loss = 1 - DSC (up to the +1), and an empty mask predicted empty is 0.
    a = np.zeros((2, 20, 20, 1), np.float32)
    a[0, 5:15, 5:15] = 1
    b = np.zeros_like(a)
    b[0, 5:15, 5:10] = 1  # half the square: DSC 2 * 50 / 150
    got = L.soft_dice_loss(jnp.asarray(b), jnp.asarray(a))
    assert float(got) == pytest.approx(((1 - 101 / 151) + 0.0) / 2, rel=1e-6)
    # One pixel off costs a small object more than a large one (per-pixel BCE would not).
    small, large = np.zeros((1, 40, 40, 1), np.float32), np.zeros((1, 40, 40, 1), np.float32)
    small[0, 18:22, 18:22], large[0, 5:35, 5:35] = 1, 1

    def grown(m):
        return np.pad(m[0, 1:, :, 0], ((0, 1), (0, 0)))[None, ..., None] + m

    cost = lambda m: float(L.soft_dice_loss(jnp.asarray(np.clip(grown(m), 0, 1)), jnp.asarray(m)))
    assert cost(small) > 5 * cost(large)


def test_boundary_loss_matches_numpy_formula_and_reductions():
    d = _random_case()
    logits, y = np.asarray(d["logits"], np.float64), np.asarray(d["onehot"], np.float64)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    h = 0.5 * (1 + np.tanh(40 * (p - 0.5)))
    total = 0.0
    for b in range(y.shape[0]):
        for c in range(y.shape[-1]):
            hb, yb = h[b, ..., c], y[b, ..., c]
            t_in = (hb * yb).sum() / (hb.sum() + 1e-5)
            t_out = ((1 - hb) * yb).sum() / ((1 - hb).sum() + 1e-5)
            total += ((yb - t_in) ** 2 * hb).sum() + ((yb - t_out) ** 2 * (1 - hb)).sum()
    ref = total / (y.shape[0] * y.shape[-1])
    assert float(L.boundary_loss(d["logits"], d["onehot"])) == pytest.approx(ref, rel=1e-4)
    hw = y.shape[1] * y.shape[2]
    assert float(L.boundary_loss(d["logits"], d["onehot"], "mean")) == pytest.approx(
        ref / hw, rel=1e-4
    )


def test_perfect_prediction_has_low_losses():
    d = _random_case()
    sdt = jnp.where(d["mask"] > 0, -10.0, 10.0)
    assert float(L.sdt_loss(sdt, sdt)) == 0.0
    assert float(L.motion_loss(d["direction"], d["direction"])) < 1e-3
    confident = 20.0 * (2 * d["onehot"] - 1)
    assert float(L.boundary_loss(confident, d["onehot"])) < 1e-3
    # H(phi) -> mask as phi -> -inf inside / +inf outside: the BCE decreases.
    assert float(L.levelset_output_loss(sdt * 10, d["mask"])) < float(
        L.levelset_output_loss(sdt, d["mask"])
    )


def test_motion_loss_gradient_is_finite_at_zero_vectors():
    d = _random_case()
    motion = d["motion"].at[:, :3, :3].set(0.0)  # e.g. dead ReLUs in a narrow net
    g = jax.grad(L.motion_loss)(motion, d["direction"])
    assert np.all(np.isfinite(np.asarray(g)))


def test_motion_loss_is_pi_squared_for_opposite_fields():
    d = _random_case()
    v = float(L.motion_loss(-d["direction"], d["direction"]))
    assert v == pytest.approx(float(np.arccos(-(1 - 1e-4))) ** 2, rel=1e-4)


@pytest.mark.parametrize("name", ["bce", "plain_bce", "dice", "sdt", "motion", "boundary", "ac"])
def test_finite_difference_gradients(name):
    d = _random_case(b=1, h=8, w=9)
    sdt = jnp.asarray(np.where(np.asarray(d["mask"]) > 0, -3.0, 3.0), jnp.float32)
    fn, x = {
        "bce": (lambda x: L.levelset_output_loss(x, d["mask"]), d["phi"]),
        "plain_bce": (lambda x: L.levelset_output_loss(x, d["mask"], balanced=False), d["phi"]),
        "dice": (lambda x: L.soft_dice_loss(ls.heaviside(x, EPSILON), d["mask"]), d["phi"]),
        "sdt": (lambda x: L.sdt_loss(x, sdt), d["phi"]),
        "motion": (lambda x: L.motion_loss(x, d["direction"]), d["motion"]),
        "boundary": (lambda x: L.boundary_loss(x * 0.05, d["onehot"]), d["logits"]),
        "ac": (lambda x: L.active_contour_loss(x, d["onehot"]), d["logits"]),
    }[name]
    with jax.default_matmul_precision("float32"):
        check_grads(fn, (x,), order=1, modes=["rev"], eps=1e-3, atol=2e-2, rtol=2e-2)


def test_jit_and_vmap_consistency():
    d = _random_case(b=3)
    f = lambda x: L.boundary_loss(x, d["onehot"])
    assert float(jax.jit(f)(d["logits"])) == pytest.approx(float(f(d["logits"])), rel=1e-5)
    per = jax.vmap(lambda lg, y: L.boundary_loss(lg[None], y[None]))(d["logits"], d["onehot"])
    assert float(per.mean()) == pytest.approx(float(f(d["logits"])), rel=1e-5)


def test_bad_input_is_named():
    d = _random_case()
    with pytest.raises(ValueError, match="shapes must match"):
        L.levelset_output_loss(d["phi"][:, :-1], d["mask"])
    with pytest.raises(ValueError, match="shapes must match"):
        L.motion_loss(d["motion"], d["direction"][..., :1])
    with pytest.raises(ValueError, match="shapes must match"):
        L.soft_dice_loss(d["mask"][..., :-1, :], d["mask"])
    with pytest.raises(ValueError, match="rank 4"):
        L.soft_dice_loss(d["mask"][0], d["mask"][0])
    with pytest.raises(ValueError, match="rank 4"):
        L.boundary_loss(d["logits"][0], d["onehot"][0])
    with pytest.raises(ValueError, match="reduction"):
        L.boundary_loss(d["logits"], d["onehot"], "median")
