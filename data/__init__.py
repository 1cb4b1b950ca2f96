"""Datasets by name. `load_dataset(data_config) -> Dataset`; batches come from `data.pipeline`.

Offline by default: `digits` ships inside scikit-learn. TFDS datasets (`cifar10`, `mnist`,
`fashion_mnist`) are read through `tfds.data_source` (array_record, random access, no
TensorFlow needed to read; preparing an image dataset once needs TensorFlow, see README).
"""

from __future__ import annotations

from typing import Callable

from errors import ConfigError
from data import digits, tfds_images
from data.base import ArraySplit, Dataset, Split  # noqa: F401  (re-exported)

DATASETS: dict[str, Callable[..., Dataset]] = {
    'digits': digits.load,
    **{name: tfds_images.loader(name) for name in tfds_images.STATS},
}


def check_dataset_name(name: str) -> None:
  if name not in DATASETS:
    raise ConfigError(f'unknown dataset {name!r}; valid datasets: {", ".join(DATASETS)}')


def load_dataset(data_config) -> Dataset:
  check_dataset_name(data_config.name)
  return DATASETS[data_config.name](data_config)
