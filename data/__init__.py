"""Datasets by name. `load_dataset(data_config) -> Dataset`; batches come from `data.pipeline`.

Offline by default: `digits` ships inside scikit-learn. TFDS datasets (`cifar10`, `mnist`,
`fashion_mnist`) are read through `tfds.data_source` (array_record, random access, no
TensorFlow needed to read; preparing an image dataset once needs TensorFlow, see README).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from errors import ConfigError
from data import digits, sequences, text, tfds_images
from data.base import (ArraySplit, Dataset, IndexedSplit, Split, Uint8Images,  # noqa: F401
                       on_the_host)

DATASETS: dict[str, Callable[..., Dataset]] = {
    'digits': digits.load,
    'digits_hard': digits.load_hard,
    'digits_hard32': digits.load_hard32,
    'digits_rows': sequences.load_digits_rows,
    'mnist1d': sequences.load_mnist1d,
    'tiny_text': text.load_tiny_text,
    'docs_text': text.load_docs_text,
    'imdb_reviews': text.tfds_loader('imdb_reviews', language_model=False),
    'lm1b': text.tfds_loader('lm1b', language_model=True),
    **{name: tfds_images.loader(name) for name in tfds_images.STATS},
}


def check_dataset_name(name: str) -> None:
  if name not in DATASETS:
    raise ConfigError(f'unknown dataset {name!r}; valid datasets: {", ".join(DATASETS)}')


def load_dataset(data_config, seed: int = 0) -> Dataset:
  """The dataset named by `data_config.name`; with `variable_length`, sequences are cut to
  random lengths (a pure function of `seed` and the example index) and right-padded."""
  check_dataset_name(data_config.name)
  ds = DATASETS[data_config.name](data_config)
  if data_config.variable_length:
    if ds.kind == 'image':
      raise ConfigError(f'data.variable_length needs a sequence dataset; {data_config.name!r} '
                        'holds images')
    ds = sequences.variable_length(ds, data_config.min_length, seed)
  if data_config.validation_examples:
    ds = hold_out(ds, data_config.validation_examples)
  return ds


VALIDATION_SEED = 7    # which training examples are held out: the same for every run and seed
VALIDATION_COPIES = 5  # with a per-step train transform (digits_hard): transformed copies of each


def hold_out(ds: Dataset, n: int) -> Dataset:
  """`n` training examples (a fixed random choice) moved to a validation split. Where the
  training inputs are transformed at every step, the validation split holds VALIDATION_COPIES
  fixed transformed copies of each, so it is drawn from the distribution the model trains on."""
  if not 0 < n < len(ds.train):
    raise ConfigError(f'data.validation_examples must be in [1, {len(ds.train) - 1}] (the '
                      f'training split has {len(ds.train)}); got {n}')
  order = np.random.default_rng(VALIDATION_SEED).permutation(len(ds.train))
  held, kept = np.sort(order[:n]), np.sort(order[n:])
  arrays = ds.train.get(held)
  if ds.train_transform is not None:
    arrays = {k: np.repeat(v, VALIDATION_COPIES, axis=0) for k, v in arrays.items()}
    arrays['inputs'] = on_the_host(ds.train_transform, arrays['inputs'],
                                          (VALIDATION_SEED, 1))
  return dataclasses.replace(ds, train=IndexedSplit(ds.train, kept),
                             validation=ArraySplit(arrays))
