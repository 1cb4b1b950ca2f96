"""What every dataset provides: random-access splits and a little metadata."""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np


class Split(Protocol):
  """A random-access split: `len(split)` examples, `split.get(indices)` -> batch dict."""

  def __len__(self) -> int: ...

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...

  # Optional, for splits stored more compactly than the model reads them (TFDS uint8 images):
  # `stored(indices)` -> the examples as stored; `decode(examples)` -> what `get` returns,
  # written with array methods and operators only, so that it runs on numpy and jax arrays.


def stored(split: Split, indices: np.ndarray) -> dict[str, np.ndarray]:
  """The examples `indices` of `split` in its stored form (what data.pipeline places on the
  devices)."""
  return split.stored(indices) if hasattr(split, 'stored') else split.get(indices)


def decoder(split: Split) -> Callable | None:
  return getattr(split, 'decode', None)


@dataclasses.dataclass
class ArraySplit:
  """A split held in memory as numpy arrays with a shared leading axis."""
  arrays: dict[str, np.ndarray]

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[indices] for k, v in self.arrays.items()}


@dataclasses.dataclass
class Uint8Images(ArraySplit):
  """Images held as uint8 (as TFDS stores them), decoded to floats in [-0.5, 0.5] where the
  batch is made (on the devices, for the device and stream places)."""

  def stored(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return super().get(indices)

  def decode(self, examples: dict) -> dict:
    return {**examples, 'inputs': examples['inputs'].astype(np.float32) / 255.0 - 0.5}

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return self.decode(self.stored(indices))


@dataclasses.dataclass
class IndexedSplit:
  """The examples `indices` of another split, in that order (nothing is copied)."""
  base: Split
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return self.base.get(self.indices[indices])

  def stored(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return stored(self.base, self.indices[indices])

  @property
  def decode(self) -> Callable | None:
    return decoder(self.base)


@dataclasses.dataclass
class Dataset:
  train: Split
  test: Split
  num_classes: int       # number of outputs of the model's head
  input_shape: tuple     # one example's `inputs` shape
  task: str = 'classification'   # training.tasks: classification | language_model
  kind: str = 'image'    # image (NHWC) | sequence (batch, time, features) | tokens (batch, time)
  vocab_size: int = 0    # tokens only
  # train inputs transformed afresh at every step (digits_hard): (inputs, key) -> inputs, in
  # jax, `key` drawn from (seed, step) by data.pipeline
  train_transform: Callable | None = None
  # examples held out of `train` (data.validation_examples): for choosing hyperparameters
  # without looking at the test set
  validation: Split | None = None
  # too large to hold in memory (ImageNet-size): training batches stream (data/stream.py)
  streamed: bool = False


def on_the_host(transform, images, key_parts) -> np.ndarray:
  """A fixed transformed copy made once at load (test and validation copies): computed on the
  CPU whatever the backend, so every platform scores on the same images."""
  with jax.default_device(jax.local_devices(backend='cpu')[0]):   # this process's
    return np.asarray(jax.jit(transform)(jnp.asarray(images), fixed_key(*key_parts)))


def fixed_key(*parts):
  key = jax.random.key(parts[0])
  for p in parts[1:]:
    key = jax.random.fold_in(key, p)
  return key
