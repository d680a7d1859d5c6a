"""Devices and hosts: the data-parallel mesh, shardings and multi-host start-up.

Data parallelism is expressed with one mesh axis, "data", over every device of every
process, and `jax.jit` with `NamedSharding`s: the batch is split along its leading
axis, the train state is replicated, and XLA inserts the gradient all-reduce. This is
what `pmap` used to do; it also makes BatchNorm statistics global over the batch, so a
run on N devices computes what a run on one device computes.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(dist_config) -> None:
    """Calls `jax.distributed.initialize` when the config asks for it.

    With an empty `coordinator_address` JAX auto-detects the cluster (Slurm, Open MPI,
    TPU pods); on CPU, `cpu_collectives="gloo"` enables cross-process collectives.
    Must run before anything touches a device.
    """
    if not dist_config.initialize:
        return
    if dist_config.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", dist_config.cpu_collectives)
    kwargs = {}
    if dist_config.coordinator_address:
        kwargs["coordinator_address"] = dist_config.coordinator_address
    if dist_config.num_processes > 0:
        kwargs["num_processes"] = dist_config.num_processes
    if dist_config.process_id >= 0:
        kwargs["process_id"] = dist_config.process_id
    jax.distributed.initialize(**kwargs)
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def make_mesh() -> Mesh:
    """A 1-D mesh over all devices of all processes."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Process-local numpy batch -> global arrays split along the batch axis.

    Each process passes its own slice of the global batch (its data shard); only the
    numeric arrays travel to the devices.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.dtype.kind in "biuf":
            out[k] = jax.make_array_from_process_local_data(sharding, v)
    return out


def replicate(tree, mesh: Mesh):
    """Puts a host pytree on every device (identical on every process)."""
    return jax.device_put(tree, replicated(mesh))


def local_mesh() -> Mesh:
    """A mesh over this process's devices only (evaluation and prediction)."""
    return Mesh(np.asarray(jax.local_devices()), (DATA_AXIS,))


def to_local(variables, mesh: Mesh):
    """Replicated global arrays -> arrays replicated on this process's devices."""

    def local(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = x.addressable_data(0)
        return jax.device_put(np.asarray(x), NamedSharding(mesh, P()))

    return jax.tree.map(local, variables)
