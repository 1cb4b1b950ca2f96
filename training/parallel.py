"""Data parallelism with jax.sharding: one Mesh over all devices, the batch split along its
'data' axis, everything else replicated. The steps are ordinary jitted functions
(training/step.py): XLA's SPMD partitioner inserts the gradient all-reduce (and, for BatchNorm
with global statistics, the all-reduces of the statistics)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from errors import ConfigError

def data_mesh(devices=None) -> Mesh:
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), ('data',))


def check_batch(batch_size: int, mesh: Mesh) -> None:
  if batch_size % mesh.size:
    raise ConfigError(f'data.batch_size {batch_size} must be divisible by the {mesh.size} '
                      'devices it is split over')


def data_sharding(mesh: Mesh, population: int = 1) -> NamedSharding:
  """Batches split along the mesh's 'data' axis (axis 1 when a population of seeds leads)."""
  return NamedSharding(mesh, P('data') if population == 1 else P(None, 'data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch, mesh: Mesh, population: int = 1):
  """Splits the batch axis over the mesh (axis 1 when a population of seeds leads).

  Every process computes the same global batch (a pure function of seed and step); with several
  processes (multi-host) each one contributes only its own contiguous slice of it.
  """
  axis = 0 if population == 1 else 1
  sharding = data_sharding(mesh, population)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)

  def local(x):
    n = x.shape[axis] // jax.process_count()
    part = np.take(x, np.arange(jax.process_index() * n, (jax.process_index() + 1) * n), axis)
    return jax.make_array_from_process_local_data(sharding, part)
  return jax.tree.map(local, batch)


def maybe_initialize_distributed(config) -> None:
  """Multi-host: `config.distributed=True` calls jax.distributed.initialize() (which reads the
  cluster from the environment: Slurm, TPU pods, or JAX_COORDINATOR_ADDRESS etc.)."""
  if config.get('distributed', False):
    jax.distributed.initialize()


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))
