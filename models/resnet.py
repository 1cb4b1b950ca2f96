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

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from errors import ConfigError
from models import backend
from models import norms
from models import residual as residual_lib
from models.spec import Family, Key

# He et al. 2015 ("Delving deep into rectifiers") initialization, as the paper uses.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


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


def basic(filters: int, strides: int) -> list[tuple]:
  """A basic block's branch: conv3x3 (stride) -> conv3x3, as (features, kernel, strides)."""
  return [(filters, (3, 3), strides), (filters, (3, 3), 1)]


def bottleneck(filters: int, strides: int) -> list[tuple]:
  """A bottleneck block's branch: conv1x1 -> conv3x3 (stride) -> conv1x1 (4x filters)."""
  return [(filters, (1, 1), 1), (filters, (3, 3), strides), (filters * 4, (1, 1), 1)]


class _Block(nn.Module):
  """What every block kind shares: its branch's convs (`branch`: `basic` or `bottleneck`), its
  skip path, and where the skip lives. The kinds (`NormBlock`, `FixupBlock`, `NFBlock`) are
  block choices, as flax's `partial(ResNet, block_cls=...)`."""
  filters: int
  strides: int
  residual: bool
  norm: Callable[..., nn.Module]
  conv: Callable[..., nn.Module]
  shortcut: str  # 'A' (CIFAR: pad/subsample) or 'B' (projection where the shape changes)
  branch: Callable[[int, int], list] = basic
  skipinit: bool = False  # the branch times a learnable scalar, init 0 (models/residual.py)

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

  # what a block kind needs of the net around it (class-level; overridden by the kinds)
  stem_norm = True   # the stem's conv is followed by norm -> relu

  @classmethod
  def plan(cls, branch, channels: int, shapes: list[tuple]) -> list[dict]:
    """Each block's own arguments, from the branch and the blocks' (filters, strides, name)."""
    return [{} for _ in shapes]

  @staticmethod
  def finish_stream(x):
    return x

  @staticmethod
  def head(module: nn.Module, x, classes: int, dtype):
    return nn.Dense(classes, dtype=dtype, name='head')(x)


class NormBlock(_Block):
  """conv -> norm -> relu for each conv of the branch but the last, whose norm is followed by
  (+ skip) -> relu: He et al.'s block, with the norm from the registry. The skip and the norm
  placement live in `_finish`, the one place for both branch shapes."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    *first, (features, kernel, strides) = self.branch(self.filters, self.strides)
    y = x
    for f, k, s in first:
      y = nn.relu(self.norm()(self.conv(f, k, strides=s)(y), train=train))
    return self._finish(x, self.conv(features, kernel, strides=strides)(y), train=train)

  def _finish(self, x, y, *, train):
    """`y` is the block's last conv output; applies norm -> (+ skip) -> ReLU."""
    y = self.norm()(y, train=train)
    if not self.residual:  # a plain block: the same path, no skip
      return nn.relu(y)
    y = residual_lib.gated(self, y, self.skipinit)
    skip = self._skip(x, y.shape[-1], lambda n: self.norm(name='proj_norm')(
        self._projection(x, n), train=train))
    return nn.relu(y + skip)


class FixupBlock(_Block):
  """Fixup (Zhang et al. 2019), no norm: a scalar bias before each conv and activation, He init
  scaled by `scale` (all but the branch's last conv, which starts at 0, so the block starts as
  its skip path), a scalar multiplier, the skip (a projection sees the branch's input bias
  too, as in Fixup's code), ReLU."""
  scale: float = 1.0

  @classmethod
  def plan(cls, branch, channels, shapes):
    """Zhang et al.'s scale L^(-1/(2m-2)): L blocks, m convs per branch."""
    m = len(branch(1, 1))
    return [{'scale': len(shapes) ** (-1 / (2 * m - 2))} for _ in shapes]

  @staticmethod
  def head(module, x, classes, dtype):
    """A scalar bias before the head, and the head initialized to 0."""
    x = x + module.param('head_bias_in', nn.initializers.zeros, ())
    return nn.Dense(classes, dtype=dtype, kernel_init=nn.initializers.zeros, name='head')(x)

  def _bias(self, name):
    return self.param(name, nn.initializers.zeros, ())

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    specs = self.branch(self.filters, self.strides)
    bias_in = self._bias('bias_in')
    y = x + bias_in
    for k, (features, kernel, strides) in enumerate(specs):
      last = k == len(specs) - 1
      init = (nn.initializers.zeros if last else
              nn.initializers.variance_scaling(2.0 * self.scale ** 2, 'fan_out', 'normal'))
      y = self.conv(features, kernel, strides=strides, kernel_init=init)(y)
      if not last:
        y = nn.relu(y + self._bias(f'bias_{k}b')) + self._bias(f'bias_{k + 1}a')
    y = y * self.param('fixup_scale', nn.initializers.ones, ()) + self._bias('bias_out')
    return nn.relu(y + self._skip(x, y.shape[-1], lambda n: self._projection(x + bias_in, n)))


class NFBlock(_Block):
  """Brock, De & Smith 2021: h_next = skip + alpha * f(h / beta), beta the expected std of h at
  init (Var h_next = Var h + alpha^2; a transition block, whose skip changes shape, takes the
  skip from the normalized input, so the variance restarts at 1 + alpha^2). f is
  pre-activation: (gamma * relu -> scaled-WS conv) per conv, gamma = NF_RELU_GAIN."""
  alpha: float = 0.2
  beta: float = 1.0
  stem_norm = False   # pre-activation blocks take the stem's output as it is

  @classmethod
  def plan(cls, branch, channels, shapes, alpha: float = 0.2):
    """beta per block: the expected std of the stream at init (scaled WS keeps the input's
    variance, 1; each block adds alpha^2; a transition restarts at 1 + alpha^2)."""
    out, var = [], 1.0
    for filters, strides, _ in shapes:
      width = branch(filters, strides)[-1][0]
      out.append({'alpha': alpha, 'beta': var ** 0.5})
      transition = strides > 1 or width != channels   # the skip changes shape
      var = (1.0 if transition else var) + alpha ** 2
      channels = width
    return out

  @staticmethod
  def finish_stream(x):
    """The pre-activation stream's last activation."""
    return nn.relu(x) * NF_RELU_GAIN

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    out = nn.relu(x / self.beta) * NF_RELU_GAIN
    y = out
    for k, (features, kernel, strides) in enumerate(self.branch(self.filters, self.strides)):
      if k:
        y = nn.relu(y) * NF_RELU_GAIN
      y = self.conv(features, kernel, strides=strides)(y)
    # transitions always project, as the paper's NF-ResNets (CIFAR's option A would zero-pad
    # half the channels and halve the stream's variance: the beta bookkeeping would not hold)
    skip = self._skip(x, y.shape[-1], lambda n: self._projection(out, n), option_a=False)
    return skip + self.alpha * y


BasicBlock = functools.partial(NormBlock, branch=basic)
BottleneckBlock = functools.partial(NormBlock, branch=bottleneck)


class ResNet(nn.Module):
  """Stem -> stages of blocks (the first block of every stage after the first halves the map
  and doubles the filters) -> global average pool -> linear head. The variants below fix the
  stem, branch and shortcut; `stage_sizes` the depth; `block_cls` the kind of block (with a
  norm, Fixup, NF), each of which says what it needs of the stem, the stream and the head."""
  stage_sizes: Sequence[int]
  block_cls: type[_Block] = NormBlock
  branch: Callable[[int, int], list] = basic
  shortcut: str = 'A'            # A: CIFAR's parameter-free shortcut; B: projections
  stem: str = 'cifar'            # cifar: 3x3 conv; imagenet: 7x7/2 conv + 3x3/2 max pool
  num_classes: int = 10
  width: int = 16                # the first stage's filters
  residual: bool = True
  norm: Callable[..., nn.Module] = norms.make_norm('batch')
  use_bias: bool = False  # biases are redundant after a norm with a shift (NormSpec.has_shift)
  fusion_barriers: bool = True   # backend.materialize after each block; the same function
  dtype: Any = jnp.float32       # compute dtype of convs and the head (params stay float32)
  wgrad_chunk_bytes: int = 0     # > 0: conv weight gradients summed over chunks (backend)
  skipinit: bool = False         # SkipInit: each residual branch times a learnable 0-init scalar
  weight_std: bool | str = False  # weight-standardized convolutions (`StdConv`; 'scaled': NF)
  reparam: str = ''              # every conv wrapped in flax's 'weight_norm' or 'spectral_norm'
  block_args: dict = dataclasses.field(default_factory=dict)   # the block kind's own (NF alpha)

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del mask  # images have no padding
    kind = self.block_cls
    conv = _conv(self.use_bias, self.dtype, self.wgrad_chunk_bytes, self.weight_std,
                 self.reparam, train)
    x = x.astype(self.dtype)
    imagenet = self.stem == 'imagenet'
    x = conv(self.width, (7, 7) if imagenet else (3, 3), strides=2 if imagenet else 1,
             name='stem_conv')(x)
    token = self.variables['params']['stem_conv']['kernel'].reshape(-1)[0]   # for `materialize`
    if kind.stem_norm:
      x = nn.relu(self.norm(name='stem_norm')(x, train=train))
    if imagenet:
      x = stem_max_pool(x)
    shapes = [(self.width * 2**stage, 2 if (stage > 0 and i == 0) else 1, f'stage{stage + 1}_block{i + 1}')
              for stage, size in enumerate(self.stage_sizes) for i in range(size)]
    extras = kind.plan(self.branch, x.shape[-1], shapes, **self.block_args)
    for (filters, strides, name), extra in zip(shapes, extras):
      x = kind(filters, strides, self.residual, self.norm, conv, self.shortcut, self.branch,
               self.skipinit, **extra, name=name)(x, train=train)
      x = backend.materialize(x, token) if self.fusion_barriers else x
    x = jnp.mean(kind.finish_stream(x), axis=(1, 2))
    return kind.head(self, x, self.num_classes, self.dtype).astype(jnp.float32)


def CifarResNet(depth: int = 20, **kwargs) -> ResNet:   # noqa: N802 (a module variant)
  """He et al.'s CIFAR net: depth 6n+2, three stages of n basic blocks, option-A shortcuts."""
  return ResNet(stage_sizes=((depth - 2) // 6,) * 3, **kwargs)


ImageNetResNet = functools.partial(ResNet, shortcut='B', stem='imagenet', num_classes=1000,
                                   width=64)
IMAGENET_VARIANTS = {   # depth -> (stage sizes, branch), as torchvision
    18: ((2, 2, 2, 2), basic), 34: ((3, 4, 6, 3), basic),
    50: ((3, 4, 6, 3), bottleneck), 101: ((3, 4, 23, 3), bottleneck),
    152: ((3, 8, 36, 3), bottleneck)}


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
  impl = backend.chunked_wgrad_conv(wgrad_chunk_bytes) if wgrad_chunk_bytes > 0 else None
  kind = {False: nn.Conv, True: StdConv, 'scaled': ScaledStdConv}[weight_std]
  base = functools.partial(kind, use_bias=use_bias, kernel_init=conv_init, dtype=dtype,
                           conv_general_dilated=impl)

  def conv(features, kernel_size, **kwargs):
    return reparameterized(
        base(features, kernel_size, padding=[((k - 1) // 2,) * 2 for k in kernel_size],
             **kwargs), reparam, train)

  return conv


def _check_images(name, dataset, cfg, downsampling: int, min_size: int):
  """Images large enough for the net's downsampling, and no norm that the smallest feature map
  turns into a constant."""
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


def _fields(cfg, speed: dict, devices: int) -> dict:
  """The module fields every ResNet reads from its config and resolved speed choices: the
  norm, the block kind (a norm, Fixup or NF), conv biases where the norm adds no shift of its
  own, and the kernel options."""
  block_cls, args, std = NormBlock, {}, cfg.weight_std
  if cfg.fixup:
    block_cls = FixupBlock
  elif cfg.nf_alpha:
    block_cls, args, std = NFBlock, {'alpha': cfg.nf_alpha}, 'scaled'
  return dict(norm=norms.make_norm(cfg.norm, layout='image', devices=devices, values=cfg),
              residual=cfg.residual, width=cfg.width, block_cls=block_cls, block_args=args,
              use_bias=not norms.NORMS[cfg.norm].has_shift, dtype=jnp.dtype(cfg.compute_dtype),
              fusion_barriers=speed['fusion_barriers'] == 'on',
              wgrad_chunk_bytes=backend.CHUNK_BYTES if speed['conv_wgrad'] == 'chunked' else 0,
              skipinit=cfg.skipinit, weight_std=std,
              reparam=next((k for k in REPARAMS if cfg[k]), ''))


def build_cifar(cfg, dataset, *, devices: int = 1, speed: dict) -> ResNet:
  _check_images('resnet', dataset, cfg, downsampling=4, min_size=4)
  if cfg.depth < 8 or (cfg.depth - 2) % 6:
    raise ConfigError(f'CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...); '
                      f'got {cfg.depth}')
  norms.check_plain_gain(cfg, cfg.depth - 1)   # the stem's norm and two per block
  return CifarResNet(cfg.depth, num_classes=dataset.num_classes, **_fields(cfg, speed, devices))


def build_imagenet(cfg, dataset, *, devices: int = 1, speed: dict) -> ResNet:
  _check_images('resnet_imagenet', dataset, cfg, downsampling=32, min_size=32)
  if cfg.depth not in IMAGENET_VARIANTS:
    raise ConfigError(f'ImageNet ResNet depth must be one of {sorted(IMAGENET_VARIANTS)}; '
                      f'got {cfg.depth}')
  stages, branch = IMAGENET_VARIANTS[cfg.depth]
  norms.check_plain_gain(cfg, 1 + sum(stages) * len(branch(1, 1)))
  return ImageNetResNet(stage_sizes=stages, branch=branch, num_classes=dataset.num_classes,
                        **_fields(cfg, speed, devices))


_OPTIONS = ('skipinit', 'weight_std', 'weight_norm', 'spectral_norm', 'fixup', 'nf_alpha')
_BRANCHES = r'^stage\d+_block\d+/(?!proj_|skip_gain)'   # a block's own convs and norms
FAMILIES = (
    Family('resnet', 'CIFAR-style ResNet, depth 6n+2 (He et al. 2016), option-A shortcuts',
           build_cifar, data=('image',), options=_OPTIONS,
           keys=(Key('depth', 20, '6n+2: 8, 14, 20, 32, 44, 56, 110, ...', low=0, low_ok=False),),
           speed={'conv_wgrad': True, 'fusion_barriers': True}, branches=_BRANCHES,
           compute_dtypes=('float32', 'bfloat16')),
    # conv_wgrad's chunks were measured to help on the CIFAR nets only: auto stays XLA's here
    Family('resnet_imagenet', 'ResNet-18/34/50/101/152 (torchvision layout), 7x7 stem, '
           'projection shortcuts', build_imagenet, data=('image',), options=_OPTIONS,
           keys=(Key('depth', 18, '18, 34, 50, 101 or 152', low=0, low_ok=False),),
           speed={'conv_wgrad': False, 'fusion_barriers': True}, branches=_BRANCHES,
           compute_dtypes=('float32', 'bfloat16')),
)
