"""THE normalization registry: a norm name -> a `NormSpec` (its module and what it is).

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
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from errors import ConfigError

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
    groups = self.groups
    if x.shape[0] % groups:
      raise ConfigError(f'batch norm with {groups} groups needs a batch size divisible '
                        f'by {groups}; got {x.shape[0]}')
    g = v.reshape(groups, x.shape[0] // groups, *x.shape[1:])
    w = _weights(v, mask).reshape(g.shape)
    # over the group's examples (axis 1) and, unless per position, all its positions
    axes = (1,) if self.per_position else tuple(range(1, g.ndim - 1))
    shift, mean, var, count = moments(g, w, axes)
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
      # the groups' statistics pooled, each weighted by its number of valid positions
      shape = ra_mean.value[rows].shape
      total = count.sum(0)
      new = [((s * count).sum(0) / jnp.maximum(total, 1.0)).reshape(shape)
             for s in (shift + mean, var)]
      seen = total.reshape(shape) > 0     # rows some valid example reached
      for ra, value in zip((ra_mean, ra_var), new):
        old = ra.value[rows]
        m = self.momentum
        ra.value = ra.value.at[rows].set(jnp.where(seen, m * old + (1 - m) * value, old))
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

  groups > 1: "ghost" / per-device BatchNorm: the batch is split into `groups` equal, contiguous
  groups that are normalized with their own statistics (under data parallelism with one group
  per device, each device's share: no cross-device communication). The running averages take
  the groups' statistics weighted by their numbers of valid positions.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  groups: int = 1        # a fixed number of groups (per-device: the number of devices)
  group_size: int = 0    # or examples per group (ghost batch norm); 0: unused
  per_position: bool = False
  max_positions: int = 512
  renorm: Renorm | None = None   # BatchRenorm: Batch Renormalization (Ioffe 2017)

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    # groups only matter for train-mode statistics (eval uses the running averages; `init`
    # runs on a batch of one in eval mode)
    if train and self.group_size and x.shape[0] % self.group_size:
      raise ConfigError(f'ghost batch norm with {self.group_size} examples per group needs a '
                        f'batch size divisible by {self.group_size}; got {x.shape[0]}')
    groups = (x.shape[0] // self.group_size if self.group_size else self.groups) if train else 1
    return _BatchNorm(self.momentum, self.epsilon, max(groups, 1), self.per_position,
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


@dataclasses.dataclass(frozen=True)
class NormSpec:
  """A norm in the registry: its module and the facts builders and config checks ask for.
  The defaults describe a per-token norm; each entry states where it differs."""
  module: type[nn.Module]
  paper: str
  has_shift: bool = True        # adds a learned per-feature bias: a bias before it is redundant
  running_stats: bool = False   # keeps running averages: eval mode computes something else
  causal_ok: bool = True        # can be made causal (an LM's position t sees no t' > t)
  erases_position_mean: bool = False  # its output, per example and feature, has a fixed mean
  #                               over the positions it pools: mean-pooling it loses the input
  recurrent: bool = True        # the LSTM implements it inside its recurrence (running_stats:
  #                               as recurrent BN, Cooijmans et al. 2016)


NORMS: dict[str, NormSpec] = {
    'batch': NormSpec(BatchNorm, 'Ioffe & Szegedy 2015', running_stats=True),
    'layer': NormSpec(LayerNorm, 'Ba, Kiros & Hinton 2016'),
    'group': NormSpec(GroupNorm, 'Wu & He 2018'),
    'rms': NormSpec(RMSNorm, 'Zhang & Sennrich 2019', has_shift=False),
    'instance': NormSpec(InstanceNorm, 'Ulyanov, Vedaldi & Lempitsky 2016', causal_ok=False,
                         erases_position_mean=True),
    'batch_renorm': NormSpec(BatchRenorm, 'Ioffe 2017', running_stats=True,
                             recurrent=False),
    'dyt': NormSpec(DyT, 'Zhu, Chen, He, LeCun & Liu 2025'),
    'none': NormSpec(Identity, '-', has_shift=False),
}


# A plain net (no skips) whose signal shrinks by more than this at init outputs what float32
# cannot tell apart from a constant: its classifier ignores its input.
MIN_PLAIN_GAIN = 1e-3


def check_plain_gain(cfg, layers: int) -> None:
  """DyT passes a small signal times alpha (tanh(a x) ~ a x): in a plain net with `layers` norms
  in a row the input reaches the head scaled by alpha ** layers at init (the convs and dense
  layers keep its scale). Refused when that is below MIN_PLAIN_GAIN, with the alpha that
  would do."""
  if cfg.norm != 'dyt' or cfg.residual:
    return
  alpha = cfg.get('dyt_alpha', 0.5)
  if alpha ** layers < MIN_PLAIN_GAIN:
    need = MIN_PLAIN_GAIN ** (1 / layers)
    raise ConfigError(f'dyt in a plain net with {layers} norms in a row scales the input by '
                      f'dyt_alpha ** {layers} = {alpha ** layers:.1e} at init: the outputs do '
                      f'not depend on the input to float32 precision; use model.dyt_alpha >= '
                      f'{need:.2f}, residual=True or fewer layers')


def check_norm_name(name: str) -> None:
  if name not in NORMS:
    raise ConfigError(f'unknown norm {name!r}; valid norms: {", ".join(NORMS)}')


def causal_norms() -> list[str]:
  """The norms a language model accepts (for error messages)."""
  return [n for n, spec in NORMS.items() if spec.causal_ok]


BN_SCOPES = ('global', 'per_device', 'ghost')


def make_norm(name: str, *, layout: str = 'image', groups: int = 8, momentum: float = 0.9,
              epsilon: float = 1e-5, bn_scope: str = 'global', bn_ghost_size: int = 0,
              max_positions: int = 512, devices: int = 1,
              dyt_alpha: float = 0.5, renorm: Renorm = Renorm()) -> Callable[..., nn.Module]:
  """Returns a factory: `factory(name=None) -> nn.Module` with the shared call signature.

  layout: `image` (per-example norms pool over H, W, C), `sequence` (per-example norms work
    per token; batch and instance pool over the valid time steps) or `causal` (a language
    model: no statistic pools over time; batch norm per position, with `max_positions` rows
    of running averages).
  bn_scope: which examples BatchNorm's statistics pool over in train mode: `global` (the
    whole, possibly sharded, batch: cross-device all-reduce), `per_device` (each device's
    share: no communication; `devices` groups), `ghost` (groups of `bn_ghost_size` examples).
  """
  check_norm_name(name)
  if layout not in LAYOUTS:
    raise ValueError(f'unknown layout {layout!r}; valid: {", ".join(LAYOUTS)}')
  if layout == 'causal' and not NORMS[name].causal_ok:
    raise ConfigError(f'norm {name} pools its statistics over time and would let a language '
                      f'model see future tokens; valid norms: {", ".join(causal_norms())}')
  if bn_scope not in BN_SCOPES:
    raise ConfigError(f'unknown bn_scope {bn_scope!r}; valid: {", ".join(BN_SCOPES)}')
  if bn_scope == 'ghost' and bn_ghost_size < 1:
    raise ConfigError(f'bn_scope ghost needs bn_ghost_size >= 1; got {bn_ghost_size}')
  if (NORMS[name].running_stats and layout == 'causal' and bn_scope == 'ghost'
      and bn_ghost_size < MIN_POOLED):
    raise ConfigError(f'ghost batch norm in a language model pools {bn_ghost_size} values per '
                      f'position and feature, and normalizing fewer than {MIN_POOLED} outputs a '
                      f'constant (1) or a sign (2) whatever the input; use bn_ghost_size >= '
                      f'{MIN_POOLED}')
  pool_positions = layout == 'image'
  if NORMS[name].running_stats:   # batch, batch_renorm
    kwargs = dict(momentum=momentum, epsilon=epsilon, per_position=layout == 'causal',
                  max_positions=max_positions)
    if name == 'batch_renorm':
      kwargs['renorm'] = renorm
    if bn_scope == 'per_device':
      kwargs['groups'] = devices
    elif bn_scope == 'ghost':
      kwargs['group_size'] = bn_ghost_size
  else:
    kwargs = {
        'layer': dict(epsilon=epsilon, pool_positions=pool_positions),
        'rms': dict(epsilon=epsilon, pool_positions=pool_positions),
        'group': dict(groups=groups, epsilon=epsilon, pool_positions=pool_positions),
        'instance': dict(epsilon=epsilon),
        'dyt': dict(alpha_init=dyt_alpha),
        'none': {},
    }[name]
  return functools.partial(NORMS[name].module, **kwargs)


def from_config(cfg, *, layout: str, name: str | None = None, devices: int = 1):
  """`make_norm` with the norm keys of a model config (`name` overrides cfg.norm)."""
  return make_norm(name or cfg.norm, layout=layout, groups=cfg.norm_groups, devices=devices,
                   momentum=cfg.bn_momentum, epsilon=cfg.norm_epsilon,
                   bn_scope=cfg.get('bn_scope', 'global'),
                   bn_ghost_size=cfg.get('bn_ghost_size', 0),
                   max_positions=cfg.get('max_length', 512),
                   dyt_alpha=cfg.get('dyt_alpha', 0.5),
                   renorm=Renorm(cfg.get('renorm_rmax', 3.0), cfg.get('renorm_dmax', 5.0),
                                 cfg.get('renorm_start', 5000), cfg.get('renorm_ramp', 35000)))
