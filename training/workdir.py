"""A workdir is a run: its resolved config, status, checkpoints and TensorBoard events.

Everything here can be read back without running a model: `config.json` (the config as given),
`resolved.json` (what its `auto` speed choices became, on which backend and devices),
`status.json` (running / finished / diverged / interrupted / failed, step, metrics, error).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ml_collections

from errors import ConfigError

CONFIG_FILE = 'config.json'
STATUS_FILE = 'status.json'
RESOLVED_FILE = 'resolved.json'   # what `auto` speed choices became, and on which backend


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON types (tuples become lists), so it round-trips through JSON."""
  return json.loads(config.to_json())


def flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


# Keys added to the configs after runs may have been written, with the value that reproduces
# what those runs did: an old workdir without the key reads as having this value.
# (model.conv_wgrad and model.fusion_barriers only change how XLA computes: every value computes
# the same function, up to rounding.)
LATER_KEYS = {'model.compute_dtype': 'float32', 'model.conv_wgrad': 'auto',
              'model.fusion_barriers': 'auto',
              'optimizer.weight_decay_on': 'matrices', 'model.activation': 'gelu_tanh'}


def with_later_keys(d: dict, only: set | None = None) -> dict:
  """`d` with each of LATER_KEYS it lacks (those in `only`, when given) set to its old value."""
  d = json.loads(json.dumps(d))
  for key, value in LATER_KEYS.items():
    if only is not None and key not in only:
      continue
    *path, last = key.split('.')
    node = d
    for p in path:
      node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict) and last not in node:
      node[last] = value
  return d


def config_diff(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """Keys whose values differ: {key: (old, new)}; a missing key shows as '<absent>' (unless it
  is one of LATER_KEYS that the new config has: read as its old default)."""
  new = flatten(new)
  old = flatten(with_later_keys(old, only=set(new)))
  return {k: (old.get(k, '<absent>'), new.get(k, '<absent>'))
          for k in sorted(set(old) | set(new)) if old.get(k, '<absent>') != new.get(k, '<absent>')}


def read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def is_primary() -> bool:
  """Multi-host: only process 0 writes a workdir's files (orbax coordinates checkpoints)."""
  import jax
  return jax.process_index() == 0


def write_json_atomic(path: str, obj: dict) -> None:
  """Write to a temporary file and rename: a reader never sees half a file. Process 0 only."""
  if not is_primary():
    return
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  d = read_json(os.path.join(workdir, CONFIG_FILE))
  if d is None:
    raise ConfigError(f'{workdir} holds no run ({CONFIG_FILE} not found)')
  return ml_collections.ConfigDict(with_later_keys(d))


def read_status(workdir: str) -> dict | None:
  return read_json(os.path.join(workdir, STATUS_FILE))


def write_status(workdir: str, state: str, **fields) -> None:
  write_json_atomic(os.path.join(workdir, STATUS_FILE),
                    {'state': state, 'time': time.time(), **fields})
