"""Which parameters weight decay touches, for every model family, found by applying the
optimizer; and the learning-rate schedules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import config_space as cs
from configs import default
from errors import ConfigError
from training import optim
import ml_collections

# one point per (model, data) in the allowed space, with BatchNorm (it has params and stats)
POINTS = {(p.model, p.data): p for p in cs.space()[0]
          if p.norm == 'batch' and p.bn_scope == 'global'}


def _decayed(params, decay_on, name='sgd'):
  """The parameter paths that a step with zero gradients changes (only decay can change them)."""
  cfg = default.get_config().optimizer
  cfg.unlock()
  cfg.update(name=name, momentum=0.0, weight_decay=0.5, weight_decay_on=decay_on)
  tx = optim.make_optimizer(cfg, lambda step: 1.0)
  params = jax.tree.map(jnp.ones_like, params)   # nonzero everywhere, so decay shows
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  return {tuple(k.key for k in path) for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]
          if np.abs(np.asarray(u)).max() > 0}


def _conv_and_dense_kernels(model, x, mask):
  """Paths of every Conv / Dense / DenseGeneral kernel, recorded from the modules that run."""
  kernels = set()

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, (nn.Conv, nn.Dense, nn.DenseGeneral)):
      kernels.add(tuple(context.module.scope.path) + ('kernel',))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    variables = model.init(jax.random.key(0), x, train=False, mask=mask)
  return variables['params'], kernels


_FAST_KEYS = cs.once_each(sorted(POINTS), factors=(0, 1))   # every family and data kind once


@pytest.mark.parametrize('key', [pytest.param(k, id=f'{k[0]}-{k[1]}',
                                              marks=() if k in _FAST_KEYS else pytest.mark.slow)
                                 for k in sorted(POINTS)])
@pytest.mark.parametrize('name', ['sgd', 'adamw'])
def test_weight_decay_touches_exactly_conv_and_dense_kernels(key, name):
  p = POINTS[key]
  x, mask, _ = cs.batch(p, size=2)
  params, kernels = _conv_and_dense_kernels(cs.build(p), x, mask)
  every = {tuple(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert _decayed(params, 'kernels', name) == kernels
  assert _decayed(params, 'all', name) == every
  matrices = _decayed(params, 'matrices', name)
  assert kernels <= matrices
  if p.model == 'transformer':   # embeddings and attention biases are matrices, not kernels
    assert {path[-1] for path in matrices - kernels} >= {'pos_embedding', 'bias'}


def test_unknown_decay_set_lists_the_valid_ones():
  cfg = default.get_config().optimizer
  cfg.unlock()
  cfg.weight_decay_on = 'weights'
  with pytest.raises(ConfigError, match='kernels, matrices, all'):
    optim.check_config(cfg)


@pytest.mark.parametrize('name', ['adam', 'adamw'])
def test_adam_second_moment_decay_is_the_configured_b2(name):
  """Three Adam steps on one parameter with b2 = 0.98 against Kingma & Ba's update in numpy
  (with 0.999 the result differs by 80x the tolerance)."""
  cfg = default.get_config().optimizer
  cfg.unlock()
  cfg.update(name=name, weight_decay=0.0, b2=0.98)
  tx = optim.make_optimizer(cfg, lambda step: 0.1)
  params = {'kernel': jnp.array([1.0])}
  state = tx.init(params)
  grads = [3.0, -0.5, 0.2]
  m = v = 0.0
  expected = 1.0
  for t, g in enumerate(grads, 1):
    updates, state = tx.update({'kernel': jnp.array([g])}, state, params)
    params = jax.tree.map(jnp.add, params, updates)
    m, v = 0.9 * m + 0.1 * g, 0.98 * v + 0.02 * g * g
    expected -= 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.98 ** t)) + 1e-8)
  assert float(params['kernel'][0]) == pytest.approx(expected, rel=1e-5)
  m = v = 0.0
  other = 1.0
  for t, g in enumerate(grads, 1):
    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    other -= 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
  assert abs(other - expected) > 1e-4   # 80x the tolerance above


def test_adaptive_gradient_clipping_clips_each_unit_to_its_ratio_of_the_weight_norm():
  rng = np.random.default_rng(2)
  params = {'dense': {'kernel': rng.normal(size=(4, 3)).astype(np.float32),
                      'bias': np.zeros(3, np.float32)},
            'conv': {'kernel': 0.01 * rng.normal(size=(3, 3, 2, 5)).astype(np.float32)}}
  grads = jax.tree.map(lambda v: (10 * rng.normal(size=v.shape)).astype(np.float32), params)
  cfg = ml_collections.ConfigDict(dict(name='sgd', learning_rate=1.0, momentum=0.0,
                                       nesterov=False, weight_decay=0.0, agc=0.05,
                                       weight_decay_on='kernels', b2=0.999))
  tx = optim.make_optimizer(cfg, optim.make_schedule(
      ml_collections.ConfigDict(dict(learning_rate=1.0, warmup_steps=0, schedule='constant')),
      10))
  updates, _ = tx.update(grads, tx.init(params), params)

  def unit_norm(v):   # per output unit: all axes but the last; a vector is one unit (NFNets)
    v = np.asarray(v, np.float64)
    axes = None if v.ndim <= 1 else tuple(range(v.ndim - 1))
    return np.sqrt((v ** 2).sum(axis=axes, keepdims=v.ndim > 1))
  for path in (('dense', 'kernel'), ('dense', 'bias'), ('conv', 'kernel')):
    g, w = grads[path[0]][path[1]], params[path[0]][path[1]]
    limit = 0.05 * np.maximum(unit_norm(w), 1e-3)
    want = np.where(unit_norm(g) > limit, g * limit / np.maximum(unit_norm(g), 1e-6), g)
    np.testing.assert_allclose(-np.asarray(updates[path[0]][path[1]]), want, rtol=1e-5,
                               atol=1e-7)
  assert not np.allclose(-np.asarray(updates['conv']['kernel']), grads['conv']['kernel'])
