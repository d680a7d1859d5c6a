"""Checkpoints with orbax: the train state, the data iterator state and the config.

Orbax writes each checkpoint into a temporary directory and renames it when complete,
so a run killed at any moment leaves only whole checkpoints behind; `latest_step`
ignores unfinished ones. Saving is asynchronous (training goes on while the arrays are
written); `close()` waits for the last write.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from dlset_jax import config as config_lib
from dlset_jax import models

# Written by `evaluate.sweep_threshold`: the mask threshold chosen on validation.
THRESHOLD_FILE = os.path.join("eval", "threshold.json")


class CheckpointMismatchError(ValueError):
    """The checkpoint's arrays do not fit the model built from its config."""


class Checkpointer:
    """Saves and restores `{state, data, config}` under `workdir/checkpoints`."""

    def __init__(self, workdir: str, *, keep: int = 3, read_only: bool = False):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(
        self, step: int, state, data_state: dict, config_json: str, force: bool = False
    ) -> bool:
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(json.loads(config_json)),
            ),
            force=force,
        )

    def restore(self, state_template, step: int | None = None):
        """Returns `(state, data_state, config_dict)` of `step` (default: latest).

        `state_template` gives the structure, shapes, dtypes and shardings to restore
        into (e.g. a freshly initialised state).
        """
        step = self._existing(step)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(state_template),
                data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["data"], restored["config"]

    def variable_shapes(self, step: int | None = None) -> dict:
        """`{"params", "batch_stats"}` of a checkpoint as array metadata (shapes and
        dtypes, nothing read): what `check_variables` needs before a restore."""
        metadata = self._manager.item_metadata(self._existing(step))["state"]
        return {k: metadata[k] for k in ("params", "batch_stats") if k in metadata}

    def restore_variables(self, step: int | None = None) -> dict:
        """`{"params", "batch_stats"}` of a checkpoint on this process's first device.

        Needs no template and works whatever the device layout of the run that saved
        it (e.g. trained on 8 GPUs, evaluated on a laptop).
        """
        step = self._existing(step)
        metadata = self._manager.item_metadata(step)["state"]
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata
        )
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        state = restored["state"]
        return {"params": state["params"], "batch_stats": state["batch_stats"]}

    def _existing(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in self.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory} (available: {self.all_steps()})"
            )
        return step

    def restore_config(self, step: int | None = None) -> dict:
        step = self._existing(step)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return restored["config"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


# ------------------------------------------------------------ the one loader


@dataclasses.dataclass
class Run:
    """A trained model as saved in a workdir.

    config: the saved (validated) config; variables: `{"params", "batch_stats"}` on
    this process's first device; step: the checkpoint's step; threshold: the mask
    threshold to use (`phi <= threshold`), chosen on validation when the run swept it
    (`eval/threshold.json`), else `config.levelset.threshold`; threshold_source: which.
    """

    workdir: str
    config: ml_collections.ConfigDict
    variables: dict
    step: int
    threshold: float
    threshold_source: str


def _shapes(tree) -> dict:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in flat}


def check_variables(
    model, variables, resolution: int, where: str = "checkpoint", model_from: str = "its config"
) -> None:
    """Raises CheckpointMismatchError when `variables` do not fit `model` (built from
    `model_from`, for the message)."""
    expected = jax.eval_shape(lambda: model.init_variables(jax.random.key(0), resolution))
    for col in ("params", "batch_stats"):
        want, got = _shapes(expected.get(col, {})), _shapes(variables.get(col, {}))
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        if missing or extra:
            what = (
                f"model expects {col}{missing[0]} which the {where} lacks"
                if missing
                else f"{where} has {col}{extra[0]} which the model lacks"
            )
            raise CheckpointMismatchError(
                f"{where} does not match the model built from {model_from}: {what} "
                f"({len(missing)} missing, {len(extra)} unexpected arrays)"
            )
        for k in want:
            if want[k] != got[k]:
                raise CheckpointMismatchError(
                    f"{where} does not match the model built from {model_from}: {col}{k} has "
                    f"shape {got[k]} in the checkpoint, the model expects {want[k]}"
                )


def read_threshold(workdir: str, config) -> tuple[float, str]:
    """`(threshold, source)`: the run's validation choice if it made one, else the config's."""
    path = os.path.join(workdir, THRESHOLD_FILE)
    if os.path.exists(path):
        try:
            with open(path) as f:
                return float(json.load(f)["chosen"]), path
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FileNotFoundError(f"{path}: unreadable threshold choice ({e})") from e
    return float(config.levelset.threshold), "config levelset.threshold"


def load(workdir: str, step: int | None = None, *, check: bool = True) -> Run:
    """The one way to load a trained model: config, variables and threshold of `workdir`.

    Raises FileNotFoundError (no checkpoint), `config.ConfigError` (a saved config that
    does not validate), CheckpointMismatchError (arrays that do not fit the model).
    """
    ckdir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckdir):
        raise FileNotFoundError(
            f"no checkpoints under {workdir!r} (expected {ckdir}/): train first "
            "(python train.py --workdir ...)"
        )
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        latest = checkpointer.latest_step()
        if latest is None:
            raise FileNotFoundError(f"no finished checkpoint in {ckdir}")
        step = latest if step is None else int(step)
        if step not in checkpointer.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {ckdir} (available: {checkpointer.all_steps()})"
            )
        try:
            raw = checkpointer.restore_config(step)
        except Exception as e:  # orbax raises several types for a damaged item
            raise FileNotFoundError(
                f"checkpoint {step} in {ckdir} has no readable config ({type(e).__name__})"
            ) from e
        config = config_lib.from_saved(raw)
        try:
            config_lib.validate(config)
        except config_lib.ConfigError as e:
            raise config_lib.ConfigError(
                f"config saved with checkpoint {step} in {ckdir}: {e}"
            ) from e
        try:
            variables = checkpointer.restore_variables(step)
        except Exception as e:
            raise CheckpointMismatchError(
                f"cannot restore the arrays of checkpoint {step} in {ckdir} "
                f"({type(e).__name__}: {str(e)[:200]})"
            ) from e
    finally:
        checkpointer.close()
    if check:
        check_variables(models.create_model(config.model), variables, config.data.resolution)
    threshold, source = read_threshold(workdir, config)
    return Run(workdir, config, variables, step, threshold, source)


# Where the network's input channels enter (HWIO kernel): the one array that a warm
# start may widen (new input channels, e.g. click maps, start with zero weights).
INPUT_KERNEL = "['params']['backbone']['conv1']['kernel']"


def warm_start(workdir: str, variables: dict) -> dict:
    """`variables` (a fresh model's) with the arrays of `workdir`'s latest checkpoint.

    Every array must match in shape, except the input convolution's kernel, which may
    have fewer input channels in the checkpoint: the missing ones get zero weights, so
    the widened network computes what the trained one did until it learns to use them.

    Raises:
      FileNotFoundError (no checkpoint), CheckpointMismatchError naming the array.
    """
    run = load(workdir)
    src = {"params": run.variables["params"], "batch_stats": run.variables.get("batch_stats", {})}
    have = dict(
        (jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(src)[0]
    )
    where = f"train.init_from={workdir!r} (step {run.step})"

    def take(path, x):
        key = jax.tree_util.keystr(path)
        if key not in have:
            raise CheckpointMismatchError(f"{where} lacks {key}, which the model has")
        got = np.asarray(have.pop(key))
        if got.shape == x.shape:
            return got.astype(x.dtype)
        widen = key == INPUT_KERNEL and got.shape[:2] + got.shape[3:] == x.shape[:2] + x.shape[3:]
        if widen and got.shape[2] < x.shape[2]:
            out = np.zeros(x.shape, x.dtype)
            out[:, :, : got.shape[2]] = got
            return out
        raise CheckpointMismatchError(
            f"{where}: {key} has shape {got.shape} there, the model expects {x.shape} "
            "(only the input convolution may gain input channels)"
        )

    out = jax.tree_util.tree_map_with_path(take, {k: variables.get(k, {}) for k in src})
    if have:
        raise CheckpointMismatchError(f"{where} has {sorted(have)[0]}, which the model lacks")
    return {**variables, **out}
