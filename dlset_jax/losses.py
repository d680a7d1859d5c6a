"""Training losses of the deep level set (paper eqs. 6-8 and the DELSE warm-up terms).

All functions are pure, jit/vmap-friendly, take NHWC arrays and return a scalar.
Numerics follow the authors' implementation (checked against their outputs and
gradients in tests/test_losses.py); where their code differs from the paper the
docstring says so.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlset_jax import checks
from dlset_jax.levelset import heaviside

# Keeps log() finite when H(phi) saturates to exactly 0 or 1 in float32 (|phi| > 1e7);
# never active for level sets in the usual +-30 px range.
_PROB_EPS = 1e-7


def class_balanced_bce(prob: jax.Array, labels: jax.Array) -> jax.Array:
    """Class-balanced binary cross-entropy, averaged over pixels (paper eq. 6).

    Positives are weighted by the fraction of negatives and negatives by the fraction
    of positives, both counted over the WHOLE batch (as the reference code does), then
    the weighted sum is divided by the number of pixels.

    Args:
      prob: `(B, H, W, 1)` foreground probability in (0, 1).
      labels: `(B, H, W, 1)` binary ground truth {0, 1} (float).

    Returns:
      Scalar loss (nats per pixel).
    """
    checks.check_same_shape(prob=prob, labels=labels)
    prob = jnp.clip(prob, _PROB_EPS, 1 - _PROB_EPS)
    n_pos = jnp.sum(labels)
    n_neg = jnp.sum(1.0 - labels)
    total = n_pos + n_neg
    nll = -(labels * jnp.log(prob) + (1.0 - labels) * jnp.log(1.0 - prob))
    loss = n_neg / total * jnp.sum(labels * nll) + n_pos / total * jnp.sum((1.0 - labels) * nll)
    return loss / labels.size


def bce(prob: jax.Array, labels: jax.Array) -> jax.Array:
    """Plain binary cross-entropy, averaged over pixels (nats per pixel).

    Unlike `class_balanced_bce` it weighs a missed object pixel and a leaked background
    pixel alike, so its optimum puts the contour where the two are equally likely
    instead of pushing it outwards into the background (the class weights up-weight
    the rarer class, the object in a crop).
    """
    checks.check_same_shape(prob=prob, labels=labels)
    prob = jnp.clip(prob, _PROB_EPS, 1 - _PROB_EPS)
    nll = -(labels * jnp.log(prob) + (1.0 - labels) * jnp.log(1.0 - prob))
    return jnp.mean(nll)


def soft_dice_loss(prob: jax.Array, labels: jax.Array) -> jax.Array:
    """One minus the soft Dice coefficient, per example, averaged over the batch.

    `1 - (2 sum(p y) + 1) / (sum(p) + sum(y) + 1)` over each example's pixels (the 1
    keeps an empty mask and an empty prediction at loss 0). Unlike the per-pixel BCE it
    scores every object by its own overlap, whatever its size in the crop, and it is
    the evaluation metric itself.

    Args:
      prob: `(B, H, W, 1)` foreground probability in [0, 1].
      labels: `(B, H, W, 1)` binary ground truth {0, 1} (float).

    Returns:
      Scalar in [0, 1] (dimensionless).
    """
    checks.check_rank("prob", prob, 4)
    checks.check_same_shape(prob=prob, labels=labels)
    inter = jnp.sum(prob * labels, axis=(1, 2, 3))
    total = jnp.sum(prob, axis=(1, 2, 3)) + jnp.sum(labels, axis=(1, 2, 3))
    return jnp.mean(1.0 - (2.0 * inter + 1.0) / (total + 1.0))


def levelset_output_loss(
    phi_t: jax.Array, mask: jax.Array, epsilon: float = -1.0, balanced: bool = True
) -> jax.Array:
    """Level-set output loss: `100 *` BCE of `H(phi_T)` (paper eq. 6).

    The factor 100 is the authors' scaling (their `LSE_output_loss`). `balanced`:
    class-balanced as the paper (`class_balanced_bce`), or plain (`bce`).

    Args:
      phi_t: `(B, H, W, 1)` evolved level set (pixels, negative inside).
      mask: `(B, H, W, 1)` ground-truth mask {0, 1}.
      epsilon: Heaviside width; negative so that H -> 1 inside.
      balanced: the class weights of eq. 6 (`loss.balanced` in the config).
    """
    loss = class_balanced_bce if balanced else bce
    return 100.0 * loss(heaviside(phi_t, epsilon), mask)


def levelset_dice_loss(phi_t: jax.Array, mask: jax.Array, epsilon: float) -> jax.Array:
    """`soft_dice_loss` of `H(phi_T)`: the optional Dice term (`loss.dice_weight`).

    Args:
      phi_t: `(B, H, W, 1)` evolved level set (pixels, negative inside).
      mask: `(B, H, W, 1)` ground-truth mask {0, 1}.
      epsilon: Heaviside width (`levelset.epsilon`; negative so that H -> 1 inside).
    """
    return soft_dice_loss(heaviside(phi_t, epsilon), mask)


def sdt_loss(phi0: jax.Array, sdt: jax.Array) -> jax.Array:
    """Mean squared error between the predicted initial level set and the truncated SDT.

    DELSE warm-up term (authors' `level_map_loss`), in pixels^2.

    Args:
      phi0: `(B, H, W, 1)` predicted initial level set.
      sdt: `(B, H, W, 1)` truncated signed distance target.
    """
    checks.check_same_shape(phi0=phi0, sdt=sdt)
    return jnp.mean((sdt - phi0) ** 2)


def _normalize(v: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """`v / max(|v|, eps)` (torch's F.normalize) with a finite gradient at v = 0.

    sqrt's derivative is infinite at 0, and 0 * inf would poison every parameter
    through the chain rule, so the norm is only taken where it is above eps.
    """
    sq = jnp.sum(v * v, axis=axis, keepdims=True)
    big = sq > eps * eps
    norm = jnp.sqrt(jnp.where(big, sq, 1.0))
    return jnp.where(big, v / norm, v / eps)


def motion_loss(motion: jax.Array, direction: jax.Array) -> jax.Array:
    """Mean squared angle (radians^2) between predicted motion and target direction.

    DELSE warm-up term (authors' `vector_field_loss`): both fields are normalised to
    unit length (zero vectors stay zero), and the angle is
    `acos(cos * (1 - 1e-4))`, which keeps the gradient of acos finite at cos = +-1.

    Args:
      motion: `(B, H, W, 2)` predicted motion field (y, x).
      direction: `(B, H, W, 2)` target direction, the gradient of the distance map.
    """
    checks.check_same_shape(motion=motion, direction=direction)
    checks.check_channels("motion", motion, 2)
    cos = jnp.sum(_normalize(motion) * _normalize(direction), axis=-1)
    angle = jnp.arccos(cos * (1 - 1e-4))
    return jnp.mean(angle**2)


def boundary_loss(logits: jax.Array, labels: jax.Array, reduction: str = "sum") -> jax.Array:
    """Boundary (region-based level set) loss of paper eq. 8 (Kim et al.).

    `Q = softmax(P) - 0.5`, `H = 0.5 * (1 + tanh(40 Q))`. For each class c with binary
    ground truth `Y_c`: `t_in = sum(Y_c H) / sum(H)`, `t_out = sum(Y_c (1-H)) / sum(1-H)`
    (both with 1e-5 added to the denominator), and
    `L_c = sum((Y_c - t_in)^2 H) + sum((Y_c - t_out)^2 (1 - H))`. The result is the mean
    over classes and over the batch.

    Args:
      logits: `(B, H, W, C)` class logits (object, background).
      labels: `(B, H, W, C)` one-hot ground truth.
      reduction: "sum" sums over pixels (the authors' scale, which grows with the image
        area; their weight lambda = 0.01 was set at 256x256); "mean" divides by H * W so
        that the weight does not depend on the crop size.
    """
    checks.check_rank("logits", logits, 4)
    checks.check_same_shape(logits=logits, labels=labels)
    h = 0.5 * (1 + jnp.tanh(40.0 * (jax.nn.softmax(logits, axis=-1) - 0.5)))
    eps = 1e-5
    t_in = jnp.sum(h * labels, axis=(1, 2)) / (jnp.sum(h, axis=(1, 2)) + eps)
    t_out = jnp.sum((1 - h) * labels, axis=(1, 2)) / (jnp.sum(1 - h, axis=(1, 2)) + eps)
    t_in, t_out = t_in[:, None, None, :], t_out[:, None, None, :]
    energy = jnp.sum((labels - t_in) ** 2 * h + (labels - t_out) ** 2 * (1 - h), axis=(1, 2))
    if reduction == "mean":
        energy = energy / (logits.shape[1] * logits.shape[2])
    elif reduction != "sum":
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return jnp.mean(energy)


def active_contour_loss(
    logits: jax.Array, labels: jax.Array, length_weight: float = 10.0, region_weight: float = 5.0
) -> jax.Array:
    """Active-contour loss (Chen et al. 2019) as the authors' code trains by default.

    `p = sigmoid(logits)`. Length term: `sum(sqrt(dr^2 + dc^2 + 1e-8))` over both
    channels of forward differences (rows 1..H-2 of the vertical and columns 1..W-2 of
    the horizontal difference, on an (H-2, W-2) grid). Region term, on channel 1 only
    (the authors' choice; channel 1 is background in their label order):
    `|sum(p_1 (y_1 - 1)^2)| + |sum((1 - p_1) y_1^2)|`. Loss =
    `length_weight * length + region_weight * region`. The authors multiply it by 0.01
    in training.

    Args:
      logits: `(B, H, W, 2)` class logits (object, background).
      labels: `(B, H, W, 2)` one-hot ground truth.
    """
    checks.check_rank("logits", logits, 4)
    checks.check_same_shape(logits=logits, labels=labels)
    p = jax.nn.sigmoid(logits)
    dr = (p[:, 1:] - p[:, :-1])[:, 1:, :-2] ** 2
    dc = (p[:, :, 1:] - p[:, :, :-1])[:, :-2, 1:] ** 2
    length = jnp.sum(jnp.sqrt(jnp.abs(dr + dc) + 1e-8))
    p1, y1 = p[..., 1], labels[..., 1]
    region = jnp.abs(jnp.sum(p1 * (y1 - 1.0) ** 2)) + jnp.abs(jnp.sum((1.0 - p1) * y1**2))
    return length_weight * length + region_weight * region
