"""The training step's pure pieces: schedule, optimiser groups, losses, the phi0 shift."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import tiny_model_config

from dlset_jax import config as config_lib
from dlset_jax import models, targets, train_lib


def _optim(**kw):
    o = config_lib.base_config().optim
    o.update(kw)
    return o


def test_cosine_schedule_spans_the_run_and_reaches_its_end_value():
    for total in (50, 480, 3333):
        o = _optim(schedule="cosine", learning_rate=1e-3, warmup_fraction=0.1, end_factor=0.01)
        lr = train_lib.learning_rate_schedule(o, steps_per_epoch=7, total_steps=total)
        warm = int(round(0.1 * (total - 1)))
        assert float(lr(0)) == 0.0
        assert float(lr(warm)) == pytest.approx(1e-3, rel=1e-5)
        assert float(lr(total - 1)) == pytest.approx(1e-5, rel=1e-4)  # the last step
        values = np.array([float(lr(s)) for s in range(warm, total)])
        assert (np.diff(values) <= 1e-12).all()  # decays monotonically after warm-up
        # most of the run learns: the rate is above 10% of its peak for >= 60% of steps
        assert (values > 1e-4).mean() > 0.6


def test_step_schedule_is_the_authors():
    o = _optim(schedule="step", learning_rate=3e-4, decay_factor=0.3, decay_every_epochs=10)
    lr = train_lib.learning_rate_schedule(o, steps_per_epoch=5, total_steps=500)
    assert float(lr(49)) == pytest.approx(3e-4)
    assert float(lr(50)) == pytest.approx(9e-5)
    assert float(lr(100)) == pytest.approx(2.7e-5)


def _tiny_params():
    model = models.create_model(tiny_model_config())
    return model.init_variables(jax.random.key(0), 32)["params"]


def test_heads_step_at_the_multiplier_times_the_backbone_rate():
    params = _tiny_params()
    c = config_lib.base_config()
    c.optim.update(dict(name="sgd", momentum=0.0, weight_decay=0.0, head_lr_multiplier=10.0))
    c.optim.clip_norm = 1e9
    tx = train_lib.make_optimizer(c, params, optax.constant_schedule(0.01))
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    labels = models.param_labels(params)
    for (path, u), (_, lab) in zip(
        jax.tree_util.tree_leaves_with_path(updates),
        jax.tree_util.tree_leaves_with_path(labels),
        strict=True,
    ):
        want = -0.1 if lab == "head" else -0.01
        np.testing.assert_allclose(np.asarray(u), want, rtol=1e-6, err_msg=str(path))


def _batch(b=2, r=32):
    rng = np.random.default_rng(0)
    masks, sdts, dirs, pts = [], [], [], []
    for _ in range(b):
        m = np.zeros((r, r), bool)
        cy, cx = rng.integers(12, 20, 2)
        m[cy - 6 : cy + 7, cx - 5 : cx + 6] = True
        sdt, dt = targets.signed_distance(m, 30.0)
        masks.append(m[..., None].astype(np.float32))
        sdts.append(sdt[..., None])
        dirs.append(targets.direction_field(dt))
        pts.append(targets.extreme_points(m))
    return {
        "image": rng.normal(size=(b, r, r, 3)).astype(np.float32),
        "mask": np.stack(masks),
        "sdt": np.stack(sdts),
        "direction": np.stack(dirs),
        "points": np.stack(pts),
    }


def _losses(warmup, shift_per="example", dice_weight=0.0):
    c = config_lib.base_config()
    c.model = ml_collections.ConfigDict(tiny_model_config().to_dict())
    c.levelset.init_shift_per = shift_per
    c.loss.dice_weight = dice_weight
    model = models.create_model(c.model)
    v = model.init_variables(jax.random.key(0), 32)
    fn = jax.jit(functools.partial(train_lib.compute_losses, model=model, config=c))
    return fn(v["params"], v["batch_stats"], _batch(), jax.random.key(1), jnp.asarray(warmup))


def test_warmup_switches_the_sdt_and_motion_terms_and_the_initial_level_set():
    _, (on, _) = _losses(True)
    _, (off, _) = _losses(False)
    assert float(on["sdt"]) > 0 and float(on["motion"]) > 0
    assert float(off["sdt"]) == 0 and float(off["motion"]) == 0
    # warm-up evolves from the SDT (+ shift) instead of phi0: another level-set loss
    assert abs(float(on["levelset"]) - float(off["levelset"])) > 1e-3


def test_dice_term_is_added_with_its_weight_and_nothing_else_changes():
    total0, (plain, _) = _losses(False)
    total1, (one, _) = _losses(False, dice_weight=1.0)
    _, (three, _) = _losses(False, dice_weight=3.0)
    assert "dice" not in plain
    assert 0.0 < float(one["dice"]) < 1.0  # 1 - soft DSC of the evolved level set
    assert float(three["dice"]) == pytest.approx(3 * float(one["dice"]), rel=1e-5)
    for k in plain:
        assert float(one[k]) == pytest.approx(float(plain[k]), rel=1e-5)
    assert float(total1) == pytest.approx(float(total0) + float(one["dice"]), rel=1e-5)


def test_phi0_shift_per_example_or_per_batch():
    from dlset_jax import inference

    captured = {}
    real = inference.evolve

    def spy(phi_init, outputs, config, **kw):
        def keep(d):
            captured["delta"] = np.asarray(d)

        jax.debug.callback(keep, phi_init - outputs["phi0"])
        return real(phi_init, outputs, config, **kw)

    inference.evolve = spy  # read while tracing: each _losses call traces afresh
    try:
        jax.block_until_ready(_losses(False, "example"))
        per_example = captured["delta"]
        jax.block_until_ready(_losses(False, "batch"))
        per_batch = captured["delta"]
    finally:
        inference.evolve = real
    # each crop's shift is one constant in [-5, 5]
    for d in (per_example, per_batch):
        assert np.allclose(d, d[:, :1, :1, :], atol=1e-5) and np.abs(d).max() <= 5.0
    assert not np.isclose(per_example[0, 0, 0, 0], per_example[1, 0, 0, 0])
    assert np.isclose(per_batch[0, 0, 0, 0], per_batch[1, 0, 0, 0])


def test_image_kinds_must_match_the_data_set():
    class Src:
        class dataset_info:  # noqa: N801 (mimics the TFDS attribute)
            features = {"image": type("F", (), {"shape": (None, None, 1)})()}

    c = config_lib.base_config()
    train_lib.check_image_kinds(c, [Src])
    c.data.image_kinds = ("rgb",)
    with pytest.raises(config_lib.ConfigError, match="image_kinds"):
        train_lib.check_image_kinds(c, [Src])

    class Rgb(Src):
        class dataset_info:  # noqa: N801
            features = {"image": type("F", (), {"shape": (None, None, 3)})()}

    c.data.image_kinds = ("grey",)  # a grey set mixed with a colour one needs "rgb"
    with pytest.raises(config_lib.ConfigError, match="1 or 3 channel"):
        train_lib.check_image_kinds(c, [Src, Rgb])
    c.data.image_kinds = ("grey", "rgb")
    train_lib.check_image_kinds(c, [Src, Rgb])


def test_a_second_ctrl_c_interrupts_at_once_and_handlers_are_restored():
    import os
    import signal

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with train_lib._Preemption() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)  # the first: finish the step, save, stop
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second: now
        os.kill(os.getpid(), signal.SIGTERM)  # SIGTERM only ever asks to stop
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
