"""Devices: multi-host start-up, the data-parallel mesh, and host batches → global arrays.

    initialize_distributed()            # no-op on one process
    mesh = make_mesh()                   # every device on one 'data' axis
    batch = to_global(host_batch, mesh)  # each process contributes its rows

The train state is replicated (`replicated(mesh)`) and batches are split along
their first axis (`batch_sharding(mesh)`). Steps are compiled once by `jax.jit`
with these shardings; XLA inserts the gradient all-reduce. This is the
jit + `NamedSharding` design that replaces `jax.pmap` (now in maintenance mode
and itself implemented on jit + shard_map): the same code runs on one CPU,
eight fake devices, a GPU host or a TPU pod slice.
"""

from __future__ import annotations

import os

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from vision.config import ConfigError

DATA_AXIS = "data"

# Environments in which jax.distributed.initialize() finds the cluster itself.
_CLUSTER_VARIABLES = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE")


def initialize_distributed() -> None:
  """Joins the other processes of a multi-host run; does nothing for one process.

  Explicit set-up uses JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID; SLURM, Open MPI and Cloud TPU are detected by JAX itself.
  """
  if jax.distributed.is_initialized():
    return
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=_int_variable("JAX_NUM_PROCESSES"),
        process_id=_int_variable("JAX_PROCESS_ID"))
  elif _is_multiprocess_cluster():
    jax.distributed.initialize()


def _int_variable(name: str) -> int:
  value = os.environ.get(name)
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ConfigError(
        f"environment variable {name} is {value!r}: with JAX_COORDINATOR_ADDRESS set, "
        "JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers (see README, 'Multi-host')"
    ) from None


def _is_multiprocess_cluster() -> bool:
  if "SLURM_JOB_ID" in os.environ:
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1
  return any(name in os.environ for name in _CLUSTER_VARIABLES[1:])


def make_mesh() -> Mesh:
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree, mesh: Mesh):
  """Host values identical on every process → arrays replicated over the whole mesh.

  (`jax.device_put` cannot target devices of other processes.)
  """
  sharding = replicated(mesh)

  def put(value):
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
      data = put(jax.random.key_data(value))
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
    return jax.make_array_from_process_local_data(sharding, np.asarray(value))

  return jax.tree.map(put, tree)


def to_global(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of a batch → one global array per key, split over devices."""
  sharding = batch_sharding(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, value)
          for key, value in host_batch.items()}


def to_host(array: jax.Array) -> np.ndarray:
  """A (possibly multi-host) global array, gathered in full on every process."""
  if jax.process_count() == 1:
    return np.asarray(array)
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def must_block_each_step() -> bool:
  # Back-to-back collectives on several CPU devices can deadlock under load;
  # waiting for each step avoids it (see README, "Environment").
  return jax.default_backend() == "cpu" and jax.device_count() > 1


def is_main_process() -> bool:
  return jax.process_index() == 0
