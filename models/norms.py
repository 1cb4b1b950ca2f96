"""THE normalization registry: a norm name -> a `NormSpec` (its module, its own config keys, how
it builds from a config, and what it is). Adding a norm is one module and one entry here.

Every model asks `make_norm(name, layout=...)` for its normalization layers; no model imports a
specific norm class, and builders ask the spec (`NORMS[name].causal_ok`, ...) instead of
comparing names. All norms share one call signature:

    norm(x, *, train: bool, mask: bool[x.shape[:-1]] | None = None) -> same shape as x

`x` has layout (batch, *positions, features): NHWC images or (batch, time, features)
sequences. `mask` marks the real (unpadded) positions, True = real. The mask only changes
*statistics*: padded positions are still normalized and returned (not zeroed), so that a
model's outputs at real positions never depend on what sits in the padding.

Which axes each norm pools its statistics over (B = batch, P = positions, C = features) depends
on the layout the model asks for:

              image (NHWC)           sequence (classifier)     causal (language model)
    batch     B, P per feature       B, valid P per feature    B per position and feature
    layer     P, C per example       C per token               C per token
    rms       like layer, no mean subtracted (Zhang & Sennrich 2019)
    group     P, groups of C         groups of C per token     groups of C per token
    instance  P per example+feature  valid P per example+feat. refused (sees the future)
    scale     g * x / ||x||: like rms, one scalar g (Nguyen & Salazar 2019)
    dyt       no statistics: gamma * tanh(alpha * x) + beta per value (Zhu et al. 2025)
    none      identity

`batch` keeps running averages for eval (per position in the causal layout, as recurrent BN
keeps them per time step: Cooijmans et al. 2016).

The arithmetic is one function, `moments`: shifted, two-pass statistics, exact to float32
rounding for any input (flax's norms default to E[x²] - E[x]², which loses all precision when
the mean is large against the spread, and even their two-pass variant errs by ~1e-3 there).
Parameter and statistic names are flax's (`ln/scale`, `bn/mean`, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from errors import ConfigError
from models.spec import Key, NormSpec

LAYOUTS = ('image', 'sequence', 'causal')
# Statistics of 1 value normalize it to 0, of 2 values to -1 and +1: the fewest a norm may pool
# where the config fixes how many it pools (per-token groups, ghost groups per position).
MIN_POOLED = 3


def _weights(x, mask):
  """0/1 float32 weights of x's shape from a (batch, *positions) mask (None: all ones)."""
  if mask is None:
    return jnp.ones(x.shape, jnp.float32)
  if mask.shape != x.shape[:-1]:
    raise ValueError(f'mask shape {mask.shape} must equal x.shape[:-1] = {x.shape[:-1]}')
  return jnp.broadcast_to(mask[..., None], x.shape).astype(jnp.float32)


def moments(x, weights, axes):
  """Statistics of float32 `x` over `axes`, counting each element by its 0/1 `weights`:
  (shift, mean, var, count) with the mean held as two floats, shift + mean.

  Shifted data: `shift` is a first estimate of the mean (no gradient: the normalized output
  does not depend on it); `mean` and `var` are the moments of d = x - shift, from one fused
  pass over d (sum d, sum d²). Once d is formed (exact where x is close to its mean) it is
  centred to rounding, so E[d²] - E[d]² cancels nothing and (d - mean) / sqrt(var) is exact
  to float32 rounding even when the mean is 1000x the spread, where E[x²] - E[x]² errs by up
  to ~190 and a two-pass variance around a one-float mean by ~1e-3.
  """
  count = weights.sum(axes, keepdims=True)
  safe = jnp.maximum(count, 1.0)
  shift = jax.lax.stop_gradient((x * weights).sum(axes, keepdims=True) / safe)
  d = (x - shift) * weights
  mean = d.sum(axes, keepdims=True) / safe
  var = jnp.maximum((d * d).sum(axes, keepdims=True) / safe - jnp.square(mean), 0.0)
  # where nothing is counted (a ghost group with no real token at a position), variance 1: the
  # padding passes through unscaled instead of growing by 1/sqrt(eps) per layer towards inf
  var = jnp.where(count > 0, var, 1.0)
  return shift, mean, var, count


class _Normalize(nn.Module):
  """Normalizes x over `axes` with statistics from the positions `mask` marks (all others are
  normalized with them too), then scales (and shifts) per feature. `groups` > 0 splits the
  features into that many groups, each with its own statistics. Parameter names are flax's."""
  axes: tuple[int, ...]
  epsilon: float
  subtract_mean: bool = True
  use_bias: bool = True
  groups: int = 0

  @nn.compact
  def __call__(self, x, mask=None):
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    v = x.astype(jnp.float32)
    w = _weights(v, mask)
    axes = tuple(a % x.ndim for a in self.axes)
    if self.groups:   # (..., C) -> (..., groups, C / groups), the group's channels pooled too
      v = v.reshape(*x.shape[:-1], self.groups, c // self.groups)
      w = w.reshape(v.shape)
      axes = tuple(a for a in axes if a != x.ndim - 1) + (x.ndim,)
    if self.subtract_mean:
      shift, mean, var, _ = moments(v, w, axes)
      y = (v - shift - mean) * jax.lax.rsqrt(var + self.epsilon)
    else:   # RMS: no mean, so no cancellation
      ms = (jnp.square(v) * w).sum(axes, keepdims=True) / jnp.maximum(w.sum(axes, keepdims=True), 1.0)
      y = v * jax.lax.rsqrt(ms + self.epsilon)
    y = y.reshape(x.shape) * scale
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    return y.astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class Renorm:
  """Batch Renormalization's corrections (Ioffe 2017): in train mode the batch-normalized value
  becomes x_hat * r + d with r = clip(sigma_B / sigma, 1/r_max, r_max) and
  d = clip((mu_B - mu) / sigma, -d_max, d_max) (sigma, mu: the running averages; r and d carry
  no gradient). The limits start at r_max = 1, d_max = 0 (plain BatchNorm) for `start` steps,
  then grow linearly to `r_max`, `d_max` over `ramp` steps (the paper: 1 -> 3 and 0 -> 5,
  relaxed from step 5k to 40k and 25k)."""
  r_max: float = 3.0
  d_max: float = 5.0
  start: int = 5000
  ramp: int = 35000

  def limits(self, step):
    t = jnp.clip((step - self.start) / max(self.ramp, 1), 0.0, 1.0)
    return 1.0 + (self.r_max - 1.0) * t, self.d_max * t


@dataclasses.dataclass(frozen=True)
class Grouping:
  """Which examples BatchNorm's train-mode statistics pool over: `groups` equal, contiguous
  groups of the batch (per-device: one per device), or groups of `group_size` examples (ghost
  batch norm; 0: unused). Eval mode and `init` use one group (the running averages)."""
  groups: int = 1
  group_size: int = 0

  def count(self, batch: int, train: bool) -> int:
    if not train:
      return 1
    if self.group_size:
      if batch % self.group_size:
        raise ConfigError(f'ghost batch norm with {self.group_size} examples per group needs a '
                          f'batch size divisible by {self.group_size}; got {batch}')
      return batch // self.group_size
    if batch % self.groups:
      raise ConfigError(f'batch norm with {self.groups} groups needs a batch size divisible '
                        f'by {self.groups}; got {batch}')
    return self.groups


def group_moments(v, mask, groups: int, per_position: bool):
  """BatchNorm's statistics of float32 `v` (batch, *positions, features) in `groups` contiguous
  groups of the batch, from the positions `mask` marks: (grouped v, shift, mean, var, count),
  each of shape (groups, 1, ...): over the group's examples and, unless `per_position`, all its
  positions. The one place any BatchNorm (the registry's, the LSTM's recurrent one) groups."""
  g = v.reshape(groups, v.shape[0] // groups, *v.shape[1:])
  w = _weights(v, mask).reshape(g.shape)
  axes = (1,) if per_position else tuple(range(1, g.ndim - 1))
  return (g, *moments(g, w, axes))


def pooled_statistics(shift, mean, var, count):
  """The groups' (mean, var) pooled for the running averages, each group weighted by its number
  of valid values, and the total count."""
  total = count.sum(0)
  safe = jnp.maximum(total, 1.0)
  return ((shift + mean) * count).sum(0) / safe, (var * count).sum(0) / safe, total


class _BatchNorm(nn.Module):
  """The arithmetic of `BatchNorm` (its parameters and running averages, named as flax's)."""
  momentum: float
  epsilon: float
  groups: int
  per_position: bool
  max_positions: int
  renorm: Renorm | None = None   # Batch Renormalization's r/d corrections

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    c = x.shape[-1]
    if self.per_position and x.ndim != 3:
      raise ValueError(f'per-position batch norm needs (batch, time, features); got {x.shape}')
    stat_shape = (self.max_positions, c) if self.per_position else (c,)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, stat_shape, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, stat_shape, jnp.float32)
    if self.renorm is not None:   # train steps taken: where Renorm's limits stand
      steps = self.variable('batch_stats', 'steps', jnp.zeros, (), jnp.int32)
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    # the rows of the running averages that apply here: one per position, or the one row
    if self.per_position and x.shape[1] > self.max_positions:
      raise ConfigError(f'sequence length {x.shape[1]} exceeds the {self.max_positions} '
                        'positions batch norm keeps running averages for (model.max_length)')
    rows = slice(0, x.shape[1]) if self.per_position else ...
    v = x.astype(jnp.float32)
    if not train:
      y = (v - ra_mean.value[rows]) * jax.lax.rsqrt(ra_var.value[rows] + self.epsilon)
      return (y * scale + bias).astype(x.dtype)
    g, shift, mean, var, count = group_moments(v, mask, self.groups, self.per_position)
    y = (g - shift - mean) * jax.lax.rsqrt(var + self.epsilon)
    if self.renorm is not None:   # against the running averages as they were before this step
      r_max, d_max = self.renorm.limits(steps.value)
      sigma = jnp.sqrt(ra_var.value[rows] + self.epsilon)
      r = jax.lax.stop_gradient(jnp.clip(jnp.sqrt(var + self.epsilon) / sigma, 1 / r_max, r_max))
      d = jax.lax.stop_gradient(jnp.clip((shift + mean - ra_mean.value[rows]) / sigma,
                                         -d_max, d_max))
      y = y * r + d
      if not self.is_initializing():
        steps.value = steps.value + 1
    y = y.reshape(x.shape)
    if not self.is_initializing():
      shape = ra_mean.value[rows].shape
      new_mean, new_var, total = pooled_statistics(shift, mean, var, count)
      seen = total.reshape(shape) > 0     # rows some valid example reached
      for ra, value in zip((ra_mean, ra_var), (new_mean, new_var)):
        old = ra.value[rows]
        m = self.momentum
        ra.value = ra.value.at[rows].set(jnp.where(seen, m * old + (1 - m) * value.reshape(shape),
                                                   old))
    return (y * scale + bias).astype(x.dtype)


class BatchNorm(nn.Module):
  """Statistics over the batch (and, unless `per_position`, all valid positions), per feature.

  Running averages follow flax's convention: ra <- momentum * ra + (1 - momentum) * batch_stat,
  with the biased (1/N) batch variance. `train=False` normalizes with the running averages.
  Under SPMD jit over a sharded batch the statistics are global: XLA inserts the all-reduce.

  per_position (the causal layout of a language model): statistics over the batch's valid
  examples at each position separately, so no position sees a later one; running averages per
  position, `max_positions` of them (the model's maximum length). A position where no
  example is valid leaves its running average unchanged.

  grouping: "ghost" / per-device BatchNorm (`Grouping`): the batch is split into equal,
  contiguous groups that are normalized with their own statistics (under data parallelism with
  one group per device, each device's share: no cross-device communication). The running
  averages take the groups' statistics weighted by their numbers of valid positions.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  grouping: Grouping = Grouping()
  per_position: bool = False
  max_positions: int = 512
  renorm: Renorm | None = None   # BatchRenorm: Batch Renormalization (Ioffe 2017)

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    groups = self.grouping.count(x.shape[0], train)
    return _BatchNorm(self.momentum, self.epsilon, groups, self.per_position,
                      self.max_positions, self.renorm, name='bn')(x, train=train, mask=mask)


class BatchRenorm(BatchNorm):
  """BatchNorm whose train-mode output is corrected towards the running averages (`Renorm`),
  so that train and eval mode compute nearly the same function and small or non-i.i.d.
  batches hurt less (Ioffe 2017). Everything else (scopes, masks, per-position statistics,
  running averages) is BatchNorm's."""
  renorm: Renorm | None = Renorm()


def _axes(x, pool_positions: bool) -> tuple[int, ...]:
  """Features, and positions too when `pool_positions`."""
  return (tuple(range(1, x.ndim - 1)) if pool_positions else ()) + (x.ndim - 1,)


class LayerNorm(nn.Module):
  """Per example; over features (and positions if `pool_positions`). Same in train and eval."""
  epsilon: float = 1e-5
  pool_positions: bool = True

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del train  # LayerNorm computes the same thing at train and test time.
    return _Normalize(_axes(x, self.pool_positions), self.epsilon, name='ln')(
        x, mask if self.pool_positions else None)


class RMSNorm(nn.Module):
  """LayerNorm without mean subtraction and without bias."""
  epsilon: float = 1e-5
  pool_positions: bool = True

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del train
    return _Normalize(_axes(x, self.pool_positions), self.epsilon, subtract_mean=False,
                      use_bias=False, name='rms')(x, mask if self.pool_positions else None)


class GroupNorm(nn.Module):
  """Per example, over groups of features (and positions if `pool_positions`).

  `groups` is capped at the number of features, so a 16-channel layer with groups=32 becomes
  16 groups of one channel rather than an error.
  """
  groups: int = 8
  epsilon: float = 1e-5
  pool_positions: bool = True

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del train
    channels = x.shape[-1]
    groups = min(self.groups, channels)
    if channels % groups:
      raise ConfigError(f'group norm: {channels} features are not divisible into {groups} '
                        'groups; choose model.norm_groups dividing every layer width')
    if not self.pool_positions and channels // groups < MIN_POOLED:
      raise ConfigError(f'group norm per token: {channels} features in {groups} groups leaves '
                        f'{channels // groups} per group, and normalizing fewer than '
                        f'{MIN_POOLED} values outputs a constant (1) or a sign (2) whatever the '
                        f'input; choose model.norm_groups <= {channels // MIN_POOLED}')
    return _Normalize(_axes(x, self.pool_positions), self.epsilon, groups=groups, name='gn')(
        x, mask if self.pool_positions else None)


class InstanceNorm(nn.Module):
  """Per example and feature, over all (valid) positions."""
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del train
    if x.ndim < 3:
      raise ConfigError('instance norm needs inputs with positions (images or sequences)')
    return _Normalize(tuple(range(1, x.ndim - 1)), self.epsilon, name='in')(x, mask)


class DyT(nn.Module):
  """Dynamic Tanh (Zhu, Chen, He, LeCun & Liu 2025, "Transformers without Normalization"):
  `gamma * tanh(alpha * x) + beta`, alpha one learnable scalar (init `alpha_init`, 0.5 in the
  paper), gamma and beta per feature (init 1 and 0). No statistics: the same in train and eval,
  blind to the batch, the other tokens and the padding."""
  alpha_init: float = 0.5

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del train, mask
    features = x.shape[-1]
    alpha = self.param('alpha', nn.initializers.constant(self.alpha_init), ())
    gamma = self.param('scale', nn.initializers.ones, (features,))
    beta = self.param('bias', nn.initializers.zeros, (features,))
    return (gamma * jnp.tanh(alpha * x.astype(jnp.float32)) + beta).astype(x.dtype)


class Identity(nn.Module):
  """No normalization."""

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del train, mask
    return x


class ScaleNorm(nn.Module):
  """ScaleNorm (Nguyen & Salazar 2019, "Transformers without Tears"): g * x / ||x||, with one
  learnable scalar g initialized to sqrt(d), d the number of values normalized together (the
  features of a token; an example's positions and features in the image layout), so that the
  output starts with unit RMS. ||x|| is clamped below at `epsilon`, as in the paper."""
  epsilon: float = 1e-5
  pool_positions: bool = True

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del train
    axes = _axes(x, self.pool_positions)
    d = math.prod(x.shape[a] for a in axes)
    g = self.param('g', nn.initializers.constant(math.sqrt(d)), (), jnp.float32)
    v = x.astype(jnp.float32)
    w = _weights(v, mask if self.pool_positions else None)
    # clamped as a square, so that an all-zero input (an LSTM's first W_h h_0) has a finite
    # gradient: d sqrt(s) / ds at s = 0 is inf, and inf * 0 is NaN
    squares = jnp.maximum((jnp.square(v) * w).sum(axes, keepdims=True), self.epsilon ** 2)
    return (g * v * jax.lax.rsqrt(squares)).astype(x.dtype)


# ------------------------------------------------------------------------- the norms' own keys
# A key several norms read is one Key object, listed in each of their specs.
EPSILON = Key('norm_epsilon', 1e-5, 'added to the variance (batch, layer, group, rms, '
              'instance); the least norm (scale)', low=0, low_ok=False)
BN_SCOPES = ('global', 'per_device', 'ghost')
BN_KEYS = (
    Key('bn_momentum', 0.9, 'running average: ra <- m * ra + (1 - m) * batch', low=0, high=1),
    Key('bn_scope', 'global', 'which examples the train-mode statistics pool over: the whole '
        '(sharded) batch, each device\'s share, or ghost groups', choices=BN_SCOPES),
    Key('bn_ghost_size', 0, 'ghost: examples per statistics group (0: unused)', low=0),
)
RENORM_KEYS = (
    Key('renorm_rmax', 3.0, 'limit of r, reached after renorm_start + renorm_ramp steps', low=1,
        before=3.0),
    Key('renorm_dmax', 5.0, 'limit of d', low=0, before=5.0),
    Key('renorm_start', 5000, 'steps of plain BatchNorm before the limits relax (paper: 5k)',
        low=0, before=5000),
    Key('renorm_ramp', 35000, 'steps of the linear ramp to the limits (paper: to 40k / 25k)',
        low=0, before=35000),
)
NORM_GROUPS = Key('norm_groups', 8, 'number of feature groups (capped at the width)', low=0,
                  low_ok=False)
DYT_ALPHA = Key('dyt_alpha', 0.5, 'initial alpha of tanh(alpha * x) (Zhu et al. 2025: 0.5)',
                low=0, low_ok=False, before=0.5)


def _grouping(values, devices: int) -> Grouping:
  scope, size = values['bn_scope'], values['bn_ghost_size']
  if scope == 'ghost' and size < 1:
    raise ConfigError(f'bn_scope ghost needs bn_ghost_size >= 1; got {size}')
  return {'global': Grouping(), 'per_device': Grouping(groups=devices),
          'ghost': Grouping(group_size=size)}[scope]


def _batch(values, layout, devices, renorm: bool = False) -> dict:
  grouping = _grouping(values, devices)
  if layout == 'causal' and 0 < grouping.group_size < MIN_POOLED:
    raise ConfigError(f'ghost batch norm in a language model pools {grouping.group_size} values '
                      f'per position and feature, and normalizing fewer than {MIN_POOLED} '
                      f'outputs a constant (1) or a sign (2) whatever the input; use '
                      f'bn_ghost_size >= {MIN_POOLED}')
  out = dict(momentum=values['bn_momentum'], epsilon=values['norm_epsilon'], grouping=grouping,
             per_position=layout == 'causal')
  if renorm:
    out['renorm'] = Renorm(*(values[k.name] for k in RENORM_KEYS))
  return out


def _per_example(values, layout, devices) -> dict:
  return dict(epsilon=values['norm_epsilon'], pool_positions=layout == 'image')


NORMS: dict[str, NormSpec] = {
    'batch': NormSpec(BatchNorm, 'Ioffe & Szegedy 2015', 'B, P per feature (causal: per position)',
                      _batch, (EPSILON, *BN_KEYS), running_stats=True),
    'layer': NormSpec(LayerNorm, 'Ba, Kiros & Hinton 2016', 'P, C per example (sequences: C per '
                      'token)', _per_example, (EPSILON,)),
    'group': NormSpec(GroupNorm, 'Wu & He 2018', 'P and groups of C per example (sequences: per '
                      'token)', lambda v, layout, d: dict(_per_example(v, layout, d),
                                                          groups=v['norm_groups']),
                      (EPSILON, NORM_GROUPS)),
    'rms': NormSpec(RMSNorm, 'Zhang & Sennrich 2019', 'like layer, no mean subtracted, no bias',
                    _per_example, (EPSILON,), has_shift=False),
    'instance': NormSpec(InstanceNorm, 'Ulyanov, Vedaldi & Lempitsky 2016', 'P per example and '
                         'feature', lambda v, layout, d: dict(epsilon=v['norm_epsilon']),
                         (EPSILON,), causal_ok=False, erases_position_mean=True),
    'batch_renorm': NormSpec(BatchRenorm, 'Ioffe 2017', 'as batch, corrected towards the running '
                             'averages', functools.partial(_batch, renorm=True),
                             (EPSILON, *BN_KEYS, *RENORM_KEYS), running_stats=True,
                             recurrent=False),
    'scale': NormSpec(ScaleNorm, 'Nguyen & Salazar 2019', 'the L2 norm over C per token (images: '
                      'P, C per example); one scalar g', _per_example, (EPSILON,),
                      has_shift=False),
    'dyt': NormSpec(DyT, 'Zhu, Chen, He, LeCun & Liu 2025', 'no statistics: gamma * tanh(alpha '
                    'x) + beta', lambda v, layout, d: dict(alpha_init=v['dyt_alpha']),
                    (DYT_ALPHA,), plain_gain=lambda v: v['dyt_alpha']),
    'none': NormSpec(Identity, '-', 'identity', has_shift=False, identity=True),
}


def keys() -> list[Key]:
  """Every norm's keys, once each, in the order the specs list them."""
  out = {}
  for spec in NORMS.values():
    for key in (EPSILON, *spec.keys):
      out.setdefault(key.name, key)
  return list(out.values())


# A plain net (no skips) whose signal shrinks by more than this at init outputs what float32
# cannot tell apart from a constant: its classifier ignores its input.
MIN_PLAIN_GAIN = 1e-3


def check_plain_gain(cfg, layers: int) -> None:
  """A norm that passes a small signal scaled by a gain (DyT: tanh(a x) ~ a x) shrinks the input
  of a plain net with `layers` norms in a row by gain ** layers at init (the convs and dense
  layers keep its scale). Refused when that is below MIN_PLAIN_GAIN, with the gain that
  would do."""
  spec = NORMS[cfg.norm]
  if spec.plain_gain is None or cfg.residual:
    return
  gain = spec.plain_gain(cfg)
  if gain ** layers < MIN_PLAIN_GAIN:
    need = MIN_PLAIN_GAIN ** (1 / layers)
    knob = ', '.join(f'model.{k.name}' for k in spec.keys)
    raise ConfigError(f'{cfg.norm} in a plain net with {layers} norms in a row scales the input '
                      f'by {knob.removeprefix("model.")} ** {layers} = {gain ** layers:.1e} at '
                      f'init: the outputs do not depend on the input to float32 precision; use '
                      f'{knob} >= {need:.2f}, residual=True or fewer layers')


def check_norm_name(name: str) -> None:
  if name not in NORMS:
    raise ConfigError(f'unknown norm {name!r}; valid norms: {", ".join(NORMS)}')


def causal_norms() -> list[str]:
  """The norms a language model accepts (for error messages)."""
  return [n for n, spec in NORMS.items() if spec.causal_ok]


def _values(overrides: dict):
  values = {k.name: k.default for k in keys()}
  unknown = set(overrides) - set(values)
  if unknown:
    raise TypeError(f'unknown norm keys {sorted(unknown)}; valid: {", ".join(values)}')
  values.update(overrides)
  return values


def make_norm(name: str, *, layout: str = 'image', devices: int = 1, max_positions: int = 512,
              values=None, **overrides) -> Callable[..., nn.Module]:
  """Returns a factory: `factory(name=None) -> nn.Module` with the shared call signature.

  values: a mapping with every norm key (a model config); without it, each key's default, with
    `overrides` (norm_groups=4, bn_scope='ghost', ...).
  layout: `image` (per-example norms pool over H, W, C), `sequence` (per-example norms work
    per token; batch and instance pool over the valid time steps) or `causal` (a language
    model: no statistic pools over time; batch norm per position, with `max_positions` rows
    of running averages).
  devices: how many devices the batch is split over (per-device BatchNorm's groups).
  """
  check_norm_name(name)
  if layout not in LAYOUTS:
    raise ValueError(f'unknown layout {layout!r}; valid: {", ".join(LAYOUTS)}')
  spec = NORMS[name]
  if layout == 'causal' and not spec.causal_ok:
    raise ConfigError(f'norm {name} pools its statistics over time and would let a language '
                      f'model see future tokens; valid norms: {", ".join(causal_norms())}')
  values = _values(overrides) if values is None else values
  for key in spec.keys:
    key.check(values[key.name])
  kwargs = spec.build(values, layout, devices)
  if spec.running_stats and layout == 'causal':
    kwargs['max_positions'] = max_positions
  return functools.partial(spec.module, **kwargs)


def recurrent_grouping(name: str, values, devices: int = 1) -> Grouping | None:
  """For a norm with running statistics, the grouping of its train-mode statistics (what an
  LSTM's recurrent BatchNorm must use at each step, as the registry's BatchNorm does); None
  for norms without."""
  if not NORMS[name].running_stats:
    return None
  return make_norm(name, layout='causal', devices=devices, values=values).keywords['grouping']
