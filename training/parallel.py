"""Data parallelism with jax.sharding: one Mesh over all devices, the batch split along its
'data' axis, everything else replicated. The train step is an ordinary jitted function: XLA's
SPMD partitioner inserts the gradient all-reduce (and, for BatchNorm with global statistics,
the all-reduces of the statistics).

Also: counting the collectives of a compiled program, to measure what each norm communicates.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from errors import ConfigError

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'collective-permute', 'all-to-all')
DTYPE_BYTES = {'f32': 4, 'f16': 2, 'bf16': 2, 'f64': 8, 's32': 4, 'u32': 4, 's64': 8, 'u64': 8,
               's8': 1, 'u8': 1, 'pred': 1, 's16': 2, 'u16': 2}


def data_mesh(devices=None) -> Mesh:
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), ('data',))


def check_batch(batch_size: int, mesh: Mesh) -> None:
  if batch_size % mesh.size:
    raise ConfigError(f'data.batch_size {batch_size} must be divisible by the {mesh.size} '
                      'devices it is split over')


def shard_batch(batch, mesh: Mesh, population: int = 1):
  """Splits the batch axis over the mesh (axis 1 when a population of seeds leads).

  Every process computes the same global batch (a pure function of seed and step); with several
  processes (multi-host) each one contributes only its own contiguous slice of it.
  """
  axis = 0 if population == 1 else 1
  sharding = NamedSharding(mesh, P('data') if population == 1 else P(None, 'data'))
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
  return jax.device_put(tree, NamedSharding(mesh, P()))


def _shape_bytes(shape_text: str) -> int:
  total = 0
  for dtype, dims in re.findall(r'([a-z]+\d*)\[([\d,]*)\]', shape_text):
    if dtype in DTYPE_BYTES:
      total += DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(',') if d] or [1]))
  return total


def collectives(hlo_text: str) -> list[tuple[str, int]]:
  """(op, bytes of its result) for each collective in an optimized HLO module's text."""
  found = []
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([a-z\-]+)(?:-start)?\(', line)
    if m and m.group(2) in COLLECTIVES:
      found.append((m.group(2), _shape_bytes(m.group(1))))
  return found
