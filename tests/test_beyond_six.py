"""The normalizers beyond the first six, each against an independent computation of its paper's
formula (numpy), and the property its paper states at initialization:

- DyT (Zhu et al. 2025): gamma * tanh(alpha * x) + beta;
- weight standardization (Qiao et al. 2019): the kernel used is standardized per output channel;
- WeightNorm (Salimans & Kingma 2016) and SpectralNorm (Miyato et al. 2018), flax's wrappers:
  the kernel used is g * v / ||v||, and kernel / sigma with sigma from one power-iteration step
  (which converges to the largest singular value over train steps; eval mode stores nothing);
- SkipInit / ReZero (De & Smith 2020; Bachlechner et al. 2020): at init a residual net's output
  does not depend on anything inside its residual branches (it is its skip paths, stem and head);
- adaptive gradient clipping (Brock et al. 2021): each unit's gradient norm at most
  clip x max(its weight norm, 1e-3).
"""

import re

import jax
import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax

import config_space as cs
import models
from models import norms, resnet
from training import optim

EPS = 1e-5


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


def test_weight_standardized_conv_uses_the_standardized_kernel():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  conv = resnet._conv(use_bias=False, weight_std=True)(5, (3, 3), strides=2)
  params = conv.init(jax.random.key(0), x)['params']
  w = 0.3 + 2 * rng.normal(size=(3, 3, 3, 5))   # a mean and a scale the standardization removes
  w64 = (w - w.mean(axis=(0, 1, 2))) / np.sqrt(w.var(axis=(0, 1, 2)) + resnet.STD_EPSILON)
  want = lax.conv_general_dilated(x.astype(np.float64), w64, (2, 2), ((1, 1), (1, 1)),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  out = conv.apply({'params': {**params, 'kernel': w.astype(np.float32)}}, x)
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-4, atol=1e-4)
  # the stored kernel's own scale and mean no longer matter
  out2 = conv.apply({'params': {'kernel': (5 * w - 1).astype(np.float32)}}, x)
  np.testing.assert_allclose(np.asarray(out2), np.asarray(out), rtol=1e-4, atol=1e-4)


class _Reparameterized(nn.Module):
  reparam: str
  train: bool

  @nn.compact
  def __call__(self, x):
    return resnet._conv(False, reparam=self.reparam, train=self.train)(5, (3, 3), strides=2,
                                                                         name='conv')(x)


def _conv64(x, w):
  return np.asarray(lax.conv_general_dilated(x.astype(np.float64), w.astype(np.float64), (2, 2),
                                             ((1, 1), (1, 1)),
                                             dimension_numbers=('NHWC', 'HWIO', 'NHWC')))


def test_weight_norm_conv_uses_g_times_the_unit_direction_and_starts_at_he_scale():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  module = _Reparameterized('weight_norm', train=True)
  variables = module.init(jax.random.key(0), x)
  (scope, g0), = [(k, v) for k, v in variables['params'].items() if k != 'conv']
  np.testing.assert_array_equal(g0['conv/kernel/scale'], np.full(5, resnet.WEIGHT_NORM_GAIN,
                                                                 np.float32))
  v = rng.normal(size=(3, 3, 3, 5))
  g = rng.uniform(0.5, 2, size=5)
  want = _conv64(x, g * v / np.sqrt((v ** 2).sum(axis=(0, 1, 2))))
  params = {'conv': {'kernel': v.astype(np.float32)},
            scope: {'conv/kernel/scale': g.astype(np.float32)}}
  out = module.apply({'params': params}, x)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-4)
  # the direction's own norm no longer matters
  params['conv']['kernel'] = (7 * v).astype(np.float32)
  np.testing.assert_allclose(np.asarray(module.apply({'params': params}, x)), want,
                             rtol=1e-4, atol=1e-4)


def test_spectral_norm_conv_divides_by_the_power_iteration_estimate_of_the_top_singular_value():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  train, evaluate = _Reparameterized('spectral_norm', True), _Reparameterized('spectral_norm', False)
  variables = train.init(jax.random.key(0), x)
  (scope, stats), = variables['batch_stats'].items()
  w = rng.normal(size=(3, 3, 3, 5))
  u = rng.normal(size=(1, 5))
  params = {'conv': {'kernel': w.astype(np.float32)}}
  stats = {'conv/kernel/u': u.astype(np.float32), 'conv/kernel/sigma': np.float32(1)}
  unit = lambda a: a / np.sqrt((a ** 2).sum())
  m = w.reshape(-1, 5)
  v1 = unit(u @ m.T)
  u1 = unit(v1 @ m)
  sigma = (v1 @ m @ u1.T)[0, 0]
  want = _conv64(x, w / sigma)
  # eval mode: one step from the stored vector, nothing stored
  out = evaluate.apply({'params': params, 'batch_stats': {scope: stats}}, x)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-4)
  # train mode: the same output, and the new vector and sigma are stored
  out, updates = train.apply({'params': params, 'batch_stats': {scope: stats}}, x,
                             mutable=['batch_stats'])
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(updates['batch_stats'][scope]['conv/kernel/u'], u1, rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(updates['batch_stats'][scope]['conv/kernel/sigma'], sigma, rtol=1e-5)
  # over train steps sigma converges to the largest singular value (Miyato et al.'s estimate)
  for _ in range(100):
    _, updates = train.apply({'params': params, **updates}, x, mutable=['batch_stats'])
  np.testing.assert_allclose(updates['batch_stats'][scope]['conv/kernel/sigma'],
                             np.linalg.svd(m, compute_uv=False)[0], rtol=1e-3)
  assert abs(sigma / np.linalg.svd(m, compute_uv=False)[0] - 1) > 1e-2   # one step is not there


# Where each family's residual branches live (parameter paths): a family added to the model
# registry without an entry here fails test_every_family_declares_its_branches.
BRANCHES = {
    'resnet': r'^stage\d+_block\d+/(?!proj_|skip_gain)',
    'resnet_imagenet': r'^stage\d+_block\d+/(?!proj_|skip_gain)',
    'transformer': r'^block\d+/(attention|mlp)/',
    'lstm': r'^lstm\d+/',
}


def test_every_family_declares_its_branches():
  assert set(BRANCHES) == set(models.MODELS)


def _residual_points():
  """Every covering point with SkipInit; the fast run takes the CIFAR ResNet's first (the test
  budget), `-m slow` every family."""
  points = [p for p in cs.variants(cs.covering(cs.space()[0])) if 'skipinit' in p.options]
  fast = next(p for p in points if p.model == 'resnet')
  return [pytest.param(p, id=p.id, marks=() if p == fast else pytest.mark.slow) for p in points]


@pytest.mark.parametrize('p', _residual_points())
def test_skipinit_net_at_init_ignores_everything_inside_its_branches(p):
  """Replacing every parameter inside the residual branches (with other random values) leaves
  the outputs unchanged, in train and eval mode; the same change moves a net without SkipInit.
  The gains themselves get a gradient (the branches can switch on)."""
  model = cs.build(p)
  x, mask, y = cs.batch(p)
  variables = model.init(jax.random.key(0), x, train=False, mask=mask)
  flat = {'/'.join(k.key for k in path): v
          for path, v in jax.tree_util.tree_leaves_with_path(variables['params'])}
  branch = [k for k in flat if re.search(BRANCHES[p.model], k)]
  gains = [k for k in flat if k.endswith('_gain')]
  assert branch and gains, sorted(flat)
  rng = np.random.default_rng(3)

  def perturbed(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, v: (v + rng.normal(size=v.shape).astype(v.dtype)
                         if '/'.join(k.key for k in path) in branch else v), params)

  def out(params, train, model=model, other=variables):
    return np.asarray(model.apply({**other, 'params': params}, x, train=train, mask=mask,
                                  mutable=['batch_stats'])[0])
  for train in (True, False):
    np.testing.assert_array_equal(out(perturbed(variables['params']), train),
                                  out(variables['params'], train))
  plain_model = cs.build(p.with_options())
  plain = plain_model.init(jax.random.key(0), x, train=False, mask=mask)
  assert not np.allclose(out(perturbed(plain['params']), True, plain_model, plain),
                         out(plain['params'], True, plain_model, plain))
  from training import tasks
  task = tasks.get_task(p.dataset.task)
  batch = {'inputs': x, 'targets': y, **({'mask': mask} if mask is not None else {})}

  def loss(params):
    logits, _ = model.apply({**variables, 'params': params}, x, train=True, mask=mask,
                            mutable=['batch_stats'])
    return task(logits, batch)[0]
  grads = jax.grad(loss)(variables['params'])
  flat_grads = {'/'.join(k.key for k in path): v
                for path, v in jax.tree_util.tree_leaves_with_path(grads)}
  assert max(abs(float(flat_grads[k])) for k in gains) > 0


def test_adaptive_gradient_clipping_clips_each_unit_to_its_ratio_of_the_weight_norm():
  rng = np.random.default_rng(2)
  params = {'dense': {'kernel': rng.normal(size=(4, 3)).astype(np.float32),
                      'bias': np.zeros(3, np.float32)},
            'conv': {'kernel': 0.01 * rng.normal(size=(3, 3, 2, 5)).astype(np.float32)}}
  grads = jax.tree.map(lambda v: (10 * rng.normal(size=v.shape)).astype(np.float32), params)
  cfg = ml_collections.ConfigDict(dict(name='sgd', learning_rate=1.0, momentum=0.0,
                                       nesterov=False, weight_decay=0.0, agc=0.05))
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


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
  """flax's normalize_qk (LayerNorm on each head's queries and keys): scaling the query and key
  projections by 10 leaves the output unchanged with QK-norm (up to LayerNorm's epsilon), and
  changes it without."""
  for qk_norm, same in ((True, True), (False, False)):
    p = cs.Point('transformer', 'lm', 'layer').with_options(*['qk_norm'] * qk_norm)
    model = cs.build(p)
    x, mask, _ = cs.batch(p)
    variables = model.init(jax.random.key(0), x, train=False, mask=mask)
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, v: v * 10 if any(getattr(k, 'key', '') in ('query', 'key')
                                      for k in path) else v, variables)
    a, b = (np.asarray(model.apply(v, x, train=False, mask=mask)) for v in (variables, scaled))
    assert np.allclose(a, b, rtol=1e-3, atol=1e-4) == same, (qk_norm, np.abs(a - b).max())


def test_options_that_do_not_apply_are_refused_with_the_reason():
  from errors import ConfigError
  p = cs.Point('resnet', 'image', 'batch', residual=False).with_options('skipinit')
  with pytest.raises(ConfigError, match='residual=False has none'):
    cs.build(p)
  with pytest.raises(ConfigError, match='ResNets only'):
    cs.build(cs.Point('transformer', 'lm', 'layer').with_options('weight_std'))
  with pytest.raises(ConfigError, match='the transformer only'):
    cs.build(cs.Point('lstm', 'lm', 'layer').with_options('qk_norm'))
  for option in models.KERNEL_OPTIONS:
    with pytest.raises(ConfigError, match='ResNets only'):
      cs.build(cs.Point('lstm', 'sequence', 'layer').with_options(option))
  with pytest.raises(ConfigError, match='choose one'):
    cs.build(cs.Point('resnet', 'image', 'batch').with_options(*models.KERNEL_OPTIONS[:2]))


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
                           renorm=renorm)()
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


def test_the_lstm_refuses_batch_renorm_it_does_not_implement_in_its_recurrence():
  from errors import ConfigError
  with pytest.raises(ConfigError, match='not implemented inside the LSTM'):
    cs.build(cs.Point('lstm', 'sequence', 'batch_renorm'))


def test_dyt_in_a_plain_net_that_would_ignore_its_input_is_refused_with_the_alpha_that_works():
  """Found by the invariants: a plain ResNet-18 with DyT (alpha 0.5, 17 norms in a row) changed
  its logits by 5e-10 when its input changed (logit scale 1e-3). Refused, naming the alpha that
  keeps the input visible; that alpha builds and its outputs depend on the input."""
  from errors import ConfigError
  p = cs.Point('resnet_imagenet', 'image32', 'dyt', residual=False)
  with pytest.raises(ConfigError, match=r'dyt_alpha >= 0\.67') as e:
    cs.build(p)
  assert 'dyt_alpha ** 17' in str(e.value)
  cfg = cs.model_config(p)
  cfg.dyt_alpha = 0.7
  model = models.build_model(cfg, p.dataset)
  x, _, _ = cs.batch(p)
  x2, _, _ = cs.batch(p, seed=1)
  variables = model.init(jax.random.key(0), x, train=False)
  a, b = (np.asarray(model.apply(variables, v, train=False)) for v in (x, x2))
  assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()
  assert cs.build(cs.dataclasses.replace(p, residual=True))   # with skips: no such limit


@pytest.mark.parametrize('model_name,depth,layers', [
    ('resnet', 20, 2), pytest.param('resnet_imagenet', 50, 3, marks=pytest.mark.slow)])
def test_fixup_initialization_follows_zhang_et_al(model_name, depth, layers):
  """Fixup (Zhang, Dauphin & Ma 2019): the last conv of every residual branch and the head start
  at 0 (the net outputs 0 and each block is its skip path), the branch's other convs have He
  init scaled by L^(-1/(2m-2)) (L blocks, m convs per branch), scalar biases and multipliers
  are there; then SGD at BatchNorm's learning rate (0.1) trains it without any norm."""
  p = cs.Point(model_name, 'image' if model_name == 'resnet' else 'image32', 'none')
  cfg = cs.model_config(p)
  cfg.depth, cfg.fixup = depth, True
  model = models.build_model(cfg, p.dataset)
  x, _, y = cs.batch(p, size=16)
  variables = model.init(jax.random.key(0), x, train=False)
  params = variables['params']
  blocks = [k for k in params if k.startswith('stage')]
  scale = len(blocks) ** (-1 / (2 * layers - 2))
  assert not np.any(np.asarray(params['head']['kernel']))
  np.testing.assert_array_equal(np.asarray(model.apply(variables, x, train=False)), 0.0)
  for name in blocks:
    block = params[name]
    convs = sorted(k for k in block if k.startswith('Conv_'))
    assert len(convs) == layers and 'fixup_scale' in block and 'bias_out' in block
    assert not np.any(np.asarray(block[convs[-1]]['kernel']))
    for conv in convs[:-1]:
      w = np.asarray(block[conv]['kernel'])
      fan_out = w.shape[0] * w.shape[1] * w.shape[3]
      if w.size >= 2000:   # enough values to estimate the std to a few percent
        np.testing.assert_allclose(w.std(), np.sqrt(2 / fan_out) * scale, rtol=0.1)
  from training import experiment, step as step_lib, tasks
  import optax
  state = experiment.TrainState.create(apply_fn=model.apply, params=params, batch_stats={},
                                       tx=optax.sgd(0.1, momentum=0.9))
  step = jax.jit(step_lib.train_step_fn(model, tasks.get_task('classification')))
  losses = []
  for _ in range(40):
    state, sums = step(state, {'inputs': x, 'targets': y})
    losses.append(float(sums['loss'] / sums['count']))
  # the zero-initialized head and last convs move first, then the loss falls steadily
  assert np.isfinite(losses).all() and min(losses) < 0.75 * losses[0], losses
  assert all(np.any(np.asarray(state.params[name][sorted(
      k for k in state.params[name] if k.startswith('Conv_'))[-1]]['kernel'])) for name in blocks)
  a, b = (np.asarray(model.apply({'params': state.params}, v, train=False))
          for v in (x, cs.batch(p, size=16, seed=1)[0]))
  assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()


def test_fixup_is_refused_where_it_does_not_apply():
  from errors import ConfigError
  for point, message in ((cs.Point('resnet', 'image', 'batch'), 'it needs model.norm=none'),
                         (cs.Point('resnet', 'image', 'none', residual=False),
                          'it needs model.norm=none and residual=True'),
                         (cs.Point('transformer', 'lm', 'none'), 'the ResNets only')):
    cfg = cs.model_config(point)
    cfg.fixup = True
    with pytest.raises(ConfigError, match=message):
      models.build_model(cfg, point.dataset)


@pytest.mark.parametrize('model_name,depth', [
    ('resnet', 56), pytest.param('resnet_imagenet', 50, marks=pytest.mark.slow)])
def test_nf_resnet_activations_follow_the_expected_variance_schedule(model_name, depth):
  """Brock, De & Smith 2021's signal-propagation property at init, on unit Gaussian inputs: the
  residual stream's variance after block i is beta_i^2 + alpha^2 (beta_0 = 1; reset to
  1 + alpha^2 after each transition block) within 25 %, on maps of 8x8 and up (on a 2x2 map most
  3x3 taps read zero padding and the variance falls below the schedule, which assumes every tap
  sees signal: ResNet-50's last stages at 32x32, ResNet-56 on 8x8 digits); scaled WS keeps a conv's output second moment equal to its
  input's."""
  alpha = 0.2
  p = cs.Point(model_name, 'image32', 'none')
  cfg = cs.model_config(p)
  cfg.depth, cfg.nf_alpha, cfg.width = depth, alpha, 16
  model = models.build_model(cfg, p.dataset)
  x = np.random.default_rng(0).normal(size=(32, *p.dataset.input_shape)).astype(np.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  _, inter = model.apply(variables, x, train=False, capture_intermediates=True,
                         mutable=['intermediates'])
  blocks = sorted((k for k in inter['intermediates'] if k.startswith('stage')),
                  key=lambda k: tuple(int(n) for n in re.findall(r'\d+', k)))
  expected, measured = [], []
  var = 1.0
  for name in blocks:
    out = np.asarray(inter['intermediates'][name]['__call__'][0])
    stage, index = (int(n) for n in re.findall(r'\d+', name))
    if index == 1 and (stage > 1 or out.shape[-1] != 16):
      var = 1.0
    var += alpha ** 2
    if out.shape[1] >= 8:   # maps of 8x8 and up (the 3x3 taps of smaller ones read padding)
      expected.append(var)
      measured.append(float((out.astype(np.float64) ** 2).mean()))
  assert len(measured) >= 3
  np.testing.assert_allclose(measured, expected, rtol=0.25)
  assert measured[-2] > measured[0] or model_name != 'resnet'   # the variance grows in a stage


def test_scaled_weight_standardization_keeps_the_second_moment():
  rng = np.random.default_rng(5)
  x = rng.normal(0.5, 2.0, size=(64, 8, 8, 16)).astype(np.float32)
  conv = resnet._conv(use_bias=False, weight_std='scaled')(32, (3, 3))
  variables = conv.init(jax.random.key(1), x)
  assert set(variables['params']) == {'kernel', 'gain'}
  w = np.asarray(variables['params']['kernel'], np.float64)
  w_used = (w - w.mean((0, 1, 2))) / np.sqrt(w.var((0, 1, 2)) * 3 * 3 * 16)
  want = lax.conv_general_dilated(x.astype(np.float64), w_used, (1, 1), ((1, 1), (1, 1)),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  out = np.asarray(conv.apply(variables, x))
  np.testing.assert_allclose(out, np.asarray(want), rtol=1e-4, atol=1e-4)
  interior = out[:, 1:-1, 1:-1]   # away from the zero padding
  np.testing.assert_allclose((interior ** 2).mean(), (x ** 2).mean(), rtol=0.1)


def test_deepnorm_up_weights_the_residual_and_scales_value_out_and_mlp_init_by_beta():
  """Wang et al. 2022 (decoder-only and encoder-only, N layers): alpha = (2N)^(1/4),
  beta = (8N)^(-1/4). Same seed: the value, output and MLP kernels are beta times those of plain
  post-LN, the query and key kernels equal; and each sub-layer computes N(alpha x + f(x)):
  checked by running a block's own sub-modules by hand."""
  from models import transformer
  p = cs.Point('transformer', 'lm', 'layer', norm_position='post')
  plain, deep = cs.build(p), cs.build(p.with_options('deepnorm'))
  x, mask, _ = cs.batch(p)
  vp = plain.init(jax.random.key(0), x, train=False, mask=mask)['params']
  vd = deep.init(jax.random.key(0), x, train=False, mask=mask)['params']
  alpha, beta = transformer.deepnorm_constants(2)
  assert (alpha, beta) == (4 ** 0.25, 16 ** -0.25)
  for layer in ('block1', 'block2'):
    for path, factor in ((('attention', 'value'), beta), (('attention', 'out'), beta),
                         (('mlp', 'Dense_0'), beta), (('mlp', 'Dense_1'), beta),
                         (('attention', 'query'), 1.0), (('attention', 'key'), 1.0)):
      a, b = (np.asarray(v[layer][path[0]][path[1]]['kernel']) for v in (vp, vd))
      np.testing.assert_allclose(b, factor * a, rtol=1e-6, atol=1e-7)
  # one block by hand: h1 = LN(alpha h + attn(h)), out = LN(alpha h1 + mlp(h1))
  block = transformer.Block(plain.num_heads, plain.mlp_dim, plain.norm, 'post', True,
                            deepnorm=(alpha, beta))
  h = np.random.default_rng(0).normal(size=(3, 5, plain.d_model)).astype(np.float32)
  params = {'params': vd['block1']}
  got = block.apply(params, h, None, None, train=False)
  attn = nn_apply(params, 'attention', h)
  ln = lambda v, name: norms.make_norm('layer', layout='causal')().apply(
      {'params': vd['block1'][name]}, v, train=False)
  h1 = ln(alpha * h + attn, 'norm_attention')
  mlp = transformer.MLP(plain.mlp_dim).apply({'params': vd['block1']['mlp']}, h1)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ln(alpha * h1 + mlp, 'norm_mlp')),
                             rtol=1e-5, atol=1e-5)


def nn_apply(params, name, h):
  import flax.linen as nn
  att = nn.MultiHeadDotProductAttention(num_heads=2)
  return att.apply({'params': params['params'][name]}, h, h)


def test_deepnorm_needs_post_ln_with_a_residual():
  from errors import ConfigError
  with pytest.raises(ConfigError, match='needs norm_position=post'):
    cs.build(cs.Point('transformer', 'lm', 'layer', norm_position='pre').with_options('deepnorm'))
