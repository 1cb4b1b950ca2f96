"""What every dataset provides: random-access splits and a little metadata."""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import numpy as np


class Split(Protocol):
  """A random-access split: `len(split)` examples, `split.get(indices)` -> batch dict."""

  def __len__(self) -> int: ...

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass
class ArraySplit:
  """A split held in memory as numpy arrays with a shared leading axis."""
  arrays: dict[str, np.ndarray]

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[indices] for k, v in self.arrays.items()}


@dataclasses.dataclass
class IndexedSplit:
  """The examples `indices` of another split, in that order (nothing is copied)."""
  base: Split
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return self.base.get(self.indices[indices])


@dataclasses.dataclass
class Dataset:
  train: Split
  test: Split
  num_classes: int       # number of outputs of the model's head
  input_shape: tuple     # one example's `inputs` shape
  task: str = 'classification'   # training.tasks: classification | language_model
  kind: str = 'image'    # image (NHWC) | sequence (batch, time, features) | tokens (batch, time)
  vocab_size: int = 0    # tokens only
  # train inputs transformed afresh at every step (digits_hard): (inputs, rng, rows, total) ->
  # inputs, `rng` drawn from (seed, step) by data.pipeline, `rows` of a batch of `total`
  train_transform: Callable | None = None
  # examples held out of `train` (data.validation_examples): for choosing hyperparameters
  # without looking at the test set
  validation: Split | None = None
