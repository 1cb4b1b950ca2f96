"""ResNets (He et al. 2016) with a switchable norm and a switchable skip connection.

One module, `ResNet`, and its variants:
- `CifarResNet(depth)`: depth 6n+2 (20/32/44/56/110), three stages of n basic blocks with
  16/32/64 filters, parameter-free "option A" shortcuts (stride-2 subsampling + zero-padded
  channels), as in the paper's CIFAR-10 section (ResNet-20: 0.27M parameters, ResNet-56: 0.85M).
- `ImageNetResNet` with `IMAGENET_VARIANTS[depth]`: ResNet-18/34 (basic blocks) and
  50/101/152 (bottleneck blocks), 7x7 stem, projection shortcuts ("option B") where the shape
  changes.

`residual=False` gives the paper's *plain* nets: the same blocks with the skip removed. The
skip and the norm placement live in `_Block._finish_block`, one place for both block types.

`fusion_barriers`: every block's output passes through `materialize`, the same values stored
once, because XLA:CPU otherwise recomputed the residual stream inside later fusions and the
backward pass grew quadratic in depth (numbers: benchmarks/RESULTS.md).
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
from models import residual as residual_lib

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
  skipinit: bool = False  # the branch times a learnable scalar, init 0 (models/residual.py)
  fixup_scale: float = 0.0  # > 0: Fixup (Zhang et al. 2019) with this factor on the branch's
  #                           He init (all but its last conv, which starts at 0)

  nf: tuple = ()   # NF-ResNet: (alpha, beta): h + alpha * f(h / beta), `_nf_block`

  def _skip(self, x, out_filters: int, project, option_a: bool = True):
    """The skip path: `x` where the block keeps its shape; where it changes, option A's
    subsampling and zero-padding (`shortcut='A'`, when `option_a`) or `project(out_filters)`
    (a 1x1 projection)."""
    if x.shape[-1] == out_filters and self.strides == 1:
      return x
    if self.shortcut == 'A' and option_a:
      return _shortcut_a(x, out_filters, self.strides)
    return project(out_filters)

  def _projection(self, inputs, out_filters: int):
    return self.conv(out_filters, (1, 1), strides=self.strides, name='proj_conv')(inputs)

  def _nf_block(self, x, specs):
    """Brock, De & Smith 2021: h_next = skip + alpha * f(h / beta), beta the expected std of h at
    init (Var h_next = Var h + alpha^2; a transition block, whose skip changes shape, takes the
    skip from the normalized input, so the variance restarts at 1 + alpha^2). f is
    pre-activation: (gamma * relu -> scaled-WS conv) per conv, gamma = NF_RELU_GAIN."""
    alpha, beta = self.nf
    out = nn.relu(x / beta) * NF_RELU_GAIN
    y = out
    for k, (features, kernel, strides) in enumerate(specs):
      if k:
        y = nn.relu(y) * NF_RELU_GAIN
      y = self.conv(features, kernel, strides=strides)(y)
    # transitions always project, as the paper's NF-ResNets (CIFAR's option A would zero-pad
    # half the channels and halve the stream's variance: the beta bookkeeping would not hold)
    skip = self._skip(x, y.shape[-1], lambda n: self._projection(out, n), option_a=False)
    return skip + alpha * y

  def _fixup_bias(self, name):
    return self.param(name, nn.initializers.zeros, ())

  def _fixup_finish(self, x, y, bias_in):
    """The branch's scalar multiplier and bias, the skip (a projection sees the branch's input
    bias too, as in Fixup's code), ReLU."""
    y = y * self.param('fixup_scale', nn.initializers.ones, ()) + self._fixup_bias('bias_out')
    return nn.relu(y + self._skip(x, y.shape[-1], lambda n: self._projection(x + bias_in, n)))

  def _fixup_convs(self, x, specs):
    """Fixup's branch: scalar bias before each conv and activation, He init scaled by
    `fixup_scale`, the last conv initialized to 0 (the block starts as its skip path)."""
    bias_in = self._fixup_bias('bias_in')
    y = x + bias_in
    for k, (features, kernel, strides) in enumerate(specs):
      last = k == len(specs) - 1
      init = (nn.initializers.zeros if last else
              nn.initializers.variance_scaling(2.0 * self.fixup_scale ** 2, 'fan_out', 'normal'))
      y = self.conv(features, kernel, strides=strides, kernel_init=init)(y)
      if not last:
        y = nn.relu(y + self._fixup_bias(f'bias_{k}b')) + self._fixup_bias(f'bias_{k + 1}a')
    return self._fixup_finish(x, y, bias_in)

  def _finish_block(self, x, y, *, train):
    """`y` is the block's last conv output; applies norm -> (+ skip) -> ReLU."""
    y = self.norm()(y, train=train)
    if not self.residual:  # a plain block: the same path, no skip
      return nn.relu(y)
    y = residual_lib.gated(self, y, self.skipinit)
    skip = self._skip(x, y.shape[-1], lambda n: self.norm(name='proj_norm')(
        self._projection(x, n), train=train))
    return nn.relu(y + skip)


class BasicBlock(_Block):
  """conv3x3 -> norm -> relu -> conv3x3 -> norm -> (+ skip) -> relu."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.fixup_scale:
      return self._fixup_convs(x, [(self.filters, (3, 3), self.strides),
                                   (self.filters, (3, 3), 1)])
    if self.nf:
      return self._nf_block(x, [(self.filters, (3, 3), self.strides), (self.filters, (3, 3), 1)])
    y = self.conv(self.filters, (3, 3), strides=self.strides)(x)
    y = nn.relu(self.norm()(y, train=train))
    y = self.conv(self.filters, (3, 3))(y)
    return self._finish_block(x, y, train=train)


class BottleneckBlock(_Block):
  """conv1x1 -> norm -> relu -> conv3x3 (stride) -> norm -> relu -> conv1x1 (4x) -> norm -> (+ skip) -> relu."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    specs = [(self.filters, (1, 1), 1), (self.filters, (3, 3), self.strides),
             (self.filters * 4, (1, 1), 1)]
    if self.fixup_scale:
      return self._fixup_convs(x, specs)
    if self.nf:
      return self._nf_block(x, specs)
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x), train=train))
    y = self.conv(self.filters, (3, 3), strides=self.strides)(y)
    y = nn.relu(self.norm()(y, train=train))
    y = self.conv(self.filters * 4, (1, 1))(y)
    return self._finish_block(x, y, train=train)


class ResNet(nn.Module):
  """Stem -> stages of blocks (the first block of every stage after the first halves the map
  and doubles the filters) -> global average pool -> linear head. The variants below fix the
  stem, block and shortcut; `stage_sizes` the depth."""
  stage_sizes: Sequence[int]
  block: type[_Block] = BasicBlock
  shortcut: str = 'A'            # A: CIFAR's parameter-free shortcut; B: projections
  stem: str = 'cifar'            # cifar: 3x3 conv; imagenet: 7x7/2 conv + 3x3/2 max pool
  num_classes: int = 10
  width: int = 16                # the first stage's filters
  residual: bool = True
  norm: Callable[..., nn.Module] = norms.make_norm('batch')
  use_bias: bool = False  # biases are redundant after a norm with a shift (NormSpec.has_shift)
  fusion_barriers: bool = True   # see `materialize`; the same function either way (tested)
  dtype: Any = jnp.float32       # compute dtype of convs and the head (params stay float32)
  wgrad_chunk_bytes: int = 0     # > 0: conv weight gradients summed over chunks (models/conv.py)
  skipinit: bool = False         # SkipInit: each residual branch times a learnable 0-init scalar
  weight_std: bool = False       # weight-standardized convolutions (`StdConv`)
  fixup: bool = False            # Fixup initialization (no norm): see `_Block._fixup_convs`
  nf_alpha: float = 0.0          # > 0: a Normalizer-Free ResNet with this alpha (`_nf_block`)
  reparam: str = ''              # every conv wrapped in flax's 'weight_norm' or 'spectral_norm'

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del mask  # images have no padding
    conv = _conv(self.use_bias, self.dtype, self.wgrad_chunk_bytes,
                 'scaled' if self.nf_alpha else self.weight_std, self.reparam, train)
    x = x.astype(self.dtype)
    imagenet = self.stem == 'imagenet'
    stem = conv(self.width, (7, 7) if imagenet else (3, 3), strides=2 if imagenet else 1,
                name='stem_conv')
    x = stem(x)
    token = self.variables['params']['stem_conv']['kernel'].reshape(-1)[0]   # for `materialize`
    if not self.nf_alpha:   # NF-ResNets: pre-activation blocks take the stem's output as it is
      x = nn.relu(self.norm(name='stem_norm')(x, train=train))
    if imagenet:
      x = stem_max_pool(x)
    expected_var = 1.0   # NF-ResNets: Var h at init (scaled WS keeps the input's, 1)
    blocks = sum(self.stage_sizes)
    layers = 2 if self.block is BasicBlock else 3   # convs per branch: m in Zhang et al.
    fixup_scale = blocks ** (-1 / (2 * layers - 2)) if self.fixup else 0.0
    for stage, size in enumerate(self.stage_sizes):
      for i in range(size):
        nf = ()
        if self.nf_alpha:
          nf = (self.nf_alpha, expected_var ** 0.5)
          out = self.width * 2**stage * (4 if self.block is BottleneckBlock else 1)
          transition = i == 0 and (stage > 0 or out != x.shape[-1])   # the skip changes shape
          expected_var = (1.0 if transition else expected_var) + self.nf_alpha ** 2
        x = self.block(self.width * 2**stage, 2 if (stage > 0 and i == 0) else 1,
                       self.residual, self.norm, conv, self.shortcut, self.skipinit,
                       fixup_scale, nf, name=f'stage{stage + 1}_block{i + 1}')(x, train=train)
        x = materialize(x, token) if self.fusion_barriers else x
    if self.nf_alpha:   # the pre-activation stream's last activation
      x = nn.relu(x) * NF_RELU_GAIN
    x = jnp.mean(x, axis=(1, 2))
    if self.fixup:   # Fixup: a scalar bias before the head, which starts at 0
      x = x + self.param('head_bias_in', nn.initializers.zeros, ())
    head_init = nn.initializers.zeros if self.fixup else nn.initializers.lecun_normal()
    return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=head_init,
                    name='head')(x).astype(jnp.float32)


def CifarResNet(depth: int = 20, **kwargs) -> ResNet:   # noqa: N802 (a module variant)
  """He et al.'s CIFAR net: depth 6n+2, three stages of n basic blocks, option-A shortcuts."""
  return ResNet(stage_sizes=((depth - 2) // 6,) * 3, **kwargs)


ImageNetResNet = functools.partial(ResNet, shortcut='B', stem='imagenet', num_classes=1000,
                                   width=64)
IMAGENET_VARIANTS = {   # depth -> (stage sizes, block), as torchvision
    18: ((2, 2, 2, 2), BasicBlock), 34: ((3, 4, 6, 3), BasicBlock),
    50: ((3, 4, 6, 3), BottleneckBlock), 101: ((3, 4, 23, 3), BottleneckBlock),
    152: ((3, 8, 36, 3), BottleneckBlock)}


STD_EPSILON = 1e-8


def standardize(w, per_fan_in: bool = False):
  """A conv kernel standardized per output channel over (height, width, input channels):
  (w - mean) / sqrt(var + eps), or / sqrt(var * fan_in + eps) with `per_fan_in`."""
  fan_in = w.shape[0] * w.shape[1] * w.shape[2] if per_fan_in else 1
  mean = w.mean(axis=(0, 1, 2), keepdims=True)
  var = w.var(axis=(0, 1, 2), keepdims=True)
  return (w - mean) * jax.lax.rsqrt(var * fan_in + STD_EPSILON)


class StdConv(nn.Conv):
  """Weight standardization (Qiao et al. 2019), as big_vision's StdConv for BiT: the kernel used
  is the stored one standardized (`standardize`). The stored parameter keeps its own scale;
  gradients flow through the standardization."""

  def param(self, name, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    return standardize(value) if name == 'kernel' else value


class ScaledStdConv(nn.Conv):
  """Scaled weight standardization (Brock, De & Smith 2021, NF-ResNets): the kernel used is
  gain * (w - mean) / (std * sqrt(fan_in)) per output channel, gain a learnable per-channel
  scale (init 1): a conv that keeps the second moment of its input at init."""

  def param(self, name, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    if name == 'kernel':
      gain = super().param('gain', nn.initializers.ones, (value.shape[-1],), jnp.float32)
      value = gain * standardize(value, per_fan_in=True)
    return value


# ReLU's gain for NF-ResNets: for x ~ N(0, 1), relu(x) * NF_RELU_GAIN has unit variance
NF_RELU_GAIN = (2 / (1 - 1 / jnp.pi)) ** 0.5


# weight normalization's scale starts at He's gain, so that a unit-norm filter times it has the
# norm a He-initialized filter has in expectation (sqrt(fan_in * 2 / fan_in))
WEIGHT_NORM_GAIN = 2 ** 0.5
REPARAMS = ('weight_norm', 'spectral_norm')   # model config keys, each a bool


def reparameterized(layer: nn.Module, reparam: str, train: bool) -> Callable[..., Any]:
  """`layer` with its kernel reparameterized by flax's wrappers (no re-implementation):
  'weight_norm' (Salimans & Kingma 2016): kernel = g * v / ||v|| per output channel, g starting
  at WEIGHT_NORM_GAIN; 'spectral_norm' (Miyato et al. 2018): kernel / sigma, sigma the largest
  singular value of the kernel as a (kh*kw*C_in, C_out) matrix, estimated by one power-iteration
  step per call from a vector kept in `batch_stats` (stored only in train mode); '' : `layer`."""
  if reparam == 'weight_norm':
    return nn.WeightNorm(layer, scale_init=nn.initializers.constant(WEIGHT_NORM_GAIN))
  if reparam == 'spectral_norm':
    return functools.partial(nn.SpectralNorm(layer), update_stats=train)
  return layer


def _conv(use_bias: bool, dtype=jnp.float32, wgrad_chunk_bytes=0,
          weight_std: bool | str = False, reparam: str = '',
          train: bool = False) -> Callable[..., Any]:
  """`conv(features, kernel_size, strides=1, name=None)`: padded (k - 1) // 2 on every side, as
  He et al. and torchvision. (flax's 'SAME' pads a stride-2 conv over an even input 0 before
  and 1 after, so its outputs would sit one pixel off the option-A shortcut's (2i, 2j).)
  `reparam`, `train`: see `reparameterized`."""
  impl = conv_lib.chunked_wgrad_conv(wgrad_chunk_bytes) if wgrad_chunk_bytes > 0 else None
  kind = {False: nn.Conv, True: StdConv, 'scaled': ScaledStdConv}[weight_std]
  base = functools.partial(kind, use_bias=use_bias, kernel_init=conv_init, dtype=dtype,
                           conv_general_dilated=impl)

  def conv(features, kernel_size, **kwargs):
    return reparameterized(
        base(features, kernel_size, padding=[((k - 1) // 2,) * 2 for k in kernel_size],
             **kwargs), reparam, train)

  return conv


def _norm_from_config(cfg, devices: int) -> Callable[..., nn.Module]:
  return norms.from_config(cfg, layout='image', devices=devices)


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


def _speed_and_bias(cfg) -> dict:
  """The module fields the resolved config sets: speed choices, and conv biases where the norm
  adds no shift of its own (none, rms)."""
  return dict(use_bias=not norms.NORMS[cfg.norm].has_shift, dtype=jnp.dtype(cfg.compute_dtype),
              fusion_barriers=cfg.get('fusion_barriers', 'on') == 'on',
              wgrad_chunk_bytes=conv_lib.CHUNK_BYTES if cfg.conv_wgrad == 'chunked' else 0,
              skipinit=cfg.get('skipinit', False), weight_std=cfg.get('weight_std', False),
              fixup=cfg.get('fixup', False), nf_alpha=cfg.get('nf_alpha', 0.0),
              reparam=next((k for k in REPARAMS if cfg.get(k, False)), ''))


def build_cifar(cfg, dataset, *, devices: int = 1) -> ResNet:
  _check_images('resnet', dataset, cfg, downsampling=4, min_size=4)
  if cfg.depth < 8 or (cfg.depth - 2) % 6:
    raise ConfigError(f'CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...); '
                      f'got {cfg.depth}')
  norms.check_plain_gain(cfg, cfg.depth - 1)   # the stem's norm and two per block
  return CifarResNet(cfg.depth, num_classes=dataset.num_classes, width=cfg.width,
                     residual=cfg.residual, norm=_norm_from_config(cfg, devices),
                     **_speed_and_bias(cfg))


def build_imagenet(cfg, dataset, *, devices: int = 1) -> ResNet:
  _check_images('resnet_imagenet', dataset, cfg, downsampling=32, min_size=32)
  if cfg.depth not in IMAGENET_VARIANTS:
    raise ConfigError(f'ImageNet ResNet depth must be one of {sorted(IMAGENET_VARIANTS)}; '
                      f'got {cfg.depth}')
  stages, block = IMAGENET_VARIANTS[cfg.depth]
  norms.check_plain_gain(cfg, 1 + sum(stages) * (2 if block is BasicBlock else 3))
  return ImageNetResNet(stage_sizes=stages, block=block, num_classes=dataset.num_classes,
                        width=cfg.width, residual=cfg.residual,
                        norm=_norm_from_config(cfg, devices), **_speed_and_bias(cfg))
