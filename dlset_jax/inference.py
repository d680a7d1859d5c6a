"""Crops + clicks -> level sets: the network, the evolution, and the way back to the image.

The one path from a crop and its four clicks to a level set, shared by the training
step (`train_lib`), the evaluation (`evaluate`) and prediction (`segmenter`):

  `targets.crop_inputs` (host: crop around the clicks, normalise)
  -> `model_inputs` (device: image + guidance channel from the crop's points)
  -> the network -> `evolve` (T steps of `levelset.evolve` from phi0)
  -> `honour_clicks` (the level set made to contain the four extreme points, and to
     agree with the corrective clicks)
  -> `paste_back` (host: the crop's level set into the full image).

`predict_crops` is the pure, jit-able middle part. Config fields read here:
`data.guidance`, `data.sigma`, `data.cm_variant`, `data.dt_max`, `clicks.*` and
`levelset.*`. A model trained with `clicks.enabled` takes two more channels, the maps
of the corrective clicks (`corrections.click_maps`); without clicks they are zero.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dlset_jax import corrections, guidance, levelset, targets

# Level set value outside the crop box (positive = outside; the authors' 20).
BACKGROUND_PHI = 20.0


def evolution_kwargs(config) -> dict:
    """`levelset.evolve`'s parameters from the config (their one home)."""
    ls = config.levelset
    return dict(
        steps=int(ls.steps),
        timestep=float(ls.timestep),
        dirac_ratio=float(ls.dirac_ratio),
        dt_max=float(config.data.dt_max),
        corners=str(ls.corners),
    )


def model_inputs(image: jax.Array, points: jax.Array, config, clicks=None) -> jax.Array:
    """The network input: normalised crops, the guidance channel / 255 (and click maps).

    Args:
      image: `(B, R, R, 3)` normalised crops (`targets.crop_inputs`).
      points: `(B, 4, 2)` `(x, y)` crop px, order left, right, top, bottom.
      clicks: `(B, K, 3)` corrective clicks `(x, y, sign)` in crop px, or None (none);
        used when `config.clicks.enabled`, ignored otherwise.

    Returns:
      `(B, R, R, 4)` float32, or `(B, R, R, 6)` with `clicks.enabled`.
    """
    chex.assert_rank(image, 4)
    chex.assert_shape(points, (image.shape[0], 4, 2))
    d = config.data
    g = guidance.guidance_channel(
        points,
        image.shape[1],
        image.shape[2],
        mode=d.guidance,
        sigma=float(d.sigma),
        cm_variant=d.cm_variant,
    )
    parts = [image, g / 255.0]
    if config.clicks.enabled and clicks is None:
        # no clicks: zero maps, written as such (maps of empty slots are constants that
        # XLA would spend minutes folding)
        parts.append(jnp.zeros((*image.shape[:3], 2), image.dtype))
    elif config.clicks.enabled:
        chex.assert_shape(clicks, (image.shape[0], None, 3))
        parts.append(
            corrections.click_maps(
                clicks, image.shape[1], image.shape[2], float(config.clicks.sigma)
            )
        )
    return jnp.concatenate(parts, axis=-1)


def evolve(phi_init: jax.Array, outputs: dict, config, *, return_trajectory: bool = False):
    """T evolution steps from `phi_init` under the network's motion field and `g`.

    Args:
      phi_init: `(B, R, R, 1)` px, negative inside (phi0, or the SDT in warm-up).
      outputs: the network's dict (`motion` `(B, R, R, 2)`, `g` `(B, R, R, 1)`).

    Returns:
      `phi_T`, or `(phi_T, trajectory)` (see `levelset.evolve`).
    """
    return levelset.evolve(
        phi_init,
        outputs["motion"],
        outputs["g"],
        return_trajectory=return_trajectory,
        **evolution_kwargs(config),
    )


def honour_clicks(
    phi_t: jax.Array,
    clicks,
    config,
    threshold: float | None = None,
    points=None,
    honour_points=None,
) -> jax.Array:
    """`phi_t` made to contain the four extreme points (`clicks.points_width > 0`)
    and then to agree with the corrective clicks (`clicks.enabled` and
    `clicks.honour_width > 0`), by `corrections.honour_clicks`.

    The extreme points lie on the object, but the network's contour often passes a
    pixel inside them where the image's strongest edge is not the object's border
    (docs/history.md, "The answer contains its own clicks"). Training does not honour
    them (the loss passes no `points`, the simulated user `honour_points` = 0): its
    points are jittered off the object on purpose (`data.pert`), and it trains the
    network's own answer.

    Args:
      phi_t: `(B, R, R, 1)` evolved level sets, crop px.
      clicks: `(B, K, 3)` crop px, or None (no corrective clicks).
      threshold: the mask threshold (default `levelset.threshold`).
      points: `(B, 4, 2)` the extreme points, crop px, or None (not honoured).
      honour_points: `(B,)` 1 where a crop's points are a person's clicks, 0 where they
        are derived (e.g. from a neighbouring slice's answer) and not honoured; None: 1.
    """
    k = config.clicks
    threshold = float(config.levelset.threshold if threshold is None else threshold)
    if points is not None and k.points_width > 0:
        sign = jnp.ones_like(points[..., :1])  # a zero sign is an empty slot: no bump
        if honour_points is not None:
            sign = sign * jnp.asarray(honour_points, sign.dtype)[:, None, None]
        pos = jnp.concatenate([points, sign], axis=-1)
        phi_t = corrections.honour_clicks(
            phi_t,
            pos,
            width=float(k.points_width),
            margin=float(k.points_margin),
            threshold=threshold,
        )
    if clicks is None or not k.enabled or not k.honour_width > 0:
        return phi_t
    return corrections.honour_clicks(
        phi_t,
        clicks,
        width=float(k.honour_width),
        margin=float(k.honour_margin),
        threshold=threshold,
    )


def predict_crops(
    variables,
    image,
    points,
    clicks=None,
    *,
    model,
    config,
    return_trajectory: bool = False,
    threshold: float | None = None,
    honour_points=None,
):
    """Network (eval mode) + evolution on crops. Pure; jit it.

    Args:
      variables: `{"params", "batch_stats"}`.
      image: `(B, R, R, 3)` normalised crops; points: `(B, 4, 2)` crop px.
      clicks: `(B, K, 3)` corrective clicks in crop px, or None (see `model_inputs`).
      threshold: the mask threshold the points and clicks are honoured against.
      honour_points: `(B,)` which crops' points are honoured (`honour_clicks`).

    Returns:
      the network's dict plus `phi_t` `(B, R, R, 1)`, the evolved level set made to
      contain the points and agree with the clicks (`honour_clicks`; and `trajectory`
      `(T+1, B, R, R, 1)`, the evolution itself, before that, when asked).
    """
    out = model.apply(variables, model_inputs(image, points, config, clicks), train=False)
    res = evolve(out["phi0"], out, config, return_trajectory=return_trajectory)
    if return_trajectory:
        out["phi_t"], out["trajectory"] = res
    else:
        out["phi_t"] = res
    out["phi_t"] = honour_clicks(out["phi_t"], clicks, config, threshold, points, honour_points)
    return out


def paste_back(phi_crop: np.ndarray, box, image_shape) -> np.ndarray:
    """`(R, R)` crop level set -> `(H, W)` float32 in the image, `BACKGROUND_PHI` off the box."""
    return targets.paste_back(phi_crop, box, image_shape, background=BACKGROUND_PHI)


def crop_to_image_points(points_crop, box, resolution: int) -> np.ndarray:
    """`(N, 2)` `(x, y)` crop px -> image px (inverse of `targets.points_to_crop`)."""
    y0, x0, y1, x1 = (int(v) for v in box)
    x = targets.crop_to_image_coords(np.asarray(points_crop)[:, 0], x0, x1 - x0, resolution)
    y = targets.crop_to_image_coords(np.asarray(points_crop)[:, 1], y0, y1 - y0, resolution)
    return np.stack([x, y], -1)


def guidance_map(points, resolution: int, config) -> np.ndarray:
    """The guidance channel of one crop on the host, `(R, R)` in [0, 510] (for pictures)."""
    d = config.data
    g = guidance.guidance_channel(
        jnp.asarray(points, jnp.float32),
        resolution,
        resolution,
        mode=d.guidance,
        sigma=float(d.sigma),
        cm_variant=d.cm_variant,
    )
    return np.asarray(g)[..., 0]
