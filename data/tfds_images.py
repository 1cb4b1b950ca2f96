"""TFDS image classification datasets, read with `tfds.data_source` (random access).

Reading needs no TensorFlow. Preparing an image dataset once does (TFDS encodes images with
TensorFlow): `pip install tensorflow-cpu` then the first run downloads and prepares it into
array_record. Tests exercise this path with `tfds.testing.mock_data`, never a download.

`imagenet2012` (ILSVRC-2012: 1.28 M training images of every size; TFDS needs the archives
placed in its manual directory once) is too large to hold: it is `streamed` (data.pipeline
auto = stream: Grain workers read each step's records, data/stream.py). Each image is stored
as 224x224 RGB uint8: its shorter side resized to 224 (bilinear, antialiased) and the centre
square kept, in the worker that reads it; crop_flip and the conversion to floats run on the
devices as for every image dataset. Evaluation reads the `validation` split the same way.
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
    'imagenet2012': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
SHAPES = {'cifar10': (32, 32, 3), 'mnist': (28, 28, 1), 'fashion_mnist': (28, 28, 1),
          'imagenet2012': (224, 224, 3)}
# datasets of variable-size images: resized to SHAPES as they are read, and streamed
RESIZED = ('imagenet2012',)
TEST_SPLIT = {'imagenet2012': 'validation'}   # default: test


@dataclasses.dataclass
class TfdsSplit:
  source: object   # a tfds random-access data source
  mean: np.ndarray
  std: np.ndarray
  size: int | None = None   # variable-size images: each stored as size x size (centre_square)

  def __len__(self) -> int:
    return len(self.source)

  def stored(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 images (what the device path holds: a quarter of float32's bytes)."""
    # One record at a time: tfds' mock sources (used by the tests) lack a working __getitems__.
    records = [self.source[int(i)] for i in indices]
    images = [r['image'] if self.size is None else centre_square(r['image'], self.size)
              for r in records]
    return {'inputs': np.stack(images).astype(np.uint8),
            'targets': np.asarray([r['label'] for r in records], dtype=np.int32)}

  def decode(self, examples: dict) -> dict:
    """uint8 to standardized float32 (numpy or jax arrays)."""
    images = examples['inputs'].astype(np.float32) / 255.0
    return {**examples, 'inputs': (images - self.mean) / self.std}

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return self.decode(self.stored(indices))


def centre_square(image: np.ndarray, size: int) -> np.ndarray:
  """An (H, W, C) uint8 image with its shorter side resized to `size` (bilinear, antialiased)
  and the centre size x size square kept (the usual ImageNet evaluation crop, without the
  0.875 margin: the stored form, on which training's crop_flip then runs)."""
  from PIL import Image   # noqa: PLC0415 - only for datasets of variable-size images
  h, w = image.shape[:2]
  scale = size / min(h, w)
  rh, rw = max(size, round(h * scale)), max(size, round(w * scale))
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  resized = np.asarray(pil.resize((rw, rh), Image.BILINEAR, reducing_gap=None))
  top, left = (rh - size) // 2, (rw - size) // 2
  out = resized[top:top + size, left:left + size]
  return out[..., None] if squeeze else out


def loader(name: str):
  def load(data_config) -> Dataset:
    sources = tfds_source.open_splits(name, ['train', TEST_SPLIT.get(name, 'test')], data_config)
    mean, std = (np.asarray(s, np.float32) for s in STATS[name])
    info = sources[0].dataset_info
    size = SHAPES[name][0] if name in RESIZED else None
    train, test = (TfdsSplit(s, mean, std, size) for s in sources)
    return Dataset(train=train, test=test, num_classes=info.features['label'].num_classes,
                   input_shape=SHAPES[name], streamed=name in RESIZED)
  return load
