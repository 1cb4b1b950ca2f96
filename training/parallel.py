"""Data parallelism with jax.sharding: one Mesh over all devices, the batch split along its
'data' axis, everything else replicated. The steps are ordinary jitted functions
(training/step.py): XLA's SPMD partitioner inserts the gradient all-reduce (and, for BatchNorm
with global statistics, the all-reduces of the statistics)."""

from __future__ import annotations

import os

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


def shard_batch(batch, mesh: Mesh, population: int = 1, local: bool = False):
  """Splits the batch axis over the mesh (axis 1 when a population of seeds leads).

  With several processes (multi-host) each one contributes its own contiguous share of the
  global batch: `batch` is that share when `local` (what data/pipeline.py reads), else the
  whole global batch, sliced here.
  """
  axis = 0 if population == 1 else 1
  sharding = data_sharding(mesh, population)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  if local:
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)

  def local_part(x):
    n = x.shape[axis] // jax.process_count()
    part = np.take(x, np.arange(jax.process_index() * n, (jax.process_index() + 1) * n), axis)
    return jax.make_array_from_process_local_data(sharding, part)
  return jax.tree.map(local_part, batch)


def maybe_initialize_distributed(config, num_processes: int | None = None,
                                 process_id: int | None = None, peer_timeout: int = 60) -> None:
  """Multi-process: with `config.distributed=True`, jax.distributed.initialize(), before any
  device is queried (no module of this project initializes a JAX backend on import).

  The cluster comes from the environment: Slurm (SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID, ...:
  one process per task) or a TPU pod; or, for a plain multi-node launch, JAX_COORDINATOR_ADDRESS
  (host:port of process 0) with `num_processes` and `process_id` (train.py's flags).
  `peer_timeout`: seconds without a heartbeat from a peer before the others stop
  (training/peers.py; JAX's own heartbeat time-out is set longer).
  """
  if not config.distributed:
    return
  from training import peers
  peers.timeout_seconds = peer_timeout
  kwargs = {'heartbeat_timeout_seconds': peers.jax_heartbeat_timeout(peer_timeout)}
  if num_processes is not None or process_id is not None:
    address = os.environ.get('JAX_COORDINATOR_ADDRESS')
    if not address or num_processes is None or process_id is None:
      raise ConfigError('a launch without Slurm needs JAX_COORDINATOR_ADDRESS=host:port and '
                        'both --num_processes and --process_id')
    kwargs.update(coordinator_address=address, num_processes=num_processes,
                  process_id=process_id)
  jax.distributed.initialize(**kwargs)


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))
