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
    none      identity

`batch` keeps running averages for eval (per position in the causal layout, as recurrent BN
keeps them per time step: Cooijmans et al. 2016). Variances are two-pass (E[(x - mean)²],
never E[x²] - mean², which loses all precision when the mean is large against the spread).
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


def _feature_mask(x, mask):
  """(batch, *positions) -> x.shape, so statistics see the mask on every feature."""
  if mask is None:
    return None
  if mask.shape != x.shape[:-1]:
    raise ValueError(f'mask shape {mask.shape} must equal x.shape[:-1] = {x.shape[:-1]}')
  return jnp.broadcast_to(mask[..., None], x.shape).astype(bool)


def _position_axes(x):
  return tuple(range(1, x.ndim - 1))


def masked_moments(x, weights, axes):
  """(mean, biased variance, count) of `x` over `axes`, counting each element by `weights`
  (0/1). The mean is refined once (mean + mean of the residuals), so that it is accurate to
  float32 rounding even when it is 1000x the spread; the variance is two-pass."""
  count = weights.sum(axes, keepdims=True)
  safe = jnp.maximum(count, 1.0)
  mean = (x * weights).sum(axes, keepdims=True) / safe
  mean = mean + ((x - mean) * weights).sum(axes, keepdims=True) / safe
  var = (jnp.square(x - mean) * weights).sum(axes, keepdims=True) / safe
  return mean, var, count


class BatchNorm(nn.Module):
  """Statistics over the batch (and, unless `per_position`, all valid positions), per feature.

  Running averages follow flax's convention: ra <- momentum * ra + (1 - momentum) * batch_stat,
  with the biased (1/N) batch variance. `train=False` normalizes with the running averages.

  per_position (the causal layout of a language model): statistics over the batch's valid
  examples at each position separately, so no position sees a later one; running averages per
  position, `max_positions` of them (later positions share the last). A position where no
  example is valid leaves its running average unchanged.

  groups > 1: "ghost" / per-device BatchNorm: the batch is split into `groups` equal, contiguous
  groups that are normalized with their own statistics (under data parallelism with one group
  per device, each device's share: no cross-device communication). The running averages take
  the groups' statistics weighted by their numbers of valid positions. groups == 1 with pooled
  positions is flax's BatchNorm (under SPMD jit over a sharded batch its statistics are global:
  XLA inserts the all-reduce).
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  groups: int = 1        # a fixed number of groups (per-device: the number of devices)
  group_size: int = 0    # or examples per group (ghost batch norm); 0: unused
  per_position: bool = False
  max_positions: int = 512

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    groups = x.shape[0] // self.group_size if self.group_size else self.groups
    if self.group_size and x.shape[0] % self.group_size:
      raise ConfigError(f'ghost batch norm with {self.group_size} examples per group needs a '
                        f'batch size divisible by {self.group_size}; got {x.shape[0]}')
    if groups <= 1 and not self.per_position:
      return nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                          epsilon=self.epsilon, dtype=x.dtype, use_fast_variance=False,
                          name='bn')(x, mask=_feature_mask(x, mask))
    return self._general(x, train, mask, max(groups, 1))

  def _general(self, x, train, mask, groups):
    c = x.shape[-1]
    if self.per_position and x.ndim != 3:
      raise ValueError(f'per-position batch norm needs (batch, time, features); got {x.shape}')
    stat_shape = (self.max_positions, c) if self.per_position else (c,)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, stat_shape, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, stat_shape, jnp.float32)
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    # the running statistics that apply to this input: one row per position, or one
    steps = jnp.minimum(jnp.arange(x.shape[1]), self.max_positions - 1) if self.per_position else ...
    if not train:
      y = (x.astype(jnp.float32) - ra_mean.value[steps]) * jax.lax.rsqrt(ra_var.value[steps]
                                                                        + self.epsilon)
      return (y * scale + bias).astype(x.dtype)
    if x.shape[0] % groups:
      raise ConfigError(f'batch norm with {groups} groups needs a batch size divisible '
                        f'by {groups}; got {x.shape[0]}')
    g = x.reshape(groups, x.shape[0] // groups, *x.shape[1:]).astype(jnp.float32)
    valid = jnp.ones(x.shape[:-1], bool) if mask is None else mask
    w = jnp.broadcast_to(valid.reshape(g.shape[:-1])[..., None], g.shape).astype(jnp.float32)
    # over the group's examples (axis 1) and, unless per position, its positions
    axes = (1,) if self.per_position else tuple(range(1, g.ndim - 1))
    mean, var, count = masked_moments(g, w, axes)
    y = ((g - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    if not self.is_initializing():
      # the groups' statistics, each weighted by its number of valid positions
      total = jnp.maximum(count.sum(0), 1.0)
      new_mean, new_var = ((s * count).sum(0).reshape(ra_mean.value[steps].shape) /
                           total.reshape(ra_mean.value[steps].shape) for s in (mean, var))
      m = self.momentum
      seen = count.sum(0).reshape(ra_mean.value[steps].shape) > 0
      for ra, new in ((ra_mean, new_mean), (ra_var, new_var)):
        old = ra.value[steps]
        ra.value = ra.value.at[steps].set(jnp.where(seen, m * old + (1 - m) * new, old))
    return (y * scale + bias).astype(x.dtype)


class LayerNorm(nn.Module):
  """Per example; over features (and positions if `pool_positions`). Same in train and eval."""
  epsilon: float = 1e-5
  pool_positions: bool = True

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del train  # LayerNorm computes the same thing at train and test time.
    if not self.pool_positions:  # statistics per position: padding cannot leak in
      return nn.LayerNorm(epsilon=self.epsilon, dtype=x.dtype, use_fast_variance=False,
                          name='ln')(x)
    axes = _position_axes(x) + (x.ndim - 1,)
    return nn.LayerNorm(epsilon=self.epsilon, reduction_axes=axes, feature_axes=-1,
                        dtype=x.dtype, use_fast_variance=False,
                        name='ln')(x, mask=_feature_mask(x, mask))


class RMSNorm(nn.Module):
  """LayerNorm without mean subtraction and without bias."""
  epsilon: float = 1e-5
  pool_positions: bool = True

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del train
    if not self.pool_positions:
      return nn.RMSNorm(epsilon=self.epsilon, dtype=x.dtype, name='rms')(x)
    axes = _position_axes(x) + (x.ndim - 1,)
    return nn.RMSNorm(epsilon=self.epsilon, reduction_axes=axes, feature_axes=-1,
                      dtype=x.dtype, name='rms')(x, mask=_feature_mask(x, mask))


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
    axes = (_position_axes(x) if self.pool_positions else ()) + (x.ndim - 1,)
    mask = _feature_mask(x, mask) if self.pool_positions else None
    return nn.GroupNorm(num_groups=groups, epsilon=self.epsilon, reduction_axes=axes,
                        dtype=x.dtype, use_fast_variance=False, name='gn')(x, mask=mask)


class InstanceNorm(nn.Module):
  """Per example and feature, over all (valid) positions."""
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del train
    if x.ndim < 3:
      raise ConfigError('instance norm needs inputs with positions (images or sequences)')
    return nn.InstanceNorm(epsilon=self.epsilon, dtype=x.dtype, use_fast_variance=False,
                           name='in')(x, mask=_feature_mask(x, mask))


class Identity(nn.Module):
  """No normalization."""

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del train, mask
    return x


@dataclasses.dataclass(frozen=True)
class NormSpec:
  """A norm in the registry: its module and the facts builders and config checks ask for."""
  module: type[nn.Module]
  running_stats: bool      # keeps running averages: eval mode computes something else than train
  causal_ok: bool          # can be made causal (a language model's position t sees no t' > t)
  erases_position_mean: bool  # its output, per example and feature, has a fixed mean over the
  #                             positions it pools: mean-pooling that output loses the input
  paper: str


NORMS: dict[str, NormSpec] = {
    'batch': NormSpec(BatchNorm, running_stats=True, causal_ok=True,
                      erases_position_mean=False, paper='Ioffe & Szegedy 2015'),
    'layer': NormSpec(LayerNorm, running_stats=False, causal_ok=True,
                      erases_position_mean=False, paper='Ba, Kiros & Hinton 2016'),
    'group': NormSpec(GroupNorm, running_stats=False, causal_ok=True,
                      erases_position_mean=False, paper='Wu & He 2018'),
    'rms': NormSpec(RMSNorm, running_stats=False, causal_ok=True,
                    erases_position_mean=False, paper='Zhang & Sennrich 2019'),
    'instance': NormSpec(InstanceNorm, running_stats=False, causal_ok=False,
                         erases_position_mean=True, paper='Ulyanov, Vedaldi & Lempitsky 2016'),
    'none': NormSpec(Identity, running_stats=False, causal_ok=True,
                     erases_position_mean=False, paper='-'),
}


def check_norm_name(name: str) -> None:
  if name not in NORMS:
    raise ConfigError(f'unknown norm {name!r}; valid norms: {", ".join(NORMS)}')


def causal_norms() -> list[str]:
  """The norms a language model accepts (for error messages)."""
  return [n for n, spec in NORMS.items() if spec.causal_ok]


BN_SCOPES = ('global', 'per_device', 'ghost')


def make_norm(name: str, *, layout: str = 'image', groups: int = 8, momentum: float = 0.9,
              epsilon: float = 1e-5, bn_scope: str = 'global', bn_ghost_size: int = 0,
              max_positions: int = 512) -> Callable[..., nn.Module]:
  """Returns a factory: `factory(name=None) -> nn.Module` with the shared call signature.

  layout: `image` (per-example norms pool over H, W, C), `sequence` (per-example norms work
    per token; batch and instance pool over the valid time steps) or `causal` (a language
    model: no statistic pools over time; batch norm per position, with `max_positions` rows
    of running averages).
  bn_scope: which examples BatchNorm's statistics pool over in train mode: `global` (the
    whole, possibly sharded, batch: cross-device all-reduce), `per_device` (each device's
    share: no communication), `ghost` (groups of `bn_ghost_size` examples).
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
  pool_positions = layout == 'image'
  if name == 'batch':
    kwargs = dict(momentum=momentum, epsilon=epsilon, per_position=layout == 'causal',
                  max_positions=max_positions)
    if bn_scope == 'per_device':
      kwargs['groups'] = jax.device_count()
    elif bn_scope == 'ghost':
      kwargs['group_size'] = bn_ghost_size
  else:
    kwargs = {
        'layer': dict(epsilon=epsilon, pool_positions=pool_positions),
        'rms': dict(epsilon=epsilon, pool_positions=pool_positions),
        'group': dict(groups=groups, epsilon=epsilon, pool_positions=pool_positions),
        'instance': dict(epsilon=epsilon),
        'none': {},
    }[name]
  return functools.partial(NORMS[name].module, **kwargs)


def from_config(cfg, *, layout: str, name: str | None = None):
  """`make_norm` with the norm keys of a model config (`name` overrides cfg.norm)."""
  return make_norm(name or cfg.norm, layout=layout, groups=cfg.norm_groups,
                   momentum=cfg.bn_momentum, epsilon=cfg.norm_epsilon,
                   bn_scope=cfg.get('bn_scope', 'global'),
                   bn_ghost_size=cfg.get('bn_ghost_size', 0),
                   max_positions=cfg.get('max_length', 512))
