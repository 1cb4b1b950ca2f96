"""Sweeps as data: a base config plus named axes, expanded into named runs.

A sweep file (experiments/<name>.py) defines `get_sweep(arg=None) -> Sweep`:

    from configs import default
    from experiments.sweeps import Sweep, product, zipped

    def get_sweep(arg=None):
      return Sweep(default.get_config(), [
          product('model.norm', ['batch', 'layer']),
          zipped({'model.depth': [20, 56], 'optimizer.learning_rate': [0.1, 0.05]}),
          product('seed', [0, 1, 2]),
      ])

`product` axes multiply; a `zipped` axis moves its keys together. To sweep over model families
whose configs have different keys, pass a dict of named base configs and an axis over `config`:
`Sweep({'lstm': lstm_cfg, 'transformer': tf_cfg}, [product('config', ['lstm', 'transformer']), ...])`. Each run is named from its
overrides, in axis order (`norm=layer,depth=56,learning_rate=0.05,seed=1`), which is stable:
the same sweep file always gives the same names, so a re-run finds its workdirs again.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import ml_collections

import cli
from errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Axis:
  keys: tuple[str, ...]
  values: tuple[tuple[Any, ...], ...]   # one tuple of values (one per key) per point


def product(key: str, values) -> Axis:
  return Axis((key,), tuple((v,) for v in values))


def zipped(columns: dict[str, list]) -> Axis:
  lengths = {len(v) for v in columns.values()}
  if len(lengths) != 1:
    raise ConfigError(f'zipped axis {list(columns)}: value lists differ in length {sorted(lengths)}')
  return Axis(tuple(columns), tuple(zip(*columns.values())))


@dataclasses.dataclass
class Run:
  name: str
  overrides: dict[str, Any]    # {'model.norm': 'layer', 'seed': 1}
  config: ml_collections.ConfigDict


@dataclasses.dataclass
class Sweep:
  base: ml_collections.ConfigDict | dict[str, ml_collections.ConfigDict]
  axes: list[Axis]

  def keys(self) -> list[str]:
    return [k for axis in self.axes for k in axis.keys]

  def runs(self) -> list[Run]:
    keys = self.keys()
    labels = _short_labels(keys)
    runs = []
    for point in itertools.product(*(axis.values for axis in self.axes)):
      overrides = dict(zip(keys, itertools.chain.from_iterable(point)))
      name = ','.join(f'{labels[k]}={_fmt(v)}' for k, v in overrides.items())
      runs.append(Run(name, overrides, apply_overrides(self._base(overrides, name),
                                                       overrides, name)))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
      raise ConfigError('sweep has duplicate runs: ' + ', '.join(
          sorted({n for n in names if names.count(n) > 1})))
    return runs


  def _base(self, overrides, name):
    if not isinstance(self.base, dict):
      return self.base
    if overrides.get('config') not in self.base:
      raise ConfigError(f'run {name}: a sweep over several base configs needs an axis over '
                        f'`config` with values in {sorted(self.base)}')
    return self.base[overrides['config']]


def _short_labels(keys: list[str]) -> dict[str, str]:
  """The last part of each key, unless two keys share it (then the full key)."""
  last = [k.rsplit('.', 1)[-1] for k in keys]
  return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _fmt(value) -> str:
  text = ('x'.join(map(str, value)) if isinstance(value, (tuple, list)) else str(value))
  return text.replace('/', '_').replace(',', '_').replace(' ', '')


def apply_overrides(base, overrides: dict[str, Any], run_name: str):
  """A copy of `base` with the overrides; an unknown key or a wrongly typed value names the run."""
  config = base.copy_and_resolve_references()
  config.lock()
  for key, value in overrides.items():
    if key == 'config':    # names the base config (Sweep with several bases)
      continue
    node = config
    *path, last = key.split('.')
    try:
      for p in path:
        node = node[p]
      if last not in node:
        raise KeyError(last)
      node[last] = value
    except (KeyError, AttributeError, TypeError) as e:
      raise ConfigError(f'run {run_name}: cannot set {key}={value!r} '
                        f'({type(e).__name__}: {" ".join(str(e).split())})') from None
  return config


def load_sweep(spec: str) -> Sweep:
  """`path/to/sweep.py[:arg]` -> the Sweep its get_sweep returns."""
  path, _, arg = spec.partition(':')
  try:
    module = cli.import_file(path, '_sweep')
  except (FileNotFoundError, OSError) as e:
    raise ConfigError(f'cannot load sweep file {path}: {e.strerror or e}') from None
  return module.get_sweep(arg) if arg else module.get_sweep()
