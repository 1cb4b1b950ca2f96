"""ResNets (He et al. 2016) with a switchable norm and a switchable skip connection.

- `CifarResNet`: depth 6n+2 (20/32/44/56/110), three stages of n basic blocks with 16/32/64
  filters, parameter-free "option A" shortcuts (stride-2 subsampling + zero-padded channels),
  as in the paper's CIFAR-10 section (ResNet-20: 0.27M parameters, ResNet-56: 0.85M).
- `ImageNetResNet`: ResNet-18/34 (basic blocks) and 50/101/152 (bottleneck blocks), 7x7 stem,
  projection shortcuts ("option B") where the shape changes.

`residual=False` gives the paper's *plain* nets: the same blocks with the skip removed. The
skip and the norm placement live in `_finish_block`, one place for both block types.

Every block's output passes through `materialize` (unless `fusion_barriers=False`): the same
values, but XLA stores them instead of recomputing the residual stream from the start of its stage
inside later fusions, which made the backward pass quadratic in depth on XLA:CPU (ResNet-110's
gradient cost 13× ResNet-20's for 5.5× the FLOPs; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from errors import ConfigError
from models import conv as conv_lib
from models import norms

# He et al. 2015 ("Delving deep into rectifiers") initialization, as the paper uses.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def materialize(x, token):
  """The identity on `x`, as a boundary XLA does not fuse across, so that `x` is computed once.

  A residual stream is a chain of cheap elementwise ops (norm, add, ReLU) from block to block;
  XLA's fusion duplicates cheap producers into each consumer, and it duplicated the whole chain
  back to the stage's first block into each block's backward fusions (O(depth²) work).
  `lax.optimization_barrier` would say this, but XLA:CPU removes barriers before fusion; a
  conditional is kept. Its predicate comes from `token`, a replicated parameter scalar, so that
  under data parallelism deciding it needs no communication (a predicate read from the
  batch-sharded `x` cost an all-reduce per block). The taken branch returns `x` itself; the
  other (`x + 0.0`, taken only if the parameter is NaN or inf, and equal to x but for the sign
  of zeros) exists because XLA removes a conditional whose branches are identical. Under vmap
  over seeds the predicate is batched and the cond becomes a select.
  """
  return jax.lax.cond(jnp.isfinite(token), lambda v: v, lambda v: v + 0.0, x)


def stem_max_pool(x):
  """torchvision's: 3x3 windows, stride 2, padded 1 on each side with -inf."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _shortcut_a(x, filters: int, strides: int):
  """Option A: identity, subsampled by striding, extra channels zero-padded. No parameters."""
  if strides > 1:
    x = x[:, ::strides, ::strides, :]
  pad = filters - x.shape[-1]
  if pad > 0:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))
  return x


class _Block(nn.Module):
  """Shared by both block types: how the last norm, the skip and the activation combine."""
  filters: int
  strides: int
  residual: bool
  norm: Callable[..., nn.Module]
  conv: Callable[..., nn.Module]
  shortcut: str  # 'A' (CIFAR: pad/subsample) or 'B' (projection where the shape changes)

  def _finish_block(self, x, y, *, train):
    """`y` is the block's last conv output; applies norm -> (+ skip) -> ReLU."""
    y = self.norm()(y, train=train)
    if not self.residual:  # a plain block: the same path, no skip
      return nn.relu(y)
    out_filters = y.shape[-1]
    if self.shortcut == 'A':
      skip = _shortcut_a(x, out_filters, self.strides)
    elif x.shape[-1] != out_filters or self.strides != 1:
      skip = self.conv(out_filters, (1, 1), strides=self.strides, name='proj_conv')(x)
      skip = self.norm(name='proj_norm')(skip, train=train)
    else:
      skip = x
    return nn.relu(y + skip)


class BasicBlock(_Block):
  """conv3x3 -> norm -> relu -> conv3x3 -> norm -> (+ skip) -> relu."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    y = self.conv(self.filters, (3, 3), strides=self.strides)(x)
    y = nn.relu(self.norm()(y, train=train))
    y = self.conv(self.filters, (3, 3))(y)
    return self._finish_block(x, y, train=train)


class BottleneckBlock(_Block):
  """conv1x1 -> norm -> relu -> conv3x3 (stride) -> norm -> relu -> conv1x1 (4x) -> norm -> (+ skip) -> relu."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x), train=train))
    y = self.conv(self.filters, (3, 3), strides=self.strides)(y)
    y = nn.relu(self.norm()(y, train=train))
    y = self.conv(self.filters * 4, (1, 1))(y)
    return self._finish_block(x, y, train=train)


class CifarResNet(nn.Module):
  depth: int = 20
  num_classes: int = 10
  width: int = 16
  residual: bool = True
  norm: Callable[..., nn.Module] = norms.make_norm('batch')
  use_bias: bool = False  # biases are redundant after a norm with a shift; on for norm='none'
  fusion_barriers: bool = True   # see `materialize`; the same function either way (tested)
  dtype: Any = jnp.float32       # compute dtype of convs and the head (params stay float32)
  wgrad_chunk_bytes: int = 0     # > 0: conv weight gradients summed over chunks (models/conv.py)

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del mask  # images have no padding
    conv = _conv(self.use_bias, self.dtype, self.wgrad_chunk_bytes)
    x = x.astype(self.dtype)
    n = (self.depth - 2) // 6
    stem = conv(self.width, (3, 3), name='stem_conv')
    x = stem(x)
    token = stem.variables['params']['kernel'].reshape(-1)[0]   # for `materialize`
    x = nn.relu(self.norm(name='stem_norm')(x, train=train))
    for stage in range(3):
      for i in range(n):
        x = BasicBlock(self.width * 2**stage, 2 if (stage > 0 and i == 0) else 1,
                       self.residual, self.norm, conv, 'A',
                       name=f'stage{stage + 1}_block{i + 1}')(x, train=train)
        x = materialize(x, token) if self.fusion_barriers else x
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x).astype(jnp.float32)


class ImageNetResNet(nn.Module):
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  bottleneck: bool = False
  num_classes: int = 1000
  width: int = 64
  residual: bool = True
  norm: Callable[..., nn.Module] = norms.make_norm('batch')
  use_bias: bool = False
  fusion_barriers: bool = True
  dtype: Any = jnp.float32
  wgrad_chunk_bytes: int = 0

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del mask
    conv = _conv(self.use_bias, self.dtype, self.wgrad_chunk_bytes)
    x = x.astype(self.dtype)
    block = BottleneckBlock if self.bottleneck else BasicBlock
    stem = conv(self.width, (7, 7), strides=2, name='stem_conv')
    x = stem(x)
    token = stem.variables['params']['kernel'].reshape(-1)[0]   # for `materialize`
    x = nn.relu(self.norm(name='stem_norm')(x, train=train))
    x = stem_max_pool(x)
    for stage, size in enumerate(self.stage_sizes):
      for i in range(size):
        x = block(self.width * 2**stage, 2 if (stage > 0 and i == 0) else 1,
                  self.residual, self.norm, conv, 'B',
                  name=f'stage{stage + 1}_block{i + 1}')(x, train=train)
        x = materialize(x, token) if self.fusion_barriers else x
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x).astype(jnp.float32)


def _conv(use_bias: bool, dtype=jnp.float32, wgrad_chunk_bytes=0) -> Callable[..., Any]:
  """`conv(features, kernel_size, strides=1, name=None)`: padded (k - 1) // 2 on every side, as
  He et al. and torchvision. (flax's 'SAME' pads a stride-2 conv over an even input 0 before
  and 1 after, so its outputs would sit one pixel off the option-A shortcut's (2i, 2j).)"""
  impl = conv_lib.chunked_wgrad_conv(wgrad_chunk_bytes) if wgrad_chunk_bytes > 0 else None
  base = functools.partial(nn.Conv, use_bias=use_bias, kernel_init=conv_init, dtype=dtype,
                           conv_general_dilated=impl)

  def conv(features, kernel_size, **kwargs):
    return base(features, kernel_size, padding=[((k - 1) // 2,) * 2 for k in kernel_size],
                **kwargs)

  return conv


def _wgrad_chunk_bytes(cfg, auto_chunks: bool) -> int:
  """`auto` chunks where it was measured faster (models/conv.py): the CIFAR ResNets on a single
  CPU device (+15-17 %; ImageNet ResNet-18 at 64x64, batch 32, gained nothing: 0.505 vs 0.501
  steps/s). With several devices the chunks would cut across the batch's sharding."""
  chunked = cfg.conv_wgrad == 'chunked' or (
      cfg.conv_wgrad == 'auto' and auto_chunks and jax.default_backend() == 'cpu'
      and jax.device_count() == 1)
  return conv_lib.CHUNK_BYTES if chunked else 0


IMAGENET_DEPTHS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False),
                   50: ((3, 4, 6, 3), True), 101: ((3, 4, 23, 3), True),
                   152: ((3, 8, 36, 3), True)}


def _norm_from_config(cfg) -> Callable[..., nn.Module]:
  return norms.from_config(cfg, layout='image')


def _check_images(name, dataset, cfg, downsampling: int, min_size: int):
  """Images only, large enough for the net's downsampling, and no norm that the smallest
  feature map turns into a constant."""
  if dataset.kind != 'image':
    raise ConfigError(f'model {name} needs an image dataset (digits, cifar10, mnist, '
                      f'fashion_mnist); got {dataset.kind} data')
  size = min(dataset.input_shape[:2])
  if size < min_size:
    raise ConfigError(f'model {name} downsamples by {downsampling} and needs images of at least '
                      f'{min_size}x{min_size}; got {size}x{size} (a 3x3 conv on the 1x1 maps it '
                      'would reach sees one tap; use model.name=resnet for small images)')
  final = -(-size // downsampling)   # each stride-2 step (padded as torchvision) rounds up
  if final == 1 and norms.NORMS[cfg.norm].erases_position_mean:
    raise ConfigError(f'norm {cfg.norm} would make {name} ignore its input on {size}x{size} '
                      f'images: its last stage sees 1x1 maps, where {cfg.norm} norm outputs its '
                      'bias whatever the input; use larger images or another norm')


def build_cifar(cfg, dataset) -> CifarResNet:
  _check_images('resnet', dataset, cfg, downsampling=4, min_size=4)
  if cfg.depth < 8 or (cfg.depth - 2) % 6:
    raise ConfigError(f'CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...); '
                      f'got {cfg.depth}')
  return CifarResNet(depth=cfg.depth, num_classes=dataset.num_classes, width=cfg.width,
                     residual=cfg.residual, norm=_norm_from_config(cfg),
                     use_bias=cfg.norm == 'none', dtype=jnp.dtype(cfg.compute_dtype),
                     wgrad_chunk_bytes=_wgrad_chunk_bytes(cfg, auto_chunks=True))


def build_imagenet(cfg, dataset) -> ImageNetResNet:
  _check_images('resnet_imagenet', dataset, cfg, downsampling=32, min_size=32)
  if cfg.depth not in IMAGENET_DEPTHS:
    raise ConfigError(f'ImageNet ResNet depth must be one of {sorted(IMAGENET_DEPTHS)}; '
                      f'got {cfg.depth}')
  stages, bottleneck = IMAGENET_DEPTHS[cfg.depth]
  return ImageNetResNet(stage_sizes=stages, bottleneck=bottleneck, num_classes=dataset.num_classes,
                        width=cfg.width, residual=cfg.residual, norm=_norm_from_config(cfg),
                        use_bias=cfg.norm == 'none', dtype=jnp.dtype(cfg.compute_dtype),
                        wgrad_chunk_bytes=_wgrad_chunk_bytes(cfg, auto_chunks=False))
