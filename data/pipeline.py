"""Training batches as a pure function of (seed, step), computed where the step runs.

The order of examples in epoch e is `jax.random.permutation(key(seed, ORDER, e), n)`; the
dataset's own train transform (digits_hard) of step s draws from `key(seed, TRANSFORM, s)`, the
augmentation from `key(seed, AUGMENT, s)`, with `key(seed, stream, i)` = `fold_in(fold_in(
jax.random.key(seed), stream), i)` (threefry: the same numbers on every backend). Epochs drop the
last partial batch. Nothing depends on how many steps ran before in this process, so a resumed
run sees exactly the same data.

Three places compute the same batches (`data.pipeline`; `auto`: `AUTO` below):
- `device`: the training split is placed on the devices once in its stored form (TFDS images as
  uint8), and each step's gather, decode, transform and augmentation run in one jitted function
  on the devices (`DeviceBatches`): the host only dispatches it, and an accelerator never waits
  for the host's CPU.
- `host`: the host gathers the step's examples (`TrainBatches`, in a background thread one batch
  ahead) and the same jitted functions finish them on the host's CPU device; for data that does
  not fit on the devices. With several processes, each makes the global batch and keeps its own
  contiguous share (`share`), so the global batch is the one a single process reads.
- `stream` (data/stream.py): for data too large to hold (`Dataset.streamed`: `auto` takes it
  for those): each process reads only its rows' records, through Grain worker processes, ahead
  of the step, and sends them as stored (uint8) to the devices, where they are finished as on
  the `device` place.
All give bit-identical batches (tests/test_data.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from data.base import Split, decoder, stored
from errors import ConfigError

ORDER, AUGMENT, TRANSFORM = 0, 1, 2
PLACES = ('auto', 'device', 'host', 'stream')
# what `auto` is on each backend: the place measured to be faster there (python -m
# benchmarks.run --only=data). CPU: neither (the default experiment's step runs at the same
# rate fed either way; a CIFAR-shaped crop_flip batch of 128 took 1.2-1.5 ms on the host vs
# 0.7-1.0 ms as the device's jitted gather on a quiet 2-core machine, 0.9 vs 2.2 ms on a busy
# one), so the host, as before. GPU and TPU: not measured yet, so host until the suite has run
# there.
AUTO = {'cpu': 'host'}


def resolve(place: str, backend: str, streamed: bool = False) -> str:
  """Where the batches are made: `place`, or what `auto` is on `backend` (`stream` for a
  dataset too large to hold, `streamed`). The device place holds the whole training split on
  the devices: refused for such a dataset."""
  if place == 'device' and streamed:
    raise ConfigError('data.pipeline=device holds the whole training split on the devices; '
                      'this dataset streams (data.pipeline=stream, or auto)')
  if place == 'auto':
    return 'stream' if streamed else AUTO.get(backend, 'host')
  return place


def key_of(seed, stream: int, i):
  """The random key of `stream` (ORDER / AUGMENT / TRANSFORM) at epoch or step `i`."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), i)


def _offsets(key, pad: int, n: int):
  """Per-image (dy, dx) in [0, 2 pad]."""
  return jax.random.randint(key, (2, n), 0, 2 * pad + 1)


def _crops(padded, dy, dx, h: int, w: int):
  return jax.vmap(lambda x, y, z: jax.lax.dynamic_slice(x, (y, z, 0), (h, w, x.shape[-1])))(
      padded, dy, dx)


def crop_flip(images, key, pad: int = 4):
  """Random crop from a zero-padded image and random horizontal flip (He et al. 2016)."""
  n, h, w, _ = images.shape
  offset_key, flip_key = jax.random.split(key)
  dy, dx = _offsets(offset_key, pad, n)
  flip = jax.random.uniform(flip_key, (n,)) < 0.5
  out = _crops(jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0))), dy, dx, h, w)
  return jnp.where(flip[:, None, None, None], out[:, :, ::-1], out)


def shift(images, key, pad: int = 1):
  """Each image moved by a random whole number of pixels in [-pad, pad] each way, the edge
  pixels repeated into the space it leaves (`shift1`: He et al.'s crop augmentation scaled to
  8x8 digits; no flip: a mirrored digit is another symbol, and the edge, not zero, fills in
  because zero is the standardized mean, not the background). Offsets as `crop_flip`'s."""
  n, h, w, _ = images.shape
  dy, dx = _offsets(key, pad, n)
  return _crops(jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='edge'),
                dy, dx, h, w)


AUGMENTATIONS: dict[str, Callable | None] = {'none': None, 'crop_flip': crop_flip,
                                             'shift1': shift}


def check(name: str, place: str) -> None:
  if name not in AUGMENTATIONS:
    raise ConfigError(f'unknown augmentation {name!r}; valid: {", ".join(AUGMENTATIONS)}')
  if place not in PLACES:
    raise ConfigError(f'unknown data.pipeline {place!r}; valid: {", ".join(PLACES)}')


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How the batch of (seed, step) is made from the stored training examples (pure, jittable).
  transform: the dataset's `train_transform` (before `augment`); decode: the split's stored
  form to the model's inputs (TFDS uint8 images to standardized floats), or None."""
  n: int
  batch_size: int
  augment: str = 'none'
  transform: Callable | None = None
  decode: Callable | None = None

  def __post_init__(self):
    check(self.augment, 'device')
    if self.batch_size > self.n:
      raise ConfigError(f'batch size {self.batch_size} exceeds the {self.n} training examples')

  @property
  def steps_per_epoch(self) -> int:
    return self.n // self.batch_size

  def order(self, seed, epoch):
    """The order of the training examples in `epoch` (a sort of n random keys: made once per
    epoch, not per step; 50,000 examples take 50 ms on a 2-core CPU)."""
    return jax.random.permutation(key_of(seed, ORDER, epoch), self.n)

  def epoch(self, step: int) -> int:
    return step // self.steps_per_epoch

  def indices(self, order, step):
    """The examples of `step`, from its epoch's `order`."""
    i = step % self.steps_per_epoch
    return jax.lax.dynamic_slice(order, (i * self.batch_size,), (self.batch_size,))

  def finish(self, examples: dict, seed, step) -> dict:
    """The step's batch from its stored examples: decoded, transformed and augmented."""
    batch = dict(self.decode(examples) if self.decode is not None else examples)
    if self.transform is not None:
      batch['inputs'] = self.transform(batch['inputs'], key_of(seed, TRANSFORM, step))
    augment = AUGMENTATIONS[self.augment]
    if augment is not None:
      batch['inputs'] = augment(batch['inputs'], key_of(seed, AUGMENT, step))
    return batch

  def make(self, examples: dict, order, seed, step) -> dict:
    """The whole batch of (seed, step), from every stored training example and the order of
    the step's epoch."""
    picked = self.indices(order, step)
    return self.finish({k: v[picked] for k, v in examples.items()}, seed, step)


def recipe(split: Split, batch_size: int, augment: str = 'none', transform=None) -> Recipe:
  return Recipe(len(split), batch_size, augment, transform, decoder(split))


def host_device():
  """Where the host path computes (the CPU, also on an accelerator machine)."""
  return jax.local_devices(backend='cpu')[0]   # this process's (with several: its own)


@functools.lru_cache(maxsize=16)
def _host_functions(r: Recipe):
  """The host path's jitted order and finish of a recipe, shared by equal recipes (the seeds
  of a population, the processes' shares in the tests): compiled once."""
  return jax.jit(r.order), jax.jit(r.finish)


class EpochOrders:
  """The order of the training examples in each epoch in use, made by the recipe's jitted
  `order` on the host's CPU device (each epoch once; epochs more than one away are dropped)."""

  def __init__(self, r: Recipe, seed: int):
    self.recipe, self.seed = r, seed
    self._order = _host_functions(r)[0]
    self._orders: dict[int, np.ndarray] = {}

  def indices(self, step: int) -> np.ndarray:
    """The examples of `step`."""
    epoch = self.recipe.epoch(step)
    if epoch not in self._orders:
      with jax.default_device(host_device()):
        order = np.asarray(self._order(np.uint32(self.seed), np.int32(epoch)))
      self._orders = {e: o for e, o in self._orders.items() if abs(e - epoch) <= 1}
      self._orders[epoch] = order
    i = step % self.recipe.steps_per_epoch
    b = self.recipe.batch_size
    return self._orders[epoch][i * b:(i + 1) * b]


class TrainBatches:
  """The host path: `batches(step)` -> this process's share of the step's batch, as numpy;
  `batches.prefetch(start, stop)` iterates, one batch ahead in a background thread. Every
  process makes the whole global batch and keeps its rows: a share computed alone can round
  differently (XLA vectorizes another shape differently), and the global batch must not depend
  on how many processes read it."""

  def __init__(self, split: Split, batch_size: int, seed: int, augment: str = 'none',
               share: tuple[int, int] = (0, 1), transform=None):
    """transform: the dataset's `train_transform` (applied to every batch, before `augment`)."""
    self.recipe = recipe(split, batch_size, augment, transform)
    self.split, self.batch_size, self.seed = split, batch_size, seed
    self.rows = share_rows(batch_size, share)   # of each global batch, what this process reads
    self.steps_per_epoch = self.recipe.steps_per_epoch
    self._make = _host_functions(self.recipe)[1]
    self._orders = EpochOrders(self.recipe, seed)

  def indices(self, step: int) -> np.ndarray:
    return self._orders.indices(step)

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    examples = stored(self.split, self.indices(step))
    with jax.default_device(host_device()):
      batch = self._make(examples, np.uint32(self.seed), np.int32(step))
      return jax.device_get({k: v[self.rows] for k, v in batch.items()})

  def prefetch(self, start: int, stop: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    return prefetch(self, start, stop)


class DeviceBatches:
  """The device path: the stored training split on the devices (replicated over the mesh); the
  batch of each seed at `step` gathered and finished there by one jitted function, split over
  the mesh like every batch (a leading axis of seeds when there are several). `splits`: each
  seed's training split; stored once when they are the same examples (variable-length data
  differs per seed: then one copy per seed)."""

  def __init__(self, splits: list[Split], batch_size: int, seeds: list[int], mesh,
               augment='none', transform=None):
    from training import parallel   # data/ does not import training/ at module level
    self.recipe = recipe(splits[0], batch_size, augment, transform)
    rep = parallel.replicated(mesh)
    every = [stored(s, np.arange(len(s))) for s in splits]
    shared = all(_same(every[0], e) for e in every[1:])
    examples = every[0] if shared else jax.tree.map(lambda *x: np.stack(x), *every)
    self.examples = parallel.replicate(examples, mesh)
    self.seeds = jax.device_put(np.asarray(seeds if len(seeds) > 1 else seeds[0], np.uint32),
                                rep)
    self._rep = rep
    several = len(seeds) > 1
    order = jax.vmap(self.recipe.order, (0, None)) if several else self.recipe.order
    self._order = jax.jit(order, out_shardings=rep)
    self._orders: dict = {}   # epoch -> its order on the devices (made there, asynchronously)
    make = (jax.vmap(self.recipe.make, (None if shared else 0, 0, 0, None)) if several
            else self.recipe.make)
    self._make = jax.jit(make, out_shardings=parallel.data_sharding(mesh, len(seeds)))

  def __call__(self, step: int) -> dict:
    epoch = self.recipe.epoch(step)
    if epoch not in self._orders:
      self._orders = {epoch: self._order(self.seeds, self._scalar(epoch))}
    return self._make(self.examples, self._orders[epoch], self.seeds, self._scalar(step))

  def _scalar(self, i: int):
    return jax.device_put(np.int32(i), self._rep)

  def prefetch(self, start: int, stop: int) -> Iterator[tuple[int, dict]]:
    """Dispatched in this thread (asynchronously: the host does not wait for the batch)."""
    return ((step, self(step)) for step in range(start, stop))

  def stored_bytes(self) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(self.examples))


def _same(a: dict, b: dict) -> bool:
  return a.keys() == b.keys() and all(
      a[k] is b[k] or (a[k].shape == b[k].shape and np.array_equal(a[k], b[k])) for k in a)


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
