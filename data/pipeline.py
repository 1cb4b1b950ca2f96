"""Batches as a pure function of (seed, step), so a resumed run sees exactly the same data.

The order of examples in epoch e is `default_rng([seed, ORDER, e]).permutation(n)`; the
augmentation of step s draws from `default_rng([seed, AUGMENT, s])`, a dataset's own train
transform (digits_hard) from `default_rng([seed, TRANSFORM, s])`. Epochs drop the last
partial batch. Nothing here depends on how many steps ran before in this process.

With several processes (multi-host), each reads only its own contiguous share of every global
batch (`share=(process_index, process_count)`): the indices and the augmentation's random draws
are those of the whole batch, so the global batch is the same as one process would read.
"""

from __future__ import annotations

import concurrent.futures
from typing import Iterator

import numpy as np

from data.base import Split
from errors import ConfigError

ORDER, AUGMENT, TRANSFORM = 0, 1, 2
AUGMENTATIONS = ('none', 'crop_flip', 'shift1')


def crop_flip(images: np.ndarray, rng: np.random.Generator, pad: int = 4,
              rows: slice = slice(None), total: int | None = None) -> np.ndarray:
  """Random crop from a zero-padded image and random horizontal flip (He et al. 2016).
  `images` are the `rows` of a batch of `total` (the draws are made for the whole batch)."""
  n, h, w, _ = images.shape
  total = n if total is None else total
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  dy, dx = rng.integers(0, 2 * pad + 1, size=(2, total))[:, rows]
  flip = (rng.random(total) < 0.5)[rows]
  out = np.empty_like(images)
  for i in range(n):
    crop = padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    out[i] = crop[:, ::-1] if flip[i] else crop
  return out


def shift(images: np.ndarray, rng: np.random.Generator, pad: int = 1,
          rows: slice = slice(None), total: int | None = None) -> np.ndarray:
  """Each image moved by a random whole number of pixels in [-pad, pad] each way, the edge
  pixels repeated into the space it leaves (`shift1`: He et al.'s crop augmentation scaled to
  8x8 digits; no flip: a mirrored digit is another symbol, and the edge, not zero, fills in
  because zero is the standardized mean, not the background). Draws as `crop_flip`'s."""
  n, h, w, _ = images.shape
  total = n if total is None else total
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='edge')
  dy, dx = rng.integers(0, 2 * pad + 1, size=(2, total))[:, rows]
  return np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


class TrainBatches:
  """`batches(step)` -> the training batch of that step; `batches.prefetch(start, stop)` iterates."""

  def __init__(self, split: Split, batch_size: int, seed: int, augment: str = 'none',
               share: tuple[int, int] = (0, 1), transform=None):
    """transform: the dataset's `train_transform` (applied to every batch, before `augment`)."""
    if augment not in AUGMENTATIONS:
      raise ConfigError(f'unknown augmentation {augment!r}; valid: {", ".join(AUGMENTATIONS)}')
    if batch_size > len(split):
      raise ConfigError(f'batch size {batch_size} exceeds the {len(split)} training examples')
    self.split, self.batch_size, self.seed, self.augment = split, batch_size, seed, augment
    self.transform = transform
    self.rows = share_rows(batch_size, share)   # of each global batch, what this process reads
    self.steps_per_epoch = len(split) // batch_size
    self._epoch, self._order = None, None

  def indices(self, step: int) -> np.ndarray:
    epoch, i = divmod(step, self.steps_per_epoch)
    if epoch != self._epoch:
      self._order = np.random.default_rng([self.seed, ORDER, epoch]).permutation(len(self.split))
      self._epoch = epoch
    return self._order[i * self.batch_size:(i + 1) * self.batch_size]

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    """This process's share of the step's batch (all of it with one process)."""
    batch = self.split.get(self.indices(step)[self.rows])
    if self.transform is not None:
      rng = np.random.default_rng([self.seed, TRANSFORM, step])
      batch['inputs'] = self.transform(batch['inputs'], rng, self.rows, self.batch_size)
    if self.augment == 'crop_flip':
      rng = np.random.default_rng([self.seed, AUGMENT, step])
      batch['inputs'] = crop_flip(batch['inputs'], rng, rows=self.rows, total=self.batch_size)
    elif self.augment == 'shift1':
      rng = np.random.default_rng([self.seed, AUGMENT, step])
      batch['inputs'] = shift(batch['inputs'], rng, rows=self.rows, total=self.batch_size)
    return batch

  def prefetch(self, start: int, stop: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    return prefetch(self, start, stop)


def share_rows(batch_size: int, share: tuple[int, int]) -> slice:
  """Process i of n reads rows [i * b/n, (i + 1) * b/n) of a batch of b."""
  i, n = share
  if batch_size % n:
    raise ConfigError(f'a batch of {batch_size} does not split evenly over {n} processes')
  return slice(i * batch_size // n, (i + 1) * batch_size // n)


def prefetch(batch_of_step, start: int, stop: int) -> Iterator[tuple[int, dict]]:
  """Yields (step, batch_of_step(step)) for start <= step < stop, preparing the next batch in a
  background thread while the current step runs."""
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    future = pool.submit(batch_of_step, start) if start < stop else None
    for step in range(start, stop):
      batch = future.result()
      if step + 1 < stop:
        future = pool.submit(batch_of_step, step + 1)
      yield step, batch


def eval_indices(split: Split, batch_size: int,
                 max_examples: int | None = None) -> Iterator[np.ndarray]:
  """The split in order, as the indices of batches of `batch_size`; the last one may be smaller
  (never padded, so that batch statistics in train mode only ever see real examples)."""
  n = len(split) if max_examples is None else min(max_examples, len(split))
  for start in range(0, n, batch_size):
    yield np.arange(start, min(start + batch_size, n))
