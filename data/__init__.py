"""Datasets by name. `load_dataset(data_config) -> Dataset`; batches come from `data.pipeline`.

Offline by default: `digits` ships inside scikit-learn. TFDS datasets (`cifar10`, `mnist`,
`fashion_mnist`) are read through `tfds.data_source` (array_record, random access, no
TensorFlow needed to read; preparing an image dataset once needs TensorFlow, see README).
"""

from __future__ import annotations

from typing import Callable

from errors import ConfigError
from data import digits, sequences, text, tfds_images
from data.base import ArraySplit, Dataset, Split  # noqa: F401  (re-exported)

DATASETS: dict[str, Callable[..., Dataset]] = {
    'digits': digits.load,
    'digits_hard': digits.load_hard,
    'digits_rows': sequences.load_digits_rows,
    'mnist1d': sequences.load_mnist1d,
    'tiny_text': text.load_tiny_text,
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
  if data_config.get('variable_length', False):
    if ds.kind == 'image':
      raise ConfigError(f'data.variable_length needs a sequence dataset; {data_config.name!r} '
                        'holds images')
    ds = sequences.variable_length(ds, data_config.min_length, seed)
  return ds
