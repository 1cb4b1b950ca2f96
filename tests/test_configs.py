"""Every config file: each numeric key has a declared range (the model's from its declaration,
the rest from training.experiment.RANGES), and a value just outside it is refused."""

import pytest

from configs import default


def all_configs():
  """Every config file under configs/, loaded as train.py would (no argument)."""
  import glob
  import os
  from cli import import_file
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
  return {os.path.basename(p): import_file(p, '_config').get_config()
          for p in sorted(glob.glob(os.path.join(root, '*.py')))
          if os.path.basename(p) not in ('common.py', '__init__.py')}


def numeric_keys(config):
  from training import workdir as wd
  return {k: v for k, v in wd.flatten(wd.config_to_dict(config)).items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def ranges() -> dict:
  """{dotted key: (low, high, low_ok)}: training's RANGES and the model keys' declarations."""
  import models
  from training.experiment import RANGES
  declared = {f'model.{k.name}': (k.low, k.high, k.low_ok) for k in models.all_keys()
              if k.low is not None}
  return {**RANGES, **declared}


def test_every_numeric_key_of_every_config_has_a_range():
  for name, config in all_configs().items():
    missing = set(numeric_keys(config)) - set(ranges())
    assert not missing, f'{name}: give these a range: {sorted(missing)}'


def test_values_out_of_range_are_refused_by_the_config_check():
  """Every numeric key of every config: its value as shipped passes, the first value outside
  its range is refused in one line naming the key."""
  from errors import ConfigError
  from training import experiment, parallel
  mesh = parallel.data_mesh()
  checked = 0
  for name, config in all_configs().items():
    experiment.check_config(config, mesh)
    for key, value in numeric_keys(config).items():
      low, high, low_ok = ranges()[key]
      bad = [low if not low_ok else (low - 1 if isinstance(value, int) else low - 0.5)]
      bad += [] if high is None else [high + 1]
      for b in bad:
        broken = config.copy_and_resolve_references()
        with broken.unlocked():
          *path, last = key.split('.')
          node = broken
          for p in path:
            node = node[p]
          node[last] = type(value)(b)
        with pytest.raises(ConfigError, match=key.replace('.', r'\.') + ' must be'):
          experiment.check_config(broken, mesh)
        checked += 1
  assert checked > 50
