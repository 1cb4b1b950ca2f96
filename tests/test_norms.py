"""Every norm in the registry against an independent numpy computation of its formula."""

import re

import jax
import numpy as np
import pytest

from errors import ConfigError
from models import norms
import jax.numpy as jnp

EPS = 1e-5
RNG = np.random.default_rng(0)


def apply(name, x, *, train=True, mask=None, pool_positions=True, groups=4, variables=None,
          params_like_random=True):
  """Initializes the registry's module, randomizes scale/bias, applies it."""
  module = norms.make_norm(name, layout='image' if pool_positions else 'sequence', norm_groups=groups,
                           norm_epsilon=EPS)()
  if variables is None:
    variables = module.init(jax.random.key(0), x, train=False)
    if params_like_random:  # non-trivial affine parameters, so the test checks them too
      variables = jax.tree_util.tree_map_with_path(
          lambda path, v: (RNG.normal(size=v.shape).astype(np.float32)
                           if path[0].key == 'params' else v), variables)
  out, updates = module.apply(variables, x, train=train, mask=mask, mutable=['batch_stats'])
  return np.asarray(out), variables, updates


def affine(variables):
  """The (scale, bias) of a module's variables, or (1, 0) where absent."""
  leaves = {p[-1].key: np.asarray(v) for p, v in
            jax.tree_util.tree_flatten_with_path(variables.get('params', {}))[0]}
  return leaves.get('scale', 1.0), leaves.get('bias', 0.0)


def normalize(x, axes, where=True, subtract_mean=True):
  mean = x.mean(axis=axes, keepdims=True, where=where) if subtract_mean else 0.0
  var = ((x - mean) ** 2).mean(axis=axes, keepdims=True, where=where)
  return (x - mean) / np.sqrt(var + EPS)


def images():
  return RNG.normal(2.0, 3.0, size=(4, 5, 6, 8)).astype(np.float32)


def sequences():
  """(batch, time, features) with right padding filled with large garbage, and the mask."""
  lengths = np.array([7, 3, 5, 1])
  x = RNG.normal(1.0, 2.0, size=(4, 7, 8)).astype(np.float32)
  mask = np.arange(7)[None, :] < lengths[:, None]
  x = np.where(mask[..., None], x, 1e3)
  return x, mask, lengths


@pytest.mark.parametrize('name,axes,subtract_mean', [
    ('batch', (0, 1, 2), True),
    ('layer', (1, 2, 3), True),
    ('rms', (1, 2, 3), False),
    ('instance', (1, 2), True),
])
def test_norm_matches_numpy_on_images(name, axes, subtract_mean):
  x = images()
  out, variables, _ = apply(name, x)
  scale, bias = affine(variables)
  expected = normalize(x, axes, subtract_mean=subtract_mean) * scale + bias
  np.testing.assert_allclose(out, expected, rtol=2e-4, atol=2e-4)


def test_group_norm_matches_numpy_on_images():
  x = images()
  out, variables, _ = apply('group', x, groups=4)
  scale, bias = affine(variables)
  g = x.reshape(4, 5, 6, 4, 2)  # 8 channels in 4 groups of 2
  expected = normalize(g, (1, 2, 4)).reshape(x.shape) * scale + bias
  np.testing.assert_allclose(out, expected, rtol=2e-4, atol=2e-4)


def test_none_is_identity():
  x = images()
  np.testing.assert_array_equal(apply('none', x)[0], x)


def test_sequence_norms_per_position_ignore_other_positions():
  """pool_positions=False (sequences): each token normalized over its own features."""
  x, _, _ = sequences()
  for name, subtract_mean in (('layer', True), ('rms', False)):
    out, variables, _ = apply(name, x, pool_positions=False)
    scale, bias = affine(variables)
    expected = normalize(x, (2,), subtract_mean=subtract_mean) * scale + bias
    np.testing.assert_allclose(out, expected, rtol=2e-4, atol=2e-4)


def test_masked_batch_norm_uses_valid_tokens_only():
  x, mask, _ = sequences()
  out, variables, _ = apply('batch', x, mask=mask)
  scale, bias = affine(variables)
  valid = x[mask]                                   # (num_valid_tokens, features)
  mean, var = valid.mean(0), valid.var(0)
  expected = (x - mean) / np.sqrt(var + EPS) * scale + bias  # padded positions normalized too
  np.testing.assert_allclose(out, expected, rtol=2e-4, atol=2e-3)
  # Without the mask, the padding's garbage enters the statistics: outputs differ a lot.
  unmasked, _, _ = apply('batch', x, variables=variables)
  assert np.abs(unmasked[mask] - out[mask]).max() > 0.1


@pytest.mark.parametrize('name', ['layer', 'rms', 'group', 'instance'])
def test_masked_pooled_norm_equals_unpadded_computation(name):
  """Statistics over positions with a mask == the same example run truncated, no mask."""
  x, mask, lengths = sequences()
  padded, variables, _ = apply(name, x, mask=mask, pool_positions=True)
  for i, n in enumerate(lengths):
    alone, _, _ = apply(name, x[i:i + 1, :n], pool_positions=True, variables=variables)
    np.testing.assert_allclose(padded[i, :n], alone[0], rtol=2e-4, atol=2e-4)
  unmasked, _, _ = apply(name, x, pool_positions=True, variables=variables)
  assert np.abs(unmasked[mask] - padded[mask]).max() > 0.1  # the mask matters


def test_batch_norm_running_averages_and_eval_mode():
  x = images()
  momentum = 0.8
  module = norms.make_norm('batch', bn_momentum=momentum, norm_epsilon=EPS)()
  variables = module.init(jax.random.key(0), x, train=False)
  _, updates = module.apply(variables, x, train=True, mutable=['batch_stats'])
  stats = updates['batch_stats']['bn']
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))  # flax keeps the biased batch variance
  np.testing.assert_allclose(stats['mean'], (1 - momentum) * mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats['var'], momentum * 1.0 + (1 - momentum) * var, rtol=1e-4)
  # A second step moves the averages again by the same rule.
  variables = {**variables, 'batch_stats': updates['batch_stats']}
  x2 = x * 0.5 + 1.0
  _, updates2 = module.apply(variables, x2, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(updates2['batch_stats']['bn']['mean'],
                             momentum * stats['mean'] + (1 - momentum) * x2.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-5)
  # Eval mode normalizes with the running averages, not the batch's statistics.
  out = module.apply(variables, x2, train=False)
  expected = (x2 - stats['mean']) / np.sqrt(stats['var'] + EPS)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_masked_batch_norm_running_averages_ignore_padding():
  x, mask, _ = sequences()
  module = norms.make_norm('batch', bn_momentum=0.0, norm_epsilon=EPS)()  # momentum 0: ra = batch stat
  variables = module.init(jax.random.key(0), x, train=False)
  _, updates = module.apply(variables, x, train=True, mask=mask, mutable=['batch_stats'])
  np.testing.assert_allclose(updates['batch_stats']['bn']['mean'], x[mask].mean(0), rtol=1e-4)
  np.testing.assert_allclose(updates['batch_stats']['bn']['var'], x[mask].var(0), rtol=1e-3)


@pytest.mark.parametrize('name', [n for n, s in norms.NORMS.items() if not s.running_stats])
def test_stateless_norms_identical_in_train_and_eval(name):
  x = images()
  train_out, variables, updates = apply(name, x, train=True)
  eval_out, _, _ = apply(name, x, train=False, variables=variables)
  np.testing.assert_array_equal(train_out, eval_out)
  assert 'batch_stats' not in variables and not updates


def test_unknown_norm_lists_valid_names():
  with pytest.raises(ConfigError) as e:
    norms.make_norm('batchnorm')
  for name in norms.NORMS:
    assert name in str(e.value)


def test_ghost_batch_norm_normalizes_each_group_with_its_own_statistics():
  x = images()   # batch of 4 -> 2 groups of 2
  module = norms.make_norm('batch', bn_scope='ghost', bn_ghost_size=2, bn_momentum=0.5,
                           norm_epsilon=EPS)()
  variables = module.init(jax.random.key(0), x, train=False)
  out, updates = module.apply(variables, x, train=True, mutable=['batch_stats'])
  groups = [x[:2], x[2:]]
  expected = np.concatenate([normalize(g, (0, 1, 2)) for g in groups])
  np.testing.assert_allclose(out, expected, rtol=2e-4, atol=2e-4)
  mean = np.mean([g.mean((0, 1, 2)) for g in groups], axis=0)
  var = np.mean([g.var((0, 1, 2)) for g in groups], axis=0)
  np.testing.assert_allclose(updates['batch_stats']['bn']['mean'], 0.5 * mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(updates['batch_stats']['bn']['var'], 0.5 + 0.5 * var, rtol=1e-4)
  variables = {**variables, **updates}
  eval_out = module.apply(variables, x, train=False)
  np.testing.assert_allclose(eval_out, (x - 0.5 * mean) / np.sqrt(0.5 + 0.5 * var + EPS),
                             rtol=1e-4, atol=1e-4)
  with pytest.raises(ConfigError, match='divisible by 3'):
    norms.make_norm('batch', bn_scope='ghost', bn_ghost_size=3)().init(
        jax.random.key(0), x, train=True)
  with pytest.raises(ConfigError, match='global, per_device, ghost'):
    norms.make_norm('batch', bn_scope='device')


# --------------------------------------------------------------------------- causal layout

def test_causal_batch_norm_uses_each_positions_valid_examples_only():
  """Language models: statistics over the batch's valid examples at each position; running
  averages per position (unchanged where no example is valid); eval uses the position's."""
  x, mask, _ = sequences()           # lengths 7, 3, 5, 1: position 6 has one valid example
  x[:, 6] += 5.0                      # the last position has its own statistics
  momentum = 0.25
  module = norms.make_norm('batch', layout='causal', bn_momentum=momentum, norm_epsilon=EPS,
                           max_positions=9)()
  variables = module.init(jax.random.key(0), x, train=False)
  out, updates = module.apply(variables, x, train=True, mask=mask, mutable=['batch_stats'])
  ra_mean, ra_var = np.zeros((9, 8)), np.ones((9, 8))
  for t in range(x.shape[1]):
    valid = x[mask[:, t], t]         # (valid examples at t, features)
    mean, var = valid.mean(0), valid.var(0)
    np.testing.assert_allclose(out[:, t], (x[:, t] - mean) / np.sqrt(var + EPS),
                               rtol=2e-4, atol=2e-3)
    ra_mean[t] = momentum * 0.0 + (1 - momentum) * mean
    ra_var[t] = momentum * 1.0 + (1 - momentum) * var
  np.testing.assert_allclose(updates['batch_stats']['bn']['mean'], ra_mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['bn']['var'], ra_var, rtol=1e-4, atol=1e-5)
  # a position no example reaches keeps its running averages
  short_mask = mask.copy()
  short_mask[:, 5:] = False
  _, kept = module.apply(variables, x, train=True, mask=short_mask, mutable=['batch_stats'])
  np.testing.assert_array_equal(kept['batch_stats']['bn']['mean'][5:], 0.0)
  np.testing.assert_array_equal(kept['batch_stats']['bn']['var'][5:], 1.0)
  # eval: each position with its own running averages
  evaluated = module.apply({**variables, **updates}, x, train=False)
  np.testing.assert_allclose(evaluated, (x - ra_mean[:7]) / np.sqrt(ra_var[:7] + EPS),
                             rtol=1e-4, atol=1e-4)


def test_causal_layout_refuses_norms_that_pool_over_time():
  for name, spec in norms.NORMS.items():
    if spec.causal_ok:
      norms.make_norm(name, layout='causal')
    else:
      with pytest.raises(ConfigError, match='future tokens'):
        norms.make_norm(name, layout='causal')


def test_ghost_batch_norm_weights_groups_by_valid_positions():
  x, mask, _ = sequences()           # groups of 2 examples: 10 and 6 valid tokens
  module = norms.make_norm('batch', layout='sequence', bn_scope='ghost', bn_ghost_size=2,
                           bn_momentum=0.0, norm_epsilon=EPS)()
  variables = module.init(jax.random.key(0), x, train=False)
  out, updates = module.apply(variables, x, train=True, mask=mask, mutable=['batch_stats'])
  stats = [(x[i:i + 2][mask[i:i + 2]]) for i in (0, 2)]
  for i, valid in zip((0, 2), stats):
    np.testing.assert_allclose(out[i:i + 2][mask[i:i + 2]],
                               (valid - valid.mean(0)) / np.sqrt(valid.var(0) + EPS),
                               rtol=2e-4, atol=2e-3)
  counts = np.array([len(v) for v in stats], float)
  mean = sum(c * v.mean(0) for c, v in zip(counts, stats)) / counts.sum()
  var = sum(c * v.var(0) for c, v in zip(counts, stats)) / counts.sum()
  np.testing.assert_allclose(updates['batch_stats']['bn']['mean'], mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['bn']['var'], var, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- precision (two-pass variance)

def _reference(name, layout, x, mask, groups):
  """float64 numpy: the normalized output (before scale and bias) of each norm and layout."""
  x = x.astype(np.float64)
  p_axes = tuple(range(1, x.ndim - 1))
  where = True if mask is None else np.broadcast_to(mask[..., None], x.shape)
  if name == 'batch_renorm':   # at init (step 0 < renorm_start): BatchNorm itself; the
    name = 'batch'             # corrections: test_beyond_six.py
  if name == 'batch':
    if layout == 'causal':
      return np.stack([normalize(x[:, t], (0,), where if mask is None else where[:, t])
                       for t in range(x.shape[1])], 1)
    return normalize(x, (0,) + p_axes, where)
  if name == 'instance':
    return normalize(x, p_axes, where)
  per_example = layout == 'image'
  axes = (p_axes if per_example else ()) + (x.ndim - 1,)
  w = where if per_example else True
  if name in ('layer', 'rms'):
    return normalize(x, axes, w, subtract_mean=name == 'layer')
  if name == 'group':
    g = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    gw = w if w is True else w.reshape(g.shape)
    gaxes = (tuple(range(1, x.ndim - 1)) if per_example else ()) + (g.ndim - 1,)
    return normalize(g, gaxes, gw).reshape(x.shape)
  if name == 'scale':   # at init: g = sqrt(d), d the values normalized together
    d = np.prod([x.shape[a] for a in axes])
    return np.sqrt(d) * x / np.sqrt((np.where(w, x, 0.0) ** 2).sum(axes, keepdims=True))
  if name == 'dyt':   # at init: alpha 0.5, gamma 1, beta 0 (no statistics)
    return np.tanh(0.5 * x)
  if name == 'none':
    return x
  raise KeyError(f'no float64 reference for norm {name!r}: add one here')


LAYOUT_CASES = [(n, layout) for n in norms.NORMS for layout in norms.LAYOUTS
                if layout != 'causal' or norms.NORMS[n].causal_ok]


@pytest.mark.parametrize('name,layout', LAYOUT_CASES)
def test_every_norm_is_exact_on_large_means_and_small_channel_groups(name, layout):
  """Inputs whose mean is 1000x their spread, and N(2, 3) data in groups of 2 channels (4 per
  token, the fewest allowed being 3), against float64 (the fast variance E[x²] - E[x]² errs by
  up to 189 and 1e-3 there)."""
  rng = np.random.default_rng(3)
  shape = (4, 5, 6, 8) if layout == 'image' else (6, 7, 8)
  mask = None if layout == 'image' else np.arange(7)[None] < np.array([7, 3, 5, 2, 7, 4])[:, None]
  for x in (rng.normal(1000.0, 1.0, shape), rng.normal(2.0, 3.0, shape)):
    x = x.astype(np.float32)
    groups = 4 if layout == 'image' else 2
    module = norms.make_norm(name, layout=layout, norm_groups=groups, norm_epsilon=EPS)()
    variables = module.init(jax.random.key(0), x, train=False)
    out, _ = module.apply(variables, x, train=True, mask=mask, mutable=['batch_stats'])
    expected = _reference(name, layout, x, mask, groups=groups)
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=1e-4, atol=1e-4,
                               err_msg=f'{name} {layout} mean {x.mean():.0f}')


@pytest.mark.parametrize('layout', ['sequence', 'causal'])
def test_statistics_of_fewer_than_three_values_are_refused(layout):
  """Normalizing 1 value gives 0 and 2 values give -1/+1 whatever the input: per-token group
  norm with 2 features per group, and ghost BN in an LM (per position) with groups of 2."""
  x = np.random.default_rng(0).normal(size=(4, 5, 8)).astype(np.float32)
  module = norms.make_norm('group', layout=layout, norm_groups=4)()   # 2 features per group
  with pytest.raises(ConfigError, match='fewer than 3'):
    module.init(jax.random.key(0), x, train=False)
  assert norms.make_norm('group', layout='image', norm_groups=4)().init(   # pooled over positions
      jax.random.key(0), x[:, :, None], train=False)
  with pytest.raises(ConfigError, match='bn_ghost_size >= 3'):
    norms.make_norm('batch', layout='causal', bn_scope='ghost', bn_ghost_size=2)


def test_a_group_with_no_real_token_passes_padding_through_unscaled():
  """Ghost BN per position: where a group has no real example, variance 1 (not 0, which would
  scale the padding by 1/sqrt(eps) in every layer)."""
  x = np.random.default_rng(0).normal(size=(6, 3, 2)).astype(np.float32)
  mask = np.ones((6, 3), bool)
  mask[3:, 1:] = False   # the second group of 3 has no real example after t = 0
  module = norms.make_norm('batch', layout='causal', bn_scope='ghost', bn_ghost_size=3)()
  variables = module.init(jax.random.key(0), x, train=False)
  out, _ = module.apply(variables, x, train=True, mask=mask, mutable=['batch_stats'])
  np.testing.assert_allclose(np.asarray(out)[3:, 1:], x[3:, 1:] / np.sqrt(1 + 1e-5), rtol=1e-6)
  assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize('layout', norms.LAYOUTS)
def test_dyt_is_gamma_tanh_alpha_x_plus_beta(layout):
  rng = np.random.default_rng(0)
  shape = (4, 5, 5, 6) if layout == 'image' else (4, 7, 6)
  x = (3 * rng.normal(size=shape)).astype(np.float32)
  module = norms.make_norm('dyt', layout=layout, dyt_alpha=0.8)()
  variables = module.init(jax.random.key(0), x, train=False)
  assert float(variables['params']['alpha']) == np.float32(0.8)   # the configured init
  params = {'alpha': np.float32(1.3), 'scale': rng.normal(size=6).astype(np.float32),
            'bias': rng.normal(size=6).astype(np.float32)}
  want = params['scale'] * np.tanh(1.3 * x.astype(np.float64)) + params['bias']
  mask = np.ones(shape[:-1], bool)
  mask[:, -2:] = False
  for train in (True, False):
    out = module.apply({'params': params}, x, train=train, mask=mask)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('layout', ['image', 'sequence'])
def test_batch_renorm_is_batch_norm_corrected_by_clipped_r_and_d(layout):
  """Ioffe 2017, Algorithm 1, in float64 numpy: x_hat * r + d with r = clip(sigma_B / sigma,
  1/r_max, r_max), d = clip((mu_B - mu) / sigma, -d_max, d_max) against the running averages
  before the step; plain BatchNorm before `start`; halfway up the ramp, half the limits; r and
  d carry no gradient; the running averages update as BatchNorm's."""
  rng = np.random.default_rng(4)
  shape = (6, 3, 3, 4) if layout == 'image' else (6, 5, 4)
  x = rng.normal(2.0, 3.0, shape).astype(np.float32)
  mask = None if layout == 'image' else np.arange(5)[None] < np.array([5, 2, 4, 5, 3, 1])[:, None]
  renorm = norms.Renorm(r_max=3.0, d_max=5.0, start=10, ramp=20)
  module = norms.make_norm('batch_renorm', layout=layout, bn_momentum=0.5, norm_epsilon=EPS,
                           renorm_rmax=3.0, renorm_dmax=5.0, renorm_start=10, renorm_ramp=20)()
  plain = norms.make_norm('batch', layout=layout, bn_momentum=0.5, norm_epsilon=EPS)()
  assert 'steps' in module.init(jax.random.key(0), x, train=False)['batch_stats']['bn']
  ra_mean = rng.normal(size=4).astype(np.float32)
  ra_var = np.array([0.1, 1.0, 9.0, 400.0], np.float32)   # r and d clipped for some features
  params = {'bn': {'scale': rng.normal(size=4).astype(np.float32),
                   'bias': rng.normal(size=4).astype(np.float32)}}
  w = np.ones(shape[:-1], bool) if mask is None else mask
  xs = x.astype(np.float64)[w]                         # valid positions, (n, features)
  mu_b, var_b = xs.mean(0), xs.var(0)
  for steps, (r_max, d_max) in ((0, (1.0, 0.0)), (20, (2.0, 2.5)), (1000, (3.0, 5.0))):
    stats = {'bn': {'mean': jnp.asarray(ra_mean), 'var': jnp.asarray(ra_var),
                    'steps': jnp.int32(steps)}}
    out, updates = module.apply({'params': params, 'batch_stats': stats}, x, train=True,
                                mask=mask, mutable=['batch_stats'])
    sigma = np.sqrt(ra_var.astype(np.float64) + EPS)
    r = np.clip(np.sqrt(var_b + EPS) / sigma, 1 / r_max, r_max)
    d = np.clip((mu_b - ra_mean) / sigma, -d_max, d_max)
    want = ((x - mu_b) / np.sqrt(var_b + EPS) * r + d) * params['bn']['scale'] + \
        params['bn']['bias']
    np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=1e-4, atol=1e-4)
    assert int(updates['batch_stats']['bn']['steps']) == steps + 1
    np.testing.assert_allclose(updates['batch_stats']['bn']['mean'],
                               0.5 * ra_mean + 0.5 * mu_b, rtol=1e-5, atol=1e-5)
  # r and d are constants for the gradient: the gradient is BatchNorm's with the upstream
  # gradient scaled by r
  g = rng.normal(size=shape).astype(np.float32)
  stats = {'bn': {'mean': jnp.asarray(ra_mean), 'var': jnp.asarray(ra_var),
                  'steps': jnp.int32(1000)}}

  def loss(m, v, inputs, upstream):
    out, _ = m.apply(v, inputs, train=True, mask=mask, mutable=['batch_stats'])
    return (out * upstream).sum()
  grad = jax.grad(loss, argnums=2)(module, {'params': params, 'batch_stats': stats}, x, g)
  plain_vars = plain.init(jax.random.key(0), x, train=False)
  plain_vars = {'params': params, 'batch_stats': plain_vars['batch_stats']}
  sigma = np.sqrt(ra_var + EPS)
  r = np.clip(np.sqrt(var_b + EPS) / sigma, 1 / 3.0, 3.0).astype(np.float32)
  want = jax.grad(loss, argnums=2)(plain, plain_vars, x, g * r)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(want), rtol=1e-4, atol=1e-5)
  # eval mode: the running averages, as BatchNorm
  out = module.apply({'params': params, 'batch_stats': stats}, x, train=False)
  want = (x - ra_mean) / np.sqrt(ra_var + EPS) * params['bn']['scale'] + params['bn']['bias']
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-4)
