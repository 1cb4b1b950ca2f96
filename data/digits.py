"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes): the offline default.

The train/test split is fixed (independent of the run's seed) so every run is scored on the
same 360 test images.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from data.base import ArraySplit, Dataset

NUM_TEST = 360
SPLIT_SEED = 0


def load(data_config) -> Dataset:
  del data_config
  digits = load_digits()
  images = digits.images.astype(np.float32)[..., None] / 16.0   # (1797, 8, 8, 1) in [0, 1]
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
  test, train = order[:NUM_TEST], order[NUM_TEST:]
  mean, std = images[train].mean(), images[train].std()
  images = (images - mean) / std
  return Dataset(
      train=ArraySplit({'inputs': images[train], 'targets': labels[train]}),
      test=ArraySplit({'inputs': images[test], 'targets': labels[test]}),
      num_classes=10, input_shape=(8, 8, 1))
