"""TFDS image classification datasets, read with `tfds.data_source` (random access).

Reading needs no TensorFlow. Preparing an image dataset once does (TFDS encodes images with
TensorFlow): `pip install tensorflow-cpu` then the first run downloads and prepares it into
array_record. Tests exercise this path with `tfds.testing.mock_data`, never a download.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data import tfds_source
from data.base import Dataset

# Per-channel mean and std of the training images in [0, 1], used to standardize inputs.
STATS = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'mnist': ((0.1307,), (0.3081,)),
    'fashion_mnist': ((0.2860,), (0.3530,)),
}
SHAPES = {'cifar10': (32, 32, 3), 'mnist': (28, 28, 1), 'fashion_mnist': (28, 28, 1)}


@dataclasses.dataclass
class TfdsSplit:
  source: object   # a tfds random-access data source
  mean: np.ndarray
  std: np.ndarray

  def __len__(self) -> int:
    return len(self.source)

  def stored(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 images (what the device path holds: a quarter of float32's bytes)."""
    # One record at a time: tfds' mock sources (used by the tests) lack a working __getitems__.
    records = [self.source[int(i)] for i in indices]
    return {'inputs': np.stack([r['image'] for r in records]).astype(np.uint8),
            'targets': np.asarray([r['label'] for r in records], dtype=np.int32)}

  def decode(self, examples: dict) -> dict:
    """uint8 to standardized float32 (numpy or jax arrays)."""
    images = examples['inputs'].astype(np.float32) / 255.0
    return {**examples, 'inputs': (images - self.mean) / self.std}

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return self.decode(self.stored(indices))


def loader(name: str):
  def load(data_config) -> Dataset:
    sources = tfds_source.open_splits(name, ['train', 'test'], data_config)
    mean, std = (np.asarray(s, np.float32) for s in STATS[name])
    info = sources[0].dataset_info
    return Dataset(train=TfdsSplit(sources[0], mean, std), test=TfdsSplit(sources[1], mean, std),
                   num_classes=info.features['label'].num_classes, input_shape=SHAPES[name])
  return load
