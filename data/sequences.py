"""Sequence datasets: (batch, time, features) inputs with a (batch, time) mask, True = real.

- `mnist1d` (Greydanus 2020): generated locally by the `mnist1d` package (no download) and
  cached as .npz; 4000 train / 1000 test sequences of length 40, 10 classes.
- `digits_rows`: the 8x8 digits read row by row, 8 steps of 8 features (a tiny smoke set).
- `variable_length`: wraps any sequence split; example i keeps its first L_i steps and is
  right-padded with zeros. L_i is drawn from [min_length, T] by default_rng([seed, split, ...]),
  a pure function of (seed, example index).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random

import numpy as np

from data import digits
from data.base import ArraySplit, Dataset, Split
from errors import ConfigError

DEFAULT_CACHE = os.path.join(os.path.expanduser('~'), '.cache', 'normlab')
LENGTHS = 2  # stream tag for numpy seeding (0, 1 are the batch order and augmentation)


def _mnist1d_arrays(cache_dir: str) -> dict[str, np.ndarray]:
  from mnist1d.data import get_dataset_args, make_dataset
  args = vars(get_dataset_args()).copy()
  args.pop('url', None)
  key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
  path = os.path.join(cache_dir, f'mnist1d_{key}.npz')
  if os.path.exists(path):
    with np.load(path) as f:
      return dict(f)
  # make_dataset reseeds numpy's and Python's global RNGs: keep ours as they were.
  np_state, py_state = np.random.get_state(), random.getstate()
  try:
    ds = make_dataset(get_dataset_args())
  finally:
    np.random.set_state(np_state)
    random.setstate(py_state)
  arrays = {k: np.asarray(ds[k]) for k in ('x', 'y', 'x_test', 'y_test')}
  os.makedirs(cache_dir, exist_ok=True)
  tmp = f'{path}.{os.getpid()}.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return arrays


def _sequence_split(x: np.ndarray, y: np.ndarray) -> ArraySplit:
  return ArraySplit({'inputs': x.astype(np.float32), 'targets': y.astype(np.int32),
                     'mask': np.ones(x.shape[:2], bool)})


def load_mnist1d(data_config) -> Dataset:
  a = _mnist1d_arrays(data_config.data_dir or DEFAULT_CACHE)
  mean, std = a['x'].mean(), a['x'].std()
  norm = lambda x: ((x - mean) / std)[..., None]   # (n, 40) -> (n, 40, 1)
  return Dataset(train=_sequence_split(norm(a['x']), a['y']),
                 test=_sequence_split(norm(a['x_test']), a['y_test']),
                 num_classes=10, input_shape=(40, 1), kind='sequence')


def load_digits_rows(data_config) -> Dataset:
  ds = digits.load(data_config)
  def rows(split):
    arrays = split.get(np.arange(len(split)))
    return _sequence_split(arrays['inputs'][..., 0], arrays['targets'])  # (n, 8 rows, 8)
  return Dataset(train=rows(ds.train), test=rows(ds.test), num_classes=10, input_shape=(8, 8),
                 kind='sequence')


@dataclasses.dataclass
class VariableLengthSplit:
  """Cuts example i of `base` to lengths[i] steps; the rest is zero padding, mask False."""
  base: Split
  lengths: np.ndarray

  def __len__(self) -> int:
    return len(self.base)

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    batch = self.base.get(indices)
    steps = np.arange(batch['inputs'].shape[1])
    keep = steps[None, :] < self.lengths[indices][:, None]
    batch['mask'] = batch['mask'] & keep
    batch['inputs'] = np.where(batch['mask'][..., None], batch['inputs'], 0).astype(np.float32)
    return batch


def variable_length(ds: Dataset, min_length: int, seed: int) -> Dataset:
  """Every example of every split gets a length in [min_length, T]; the test split's lengths
  do not depend on the run's seed, so all runs are scored on the same sequences."""
  max_length = ds.input_shape[0]
  if not 1 <= min_length <= max_length:
    raise ConfigError(f'data.min_length must be in [1, {max_length}]; got {min_length}')
  def lengths(split, stream_seed, split_id):
    rng = np.random.default_rng([stream_seed, LENGTHS, split_id])
    return rng.integers(min_length, max_length + 1, size=len(split))
  return dataclasses.replace(
      ds, train=VariableLengthSplit(ds.train, lengths(ds.train, seed, 0)),
      test=VariableLengthSplit(ds.test, lengths(ds.test, 0, 1)))
