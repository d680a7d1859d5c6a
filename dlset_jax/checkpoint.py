"""Checkpoints with orbax: the train state, the data iterator state and the config.

Orbax writes each checkpoint into a temporary directory and renames it when complete,
so a run killed at any moment leaves only whole checkpoints behind; `latest_step`
ignores unfinished ones. Saving is asynchronous (training goes on while the arrays are
written); `close()` waits for the last write.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp


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
