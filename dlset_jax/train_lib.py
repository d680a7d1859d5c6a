"""Training: state, optimiser, loss, one jit-compiled step, and the loop.

The loop (`train_and_evaluate`) reads top to bottom: mesh -> data -> state (or restore)
-> jit the step -> loop (step, log, evaluate, checkpoint) -> final evaluation.
Everything random flows from `config.seed`: parameter init, data order and
augmentation (grain, seeded), the per-step shift of the initial level set
(`fold_in(rng, step)`).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dlset_jax import checkpoint as ckpt_lib
from dlset_jax import config as config_lib
from dlset_jax import corrections, evaluate, hostmem, inference, losses, models, parallel, reporting
from dlset_jax.data import pipeline


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data, so that checkpoints hold a plain array

    def variables(self):
        return {"params": self.params, "batch_stats": self.batch_stats}


# ----------------------------------------------------------------- pure pieces


def learning_rate_schedule(optim_config, steps_per_epoch: int, total_steps: int):
    """The backbone's learning rate as a function of the step.

    "step" (the authors'): `lr * decay_factor ** floor(step / (decay_every_epochs * spe))`.
    "cosine": linear warm-up from 0 over `warmup_fraction * total_steps`, then a cosine
    from `lr` down to `end_factor * lr`, reached at the last step (`total_steps - 1`),
    whatever the run's length.
    """
    o = optim_config
    if o.schedule == "step":
        return optax.exponential_decay(
            init_value=o.learning_rate,
            transition_steps=max(1, o.decay_every_epochs * steps_per_epoch),
            decay_rate=o.decay_factor,
            staircase=True,
        )
    last = max(1, total_steps - 1)
    warmup = int(round(o.warmup_fraction * last))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=o.learning_rate,
        warmup_steps=warmup,
        decay_steps=last,
        end_value=o.end_factor * o.learning_rate,
    )


def make_optimizer(config, params, schedule) -> optax.GradientTransformation:
    """Clip -> weight decay -> SGD/Adam, heads at `head_lr_multiplier` x the backbone's.

    Frozen BatchNorm parameters (when `model.frozen_backbone_bn`) get no update at all.
    """
    o = config.optim

    def base(lr):
        if o.name == "sgd":
            return optax.sgd(lr, momentum=o.momentum or None)
        return optax.adam(lr)

    head_schedule = lambda step: o.head_lr_multiplier * schedule(step)
    labels = models.param_labels(params, frozen_bn=config.model.frozen_backbone_bn)
    return optax.chain(
        optax.clip_by_global_norm(o.clip_norm),
        optax.add_decayed_weights(o.weight_decay),
        optax.multi_transform(
            {
                "backbone": base(schedule),
                "head": base(head_schedule),
                "frozen": optax.set_to_zero(),
            },
            labels,
        ),
    )


def compute_losses(params, batch_stats, batch, rng, warmup, *, model, config):
    """Forward pass, evolution and the loss terms.

    Warm-up (DELSE pretraining): evolve from the SDT target + shift and add the SDT
    regression and motion-direction losses. Afterwards: evolve from the predicted
    `phi0` + shift. Both branches are one compiled function (`warmup` is traced). The
    loss sees the level set the user would: made to agree with the batch's clicks.

    Returns `(total, (terms, new_batch_stats))`.
    """
    clicks = batch.get("clicks")
    out, updates = model.apply(
        {"params": params, "batch_stats": batch_stats},
        inference.model_inputs(batch["image"], batch["points"], config, clicks),
        train=True,
        mutable=["batch_stats"],
    )
    ls_cfg, loss_cfg = config.levelset, config.loss
    b = batch["mask"].shape[0] if ls_cfg.init_shift_per == "example" else 1
    shift = jax.random.uniform(
        rng, (b, 1, 1, 1), minval=-ls_cfg.init_shift, maxval=ls_cfg.init_shift
    )
    phi_init = jnp.where(warmup, batch["sdt"], out["phi0"]) + shift
    phi_t = inference.honour_clicks(inference.evolve(phi_init, out, config), clicks, config)
    terms = {
        "levelset": losses.levelset_output_loss(
            phi_t, batch["mask"], ls_cfg.epsilon, balanced=loss_cfg.balanced
        )
    }
    if loss_cfg.dice_weight > 0:
        terms["dice"] = loss_cfg.dice_weight * losses.levelset_dice_loss(
            phi_t, batch["mask"], ls_cfg.epsilon
        )
    onehot = jnp.concatenate([batch["mask"], 1.0 - batch["mask"]], axis=-1)
    if loss_cfg.boundary == "eq8":
        terms["boundary"] = loss_cfg.boundary_weight * losses.boundary_loss(
            out["logits"], onehot, loss_cfg.boundary_reduction
        )
    elif loss_cfg.boundary == "active_contour":
        terms["boundary"] = loss_cfg.active_contour_weight * losses.active_contour_loss(
            out["logits"], onehot
        )
    w = warmup.astype(jnp.float32)
    terms["sdt"] = w * losses.sdt_loss(out["phi0"], batch["sdt"])
    terms["motion"] = w * losses.motion_loss(out["motion"], batch["direction"])
    total = sum(terms.values())
    return total, (terms, updates["batch_stats"])


def simulate_corrections(variables, batch, rng, *, model, config):
    """The simulated user's corrective clicks for a training batch (iterative training).

    With probability `clicks.train_prob` the batch gets n ~ U{1..clicks.train_rounds}
    rounds of: predict with the current parameters (eval mode, no gradient), then one
    click per crop at its deepest error (`corrections.next_click`), so that the network
    learns to correct its own mistakes; otherwise no clicks (the four-click input).

    Returns:
      `(B, K, 3)` clicks `(x, y, sign)` in crop px (all empty without `clicks.enabled`).
    """
    k = config.clicks
    clicks = corrections.empty_clicks(batch["image"].shape[:1], k.max_clicks)
    if not k.enabled or k.train_rounds == 0 or k.train_prob == 0:
        return clicks
    use_key, n_key = jax.random.split(rng)
    rounds = jnp.where(
        jax.random.uniform(use_key) < k.train_prob,
        jax.random.randint(n_key, (), 1, k.train_rounds + 1),
        0,
    )
    variables = jax.lax.stop_gradient(variables)
    gt = batch["mask"][..., 0] > 0.5

    # the network's own answers, as the loss sees them: training's points are jittered
    # off the object on purpose, so they are not honoured (`clicks.points_width`)
    not_honoured = jnp.zeros(batch["image"].shape[:1], jnp.float32)

    def one_round(_, clicks):
        out = inference.predict_crops(
            variables,
            batch["image"],
            batch["points"],
            clicks,
            model=model,
            config=config,
            honour_points=not_honoured,
        )
        pred = out["phi_t"][..., 0] <= config.levelset.threshold
        return corrections.add_click(clicks, jax.vmap(corrections.next_click)(pred, gt))

    return jax.lax.fori_loop(0, rounds, one_round, clicks)


def train_step(state: TrainState, batch, *, model, tx, config, warmup_steps: int, schedule):
    """One optimisation step; returns the new state and scalar metrics."""
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    warmup = state.step < warmup_steps
    if config.clicks.enabled:
        batch = dict(batch)
        batch["clicks"] = simulate_corrections(
            state.variables(), batch, jax.random.fold_in(rng, 1), model=model, config=config
        )
    grad_fn = jax.value_and_grad(compute_losses, has_aux=True)
    (total, (terms, batch_stats)), grads = grad_fn(
        state.params, state.batch_stats, batch, rng, warmup, model=model, config=config
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": total,
        **{f"loss_{k}": v for k, v in terms.items()},
        "grad_norm": optax.global_norm(grads),
        "learning_rate": schedule(state.step),
        "warmup": warmup.astype(jnp.float32),
    }
    if "clicks" in batch:
        metrics["corrective_clicks"] = jnp.mean(jnp.sum(batch["clicks"][..., 2] != 0, axis=-1))
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics


def create_train_state(config, model, tx, rng_seed: int) -> TrainState:
    """Initialises parameters: fresh, then pretrained backbone weights (`model.pretrained`)
    or a trained run's variables (`train.init_from`) if configured."""
    key = jax.random.key(rng_seed)
    init_key, state_key = jax.random.split(key)
    variables = model.init_variables(init_key, image_size=config.data.resolution)
    if config.model.pretrained:
        from dlset_jax.models import convert

        variables = convert.import_torchvision_resnet(config.model.pretrained, variables)
    if config.train.init_from:
        variables = ckpt_lib.warm_start(config.train.init_from, variables)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=jax.random.key_data(state_key),
    )


# ------------------------------------------------------------------- the edges


class _Preemption:
    """Turns SIGTERM and a first Ctrl-C (SIGINT) into a flag the loop checks after each
    step: the step in flight finishes and is saved. A second Ctrl-C interrupts at once
    (the last periodic checkpoint is then where a rerun resumes)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, nothing to restore
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        logging.warning("%s: saving a checkpoint and stopping (Ctrl-C again: now)", name)
        self.requested = True

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


def check_image_kinds(config, sources) -> None:
    """The training sets' channels must agree with `data.image_kinds` (the model's
    contract): grey sets only for ("grey",), some colour set for a kind "rgb"."""
    channels = {int(s.dataset_info.features["image"].shape[-1]) for s in sources}
    kinds = tuple(config.data.image_kinds)
    ok = kinds == ("grey",) if channels == {1} else "rgb" in kinds
    if not ok:
        names = ", ".join(repr(n) for n in (config.data.name, *config.data.extra_sets))
        raise config_lib.ConfigError(
            f"data.image_kinds={kinds} does not match the training data ({names}), "
            f"whose images have {' or '.join(str(c) for c in sorted(channels))} channel(s): "
            "set data.image_kinds = "
            + ("('grey',)" if channels == {1} else "('rgb',) or ('grey', 'rgb')")
            + " in the config"
        )


def _total_steps(config, steps_per_epoch: int) -> int:
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    return int(config.train.num_epochs * steps_per_epoch)


def real_image_benchmarks(config, variables, threshold, workdir, writer) -> None:
    """Real images through the Segmenter: the Colin27 + AAL test objects (where
    mricron-data is installed, `eval.real_benchmark`) and the held-out images of other
    modalities (where `eval.heldout_dir` holds them)."""
    from dlset_jax import heldout, real_benchmark, segmenter

    aal = config.eval.real_benchmark and real_benchmark.available()
    if config.eval.real_benchmark and not aal:
        writer.text("real-image benchmark skipped: Debian's mricron-data is not installed")
    others = heldout.present(config.eval.heldout_dir) if config.eval.heldout_dir else []
    if not (aal or others):
        return
    if "grey" not in config.data.image_kinds:  # the slabs and held-out images are grey
        writer.text(
            "real-image benchmarks skipped: their images are grey and this model takes RGB "
            f"images only (data.image_kinds={tuple(config.data.image_kinds)})"
        )
        return
    seg = segmenter.Segmenter(
        config,
        parallel.to_local(variables, parallel.local_mesh()),
        threshold=threshold,
        threshold_source="the final test evaluation's",
        check=False,
    )
    if aal:
        objects = real_benchmark.test_objects(config.data.data_dir)
        result = real_benchmark.run(seg, objects)
        out = os.path.join(workdir, "eval", "real")
        real_benchmark.write(result, out)
        real_benchmark.worst_cases_figure(seg, objects, result, os.path.join(out, "worst.png"))
        writer.text(
            "real-image benchmark (Colin27 + AAL deep grey test slabs, never trained on)\n"
            + real_benchmark.table(result)
            + "\n".join(real_benchmark.verdict(result))
        )
    if others:
        out_root = os.path.join(workdir, "eval")
        writer.text(heldout.benchmark(seg, config.eval.heldout_dir, out_root, others))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from `workdir` if it holds a checkpoint), then evaluates.

    Returns the final test summary (see `evaluate.run_evaluation`).
    """
    # Mesh.
    parallel.maybe_initialize_distributed(config.distributed)
    config_lib.validate(config, device_count=jax.device_count(), process_count=jax.process_count())
    mesh = parallel.make_mesh()
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    writer = reporting.MetricWriter(workdir, enabled=is_main)
    writer.text(
        f"devices: {jax.device_count()} ({jax.devices()[0].platform}), "
        f"processes: {jax.process_count()}"
    )

    # Data: each process reads its own shard of the objects.
    train_source = pipeline.load_split(config, config.data.train_split)
    extra_sources = pipeline.load_extra_splits(config, config.data.train_split)
    check_image_kinds(config, [train_source, *extra_sources])
    objects = pipeline.ObjectSource(train_source)
    if extra_sources:
        extras = [pipeline.ObjectSource(s) for s in extra_sources]
        objects = pipeline.mix_objects(objects, extras, config.data.extra_share)
    global_batch = config.train.batch_size
    local_batch = global_batch // jax.process_count()
    steps_per_epoch = max(1, len(objects) // global_batch)
    total_steps = _total_steps(config, steps_per_epoch)
    warmup_steps = int(config.loss.warmup_epochs * steps_per_epoch)
    train_iter = pipeline.make_train_loader(
        objects,
        pipeline.CropOptions.from_config(config),
        batch_size=local_batch,
        seed=config.seed,
        num_epochs=None,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        worker_count=config.data.num_workers,
    )
    writer.text(
        f"train objects: {len(objects)}, steps/epoch: {steps_per_epoch}, "
        f"total steps: {total_steps}, warm-up steps: {warmup_steps}"
    )

    # State (or restore).
    model = models.create_model(config.model)
    schedule = learning_rate_schedule(config.optim, steps_per_epoch, total_steps)
    abstract_params = jax.eval_shape(
        lambda: model.init_variables(jax.random.key(0), config.data.resolution)
    )["params"]
    tx = make_optimizer(config, abstract_params, schedule)
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints)
    state = parallel.replicate(create_train_state(config, model, tx, config.seed), mesh)
    if checkpointer.latest_step() is not None:
        try:  # orbax would fail deep in its restore, with a screen of event-loop errors
            ckpt_lib.check_variables(
                model,
                checkpointer.variable_shapes(),
                config.data.resolution,
                where=f"the checkpoint in {workdir}",
                model_from="this run's config",
            )
        except ckpt_lib.CheckpointMismatchError as e:
            raise ckpt_lib.CheckpointMismatchError(
                f"cannot resume: {e}; rerun with the config it was trained with, or train "
                "into another --workdir"
            ) from None
        state, data_state, _ = checkpointer.restore(state)
        train_iter.set_state(data_state)
        writer.text(f"resumed from step {int(state.step)}")
    hostmem.release_freed_memory()  # the init / restore compilations' scratch memory
    writer.text(
        f"model: ResNet-{config.model.depth} width {config.model.width}, "
        f"{models.param_count(state.params) / 1e6:.2f} M parameters"
    )

    # Jit the step: batch split over the data axis, state replicated, donated.
    step_fn = jax.jit(
        functools.partial(
            train_step,
            model=model,
            tx=tx,
            config=config,
            warmup_steps=warmup_steps,
            schedule=schedule,
        ),
        in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
        out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
        donate_argnums=(0,),
    )
    config_json = config.to_json()

    def save(step, force=False):
        checkpointer.save(step, state, train_iter.get_state(), config_json, force=force)

    # Loop.
    start = int(state.step)
    progress = reporting.Progress(total_steps, start, global_batch)
    pending = []
    with _Preemption() as preemption:
        for step in range(start, total_steps):
            batch = parallel.shard_batch(next(train_iter), mesh)
            state, metrics = step_fn(state, batch)
            pending.append(metrics)
            if step == start:  # the step is compiled now; give its scratch memory back
                hostmem.release_freed_memory()
            done = step + 1
            if done % config.train.log_every == 0 or done == total_steps:
                summary = reporting.mean_metrics(jax.device_get(pending))
                pending = []
                writer.scalars(done, {**summary, **progress.rates(done)})
                writer.text(progress.line(done, summary))
            if (
                config.train.eval_every
                and done % config.train.eval_every == 0
                and done < total_steps
            ):
                val = evaluate.run_evaluation(
                    config,
                    state.variables(),
                    split=config.data.eval_split,
                    model=model,
                    max_objects=config.eval.max_objects,
                    workdir=None,
                )
                writer.scalars(done, {f"val/{k}": v for k, v in val["scalars"].items()})
                writer.images(done, "val/overlays", val["overlays"])
                writer.text(f"validation at step {done}: " + reporting.short(val["scalars"]))
                hostmem.release_freed_memory()
            saved = done % config.train.checkpoint_every == 0 or done == total_steps
            if saved:
                save(done)
            if preemption.requested:
                if not saved:  # orbax refuses to save a step twice
                    save(done, force=True)
                checkpointer.close()
                writer.text(f"preempted at step {done}; rerun the same command to resume")
                writer.close()
                return {"preempted_at": done}
    checkpointer.close()

    # Final evaluation on the test split (threshold chosen on validation if asked).
    threshold = config.levelset.threshold
    if config.eval.sweep_thresholds:
        threshold = evaluate.sweep_threshold(
            config, state.variables(), model=model, workdir=workdir
        )
        writer.text(f"threshold chosen on {config.data.eval_split}: {threshold}")
    result = evaluate.run_evaluation(
        config,
        state.variables(),
        split=config.data.test_split,
        model=model,
        workdir=workdir,
        threshold=threshold,
    )
    writer.scalars(total_steps, {f"test/{k}": v for k, v in result["scalars"].items()})
    writer.text("test results\n" + result["table"])
    for name in config.data.extra_sets:  # what the extra training sets gave
        base, _, builder_config = name.partition("/")
        only = {
            "name": base,
            "builder_config": builder_config,
            "extra_sets": (),
            "extra_share": 0.0,
        }
        extra = evaluate.run_evaluation(
            evaluate.apply_overrides(config, {f"data.{k}": v for k, v in only.items()}),
            state.variables(),
            split=config.data.test_split,
            model=model,
            workdir=workdir,
            threshold=threshold,
            report_name=evaluate.other_set_report(base, config.data.test_split),
        )
        writer.text(f"{name} test results\n" + extra["table"])
    if is_main:
        real_image_benchmarks(config, state.variables(), threshold, workdir, writer)
    writer.close()
    return result
