"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes): the offline default.

The train/test split is fixed (independent of the run's seed) so every run is scored on the
same 360 test images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from sklearn.datasets import load_digits

from data import base
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


# digits_hard: the same digits at 12x12, each training image transformed afresh at every step
# (a pure function of (seed, step): see data.pipeline) and a fixed test set of TEST_COPIES
# transformed copies of each of the 360 test digits. The strengths below were calibrated once on
# one arm outside every claim's contrast (ResNet-20, GroupNorm, batch 64, SGD lr 0.05, 1000
# steps, seed 0) to land in 85-93 % test accuracy, then frozen (2026-11-25): rotation 30 and
# noise 0.3 gave 70.9 %; rotation 20 and noise 0.15, 90.4 % (test NLL 0.307). Change them and
# every finding on this dataset must be re-run.
#
# digits_hard32: the same at 32x32 (each 8x8 digit upsampled bilinearly), so that 3x3
# convolutions on a ResNet's last stage see an 8x8 map and not a 3x3 one through zero padding
# (at 12x12, 69 % and 44 % of the taps of the two last stages fell on padding). Everything in
# pixels is scaled with the image (shift and bar: 5 pixels), and so is the noise's std (0.4):
# i.i.d. noise over 32/12 times as many pixels per stroke would otherwise average away (the
# first calibration run, with the noise of 12x12, reached 95.5 % at step 800 of 1000, above the
# 85-93 % band). Calibrated once on the same arm as digits_hard, then frozen (2026-12-04): with
# the scaled noise, 90.4 % test accuracy (NLL 0.326) at step 1000 (`python train.py
# --config=configs/default.py --workdir=runs/calib32 --config.data.name=digits_hard32
# --config.model.norm=group --config.data.batch_size=64 --config.optimizer.learning_rate=0.05
# --config.num_train_steps=1000`); with the 12x12 noise, 95.75 % (NLL 0.132).
HARD_SIZE = 12
ROTATE_DEGREES = 20.0      # uniform in [-20, 20]
SHIFT_PIXELS = 2           # uniform integer in [-2, 2] each way, at HARD_SIZE (scaled with it)
BAR_PIXELS = 2             # the bar's width at HARD_SIZE (scaled with the image)
NOISE_STD = 0.15           # additive Gaussian noise, in units of full ink (pixels in [0, 1])
BAR_PROBABILITY = 0.5      # a 2-pixel bar across the image, horizontal or vertical, ink or blank
TEST_COPIES = 10


def rotate(image, degrees):
  """`image` (h, w) rotated by `degrees` about its centre, bilinear, zero outside (as
  scipy.ndimage.rotate(reshape=False, order=1, mode='grid-constant') computes it)."""
  h, w = image.shape
  theta = jnp.deg2rad(degrees)
  y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - (h - 1) / 2,
                      jnp.arange(w, dtype=jnp.float32) - (w - 1) / 2, indexing='ij')
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  source = [cos * y + sin * x + (h - 1) / 2, -sin * y + cos * x + (w - 1) / 2]
  return jax.scipy.ndimage.map_coordinates(image, source, order=1, mode='constant', cval=0.0)


def move(image, dy, dx):
  """`image` (h, w) moved by whole pixels (dy, dx), zero filling what it leaves."""
  h, w = image.shape
  rows, cols = jnp.arange(h) - dy, jnp.arange(w) - dx
  inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
  return jnp.where(inside, image[jnp.clip(rows, 0, h - 1)][:, jnp.clip(cols, 0, w - 1)], 0.0)


def hard_transform(images, key):
  """Rotation, shift, occluding bar and noise of square images in [0, 1] (before
  standardization), in jax: every draw from `key`; pixel sizes scaled from HARD_SIZE."""
  n, h, w, _ = images.shape
  shift_pixels, bar_pixels = (round(p * h / HARD_SIZE) for p in (SHIFT_PIXELS, BAR_PIXELS))
  k = jax.random.split(key, 7)
  angle = jax.random.uniform(k[0], (n,), minval=-ROTATE_DEGREES, maxval=ROTATE_DEGREES)
  shift = jax.random.randint(k[1], (n, 2), -shift_pixels, shift_pixels + 1)
  bar = jax.random.uniform(k[2], (n,)) < BAR_PROBABILITY
  vertical = jax.random.uniform(k[3], (n,)) < 0.5
  where = jax.random.randint(k[4], (n,), 0, h - bar_pixels + 1)
  ink = jax.random.randint(k[5], (n,), 0, 2).astype(jnp.float32)
  noise = NOISE_STD * h / HARD_SIZE * jax.random.normal(k[6], (n, h, w, 1))
  x = jax.vmap(rotate)(images[..., 0].astype(jnp.float32), angle)
  x = jax.vmap(move)(x, shift[:, 0], shift[:, 1])
  line = lambda size: jnp.arange(size)[None, :] - where[:, None]
  band = lambda size: (line(size) >= 0) & (line(size) < bar_pixels)
  across = jnp.where(vertical[:, None, None], band(w)[:, None, :], band(h)[:, :, None])
  x = jnp.where(bar[:, None, None] & across, ink[:, None, None], x)
  return jnp.clip(x[..., None] + noise, -1.0, 2.0)


def load_hard(data_config, size: int = HARD_SIZE) -> Dataset:
  """digits_hard: 1437 training digits (stored clean, standardized; transformed at every step
  by `train_transform`), 3600 fixed transformed test images, at size x size."""
  del data_config
  digits = load_digits()
  small = digits.images.astype(np.float32) / 16.0
  images = ndimage.zoom(small, (1, size / 8, size / 8), order=1)[..., None]
  images = np.clip(images, 0.0, 1.0).astype(np.float32)
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
  test, train = order[:NUM_TEST], order[NUM_TEST:]
  copies = np.repeat(images[test], TEST_COPIES, axis=0)
  test_images = base.on_the_host(hard_transform, copies, (SPLIT_SEED, 1))
  # shuffled, so that a test batch is a sample of the test set (train-mode evaluation
  # normalizes each batch with its own statistics; ten copies of one digit in a row would not)
  shuffle = np.random.default_rng([SPLIT_SEED, 2]).permutation(len(copies))
  test_images, test_labels = test_images[shuffle], np.repeat(labels[test], TEST_COPIES)[shuffle]
  mean, std = images[train].mean(), images[train].std()
  standardize = lambda x: ((x - mean) / std).astype(np.float32)

  def transform(x, key):   # stored standardized (clean); transformed in [0, 1]
    return standardize(hard_transform(x * std + mean, key))

  return Dataset(
      train=ArraySplit({'inputs': standardize(images[train]), 'targets': labels[train]}),
      test=ArraySplit({'inputs': standardize(test_images), 'targets': test_labels}),
      num_classes=10, input_shape=(size, size, 1), train_transform=transform)


def load_hard32(data_config) -> Dataset:
  return load_hard(data_config, 32)
