"""THE normalization registry: a norm name -> a Flax module.

Every model asks `make_norm(name, ...)` for its normalization layers; no model imports a
specific norm class. All norms share one call signature:

    norm(x, *, train: bool, mask: bool[x.shape[:-1]] | None = None) -> same shape as x

`x` has layout (batch, *positions, features): NHWC images or (batch, time, features)
sequences. `mask` marks the real (unpadded) positions, True = real. The mask only changes
*statistics*: padded positions are still normalized and returned (not zeroed), so that a
model's outputs at real positions never depend on what sits in the padding.

Which axes each norm pools its statistics over (B = batch, P = positions, C = features):

    batch     over B and P, per feature       (running averages; eval uses them)
    layer     per example: over P and C        (images, Wu & He 2018) or
              per example and position: over C (sequences, Ba et al. 2016; `pool_positions=False`)
    rms       like layer, but no mean is subtracted (Zhang & Sennrich 2019)
    group     like layer, over groups of C     (Wu & He 2018)
    instance  per example and feature: over P  (Ulyanov et al. 2016)
    none      identity

The wrappers below only choose axes and pass the mask; the arithmetic is flax.linen's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from errors import ConfigError


def _feature_mask(x, mask):
  """(batch, *positions) -> x.shape, so statistics see the mask on every feature."""
  if mask is None:
    return None
  if mask.shape != x.shape[:-1]:
    raise ValueError(f'mask shape {mask.shape} must equal x.shape[:-1] = {x.shape[:-1]}')
  return jnp.broadcast_to(mask[..., None], x.shape).astype(bool)


def _position_axes(x):
  return tuple(range(1, x.ndim - 1))


class BatchNorm(nn.Module):
  """Statistics over the batch and all (valid) positions, per feature.

  Running averages follow flax's convention: ra <- momentum * ra + (1 - momentum) * batch_stat,
  with the biased (1/N) batch variance. `train=False` normalizes with the running averages.

  groups > 1: "ghost" / per-device BatchNorm: the batch is split into `groups` equal, contiguous
  groups that are normalized with their own statistics (under data parallelism with one group
  per device, each device's share: no cross-device communication). The running averages take the
  mean of the groups' statistics. groups == 1 is flax's BatchNorm (under SPMD jit over a sharded
  batch its statistics are global: XLA inserts the all-reduce).
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  groups: int = 1        # a fixed number of groups (per-device: the number of devices)
  group_size: int = 0    # or examples per group (ghost batch norm); 0: unused

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    groups = x.shape[0] // self.group_size if self.group_size else self.groups
    if self.group_size and x.shape[0] % self.group_size:
      raise ConfigError(f'ghost batch norm with {self.group_size} examples per group needs a '
                        f'batch size divisible by {self.group_size}; got {x.shape[0]}')
    if groups <= 1:
      return nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                          epsilon=self.epsilon, dtype=x.dtype, name='bn')(x, mask=_feature_mask(x, mask))
    return self._grouped(x, train, _feature_mask(x, mask), groups)

  def _grouped(self, x, train, mask, groups):
    c = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32)
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    if train:
      if x.shape[0] % groups:
        raise ConfigError(f'batch norm with {groups} groups needs a batch size divisible '
                          f'by {groups}; got {x.shape[0]}')
      g = x.reshape(groups, x.shape[0] // groups, *x.shape[1:]).astype(jnp.float32)
      w = (jnp.ones_like(g) if mask is None else mask.reshape(g.shape)).astype(jnp.float32)
      axes = tuple(range(1, g.ndim - 1))
      count = jnp.maximum(w.sum(axes, keepdims=True), 1.0)
      mean = (g * w).sum(axes, keepdims=True) / count
      var = (((g - mean) ** 2) * w).sum(axes, keepdims=True) / count
      y = ((g - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * mean.reshape(groups, c).mean(0)
        ra_var.value = m * ra_var.value + (1 - m) * var.reshape(groups, c).mean(0)
    else:
      y = (x - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon)
    return (y * scale + bias).astype(x.dtype)


class LayerNorm(nn.Module):
  """Per example; over features (and positions if `pool_positions`). Same in train and eval."""
  epsilon: float = 1e-5
  pool_positions: bool = True

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del train  # LayerNorm computes the same thing at train and test time.
    if not self.pool_positions:  # statistics per position: padding cannot leak in
      return nn.LayerNorm(epsilon=self.epsilon, dtype=x.dtype, name='ln')(x)
    axes = _position_axes(x) + (x.ndim - 1,)
    return nn.LayerNorm(epsilon=self.epsilon, reduction_axes=axes, feature_axes=-1,
                        dtype=x.dtype, name='ln')(x, mask=_feature_mask(x, mask))


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
                        dtype=x.dtype, name='gn')(x, mask=mask)


class InstanceNorm(nn.Module):
  """Per example and feature, over all (valid) positions."""
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del train
    if x.ndim < 3:
      raise ConfigError('instance norm needs inputs with positions (images or sequences)')
    return nn.InstanceNorm(epsilon=self.epsilon, dtype=x.dtype, name='in')(x, mask=_feature_mask(x, mask))


class Identity(nn.Module):
  """No normalization."""

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del train, mask
    return x


NORMS: dict[str, type[nn.Module]] = {
    'batch': BatchNorm,
    'layer': LayerNorm,
    'group': GroupNorm,
    'rms': RMSNorm,
    'instance': InstanceNorm,
    'none': Identity,
}


def check_norm_name(name: str) -> None:
  if name not in NORMS:
    raise ConfigError(f'unknown norm {name!r}; valid norms: {", ".join(NORMS)}')


BN_SCOPES = ('global', 'per_device', 'ghost')


def make_norm(name: str, *, pool_positions: bool = True, groups: int = 8,
              momentum: float = 0.9, epsilon: float = 1e-5, bn_scope: str = 'global',
              bn_ghost_size: int = 0) -> Callable[..., nn.Module]:
  """Returns a factory: `factory(name=None) -> nn.Module` with the shared call signature.

  pool_positions: whether per-example norms (layer, rms, group) pool over positions.
    True for images (normalize over H, W, C), False for sequences (each token on its own).
  bn_scope: which examples BatchNorm's statistics pool over in train mode: `global` (the
    whole, possibly sharded, batch: cross-device all-reduce), `per_device` (each device's
    share: no communication), `ghost` (groups of `bn_ghost_size` examples).
  """
  check_norm_name(name)
  if bn_scope not in BN_SCOPES:
    raise ConfigError(f'unknown bn_scope {bn_scope!r}; valid: {", ".join(BN_SCOPES)}')
  if bn_scope == 'ghost' and bn_ghost_size < 1:
    raise ConfigError(f'bn_scope ghost needs bn_ghost_size >= 1; got {bn_ghost_size}')
  bn_groups = {'global': {}, 'per_device': {'groups': jax.device_count()},
               'ghost': {'group_size': bn_ghost_size}}[bn_scope]
  kwargs = {
      'batch': dict(momentum=momentum, epsilon=epsilon, **bn_groups),
      'layer': dict(epsilon=epsilon, pool_positions=pool_positions),
      'rms': dict(epsilon=epsilon, pool_positions=pool_positions),
      'group': dict(groups=groups, epsilon=epsilon, pool_positions=pool_positions),
      'instance': dict(epsilon=epsilon),
      'none': {},
  }[name]
  return functools.partial(NORMS[name], **kwargs)


def from_config(cfg, *, pool_positions: bool, name: str | None = None):
  """`make_norm` with the norm keys of a model config (`name` overrides cfg.norm)."""
  return make_norm(name or cfg.norm, pool_positions=pool_positions, groups=cfg.norm_groups,
                   momentum=cfg.bn_momentum, epsilon=cfg.norm_epsilon,
                   bn_scope=cfg.get('bn_scope', 'global'), bn_ghost_size=cfg.get('bn_ghost_size', 0))
