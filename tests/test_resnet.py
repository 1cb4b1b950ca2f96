"""The ResNet's skip switch against a hand-built block, and its size against He et al."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from configs import default
from data.base import Dataset
from errors import ConfigError
from models import norms, resnet
import flax.linen as nn
from jax import lax
import config_space as cs


def info(num_classes):
  return Dataset(None, None, num_classes, (32, 32, 3))


def count_params(model, shape):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables['params']))


def model_config(**kw):
  cfg = default.get_config().model
  cfg.unlock()
  cfg.update(kw)
  return cfg


@pytest.mark.parametrize('depth,paper_params', [(20, 0.27e6), (56, 0.85e6), (110, 1.7e6)])
def test_cifar_resnet_parameter_count_matches_he_et_al(depth, paper_params):
  model = models.build_model(model_config(depth=depth), info(10))
  n = count_params(model, (1, 32, 32, 3))
  assert abs(n - paper_params) / paper_params < 0.02, n


@pytest.mark.parametrize('depth,torchvision_params', [(18, 11_689_512), (50, 25_557_032)])
def test_imagenet_resnet_parameter_count_matches_torchvision(depth, torchvision_params):
  model = models.build_model(model_config(name='resnet_imagenet', depth=depth, width=64), info(1000))
  assert count_params(model, (1, 224, 224, 3)) == torchvision_params


def test_plain_and_residual_nets_have_the_same_parameters_with_option_a():
  res = count_params(models.build_model(model_config(residual=True), info(10)), (1, 8, 8, 1))
  plain = count_params(models.build_model(model_config(residual=False), info(10)), (1, 8, 8, 1))
  assert res == plain


def conv(x, kernel, stride):
  """An independent convolution as He et al. pad it: (k - 1) // 2 on each side (NHWC/HWIO)."""
  pad = [((k - 1) // 2,) * 2 for k in kernel.shape[:2]]
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pad,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('strides,in_ch,out_ch', [(1, 8, 8), (2, 8, 16)])
def test_basic_block_skip_switch_against_hand_built_block(strides, in_ch, out_ch):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, in_ch)), jnp.float32)
  kwargs = dict(filters=out_ch, strides=strides, norm=norms.make_norm('none'),
                conv=resnet._conv(use_bias=False), shortcut='A')
  res_block = resnet.BasicBlock(residual=True, **kwargs)
  plain_block = resnet.BasicBlock(residual=False, **kwargs)
  params = res_block.init(jax.random.key(1), x, train=False)
  k1, k2 = params['params']['Conv_0']['kernel'], params['params']['Conv_1']['kernel']
  path = conv(jax.nn.relu(conv(x, k1, strides)), k2, 1)       # conv-relu-conv, no norm
  skip = x[:, ::strides, ::strides, :]
  pad = out_ch - in_ch
  skip = jnp.pad(skip, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))
  np.testing.assert_allclose(res_block.apply(params, x, train=False),
                             jax.nn.relu(path + skip), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(plain_block.apply(params, x, train=False),
                             jax.nn.relu(path), rtol=1e-5, atol=1e-5)


def test_norm_sits_after_each_conv_in_the_block():
  """With LayerNorm, the block equals conv -> LN -> relu -> conv -> LN -> (+x) -> relu."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 8)), jnp.float32)
  block = resnet.BasicBlock(filters=8, strides=1, residual=True, norm=norms.make_norm('layer'),
                            conv=resnet._conv(use_bias=False), shortcut='A')
  params = block.init(jax.random.key(1), x, train=False)
  p = params['params']

  def ln(y):
    m = y.mean((1, 2, 3), keepdims=True)
    return (y - m) / jnp.sqrt(((y - m) ** 2).mean((1, 2, 3), keepdims=True) + 1e-5)

  h = jax.nn.relu(ln(conv(x, p['Conv_0']['kernel'], 1)))
  expected = jax.nn.relu(ln(conv(h, p['Conv_1']['kernel'], 1)) + x)
  np.testing.assert_allclose(block.apply(params, x, train=False), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('norm', list(norms.NORMS))
def test_every_norm_builds_and_runs_in_the_resnet(norm):
  model = models.build_model(model_config(depth=8, norm=norm, width=8), info(10))
  x = jnp.ones((2, 8, 8, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  logits, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
  assert ('batch_stats' in variables) == norms.NORMS[norm].running_stats


@pytest.mark.parametrize('depth', [21, 4, 18])
def test_bad_cifar_depth_is_refused(depth):
  with pytest.raises(ConfigError, match='6n\\+2'):
    models.build_model(model_config(depth=depth), info(10))


@pytest.mark.slow   # a speed formulation (70 s); CI runs it
@pytest.mark.parametrize('model_fn', [
    lambda fb: resnet.CifarResNet(depth=14, fusion_barriers=fb),
    lambda fb: resnet.ImageNetResNet(stage_sizes=(1, 1), width=8, fusion_barriers=fb)],
    ids=['cifar14', 'imagenet_tiny'])
def test_fusion_barriers_change_neither_outputs_nor_gradients(model_fn):
  """`materialize` after each block is the faster path on XLA:CPU; it must compute the same
  function: outputs, BN statistics and gradients equal the model without it (and under vmap)."""
  x = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
  fast, plain = model_fn(True), model_fn(False)
  variables = plain.init(jax.random.key(0), x, train=False)

  def loss(model, params):
    logits, updates = model.apply({**variables, 'params': params}, x, train=True,
                                  mutable=['batch_stats'])
    return jnp.sum(logits ** 2), (logits, updates)

  (l1, (o1, u1)), g1 = jax.jit(jax.value_and_grad(lambda p: loss(fast, p), has_aux=True))(
      variables['params'])
  (l2, (o2, u2)), g2 = jax.jit(jax.value_and_grad(lambda p: loss(plain, p), has_aux=True))(
      variables['params'])
  # float32 reordering: XLA fuses (and so sums) BN's statistics in another order across a
  # barrier; on ImageNet's 7x7 stem the logits (scale ~1) differ by up to 2e-6 (measured)
  scale = float(np.max(np.abs(o2)))
  np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-5 * scale)
  for a, b in zip(jax.tree.leaves((u1, g1)), jax.tree.leaves((u2, g2))):   # float32 reordering
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * float(np.max(np.abs(b))))
  # the barrier is really in the compiled program (as a conditional) when on, and absent when off
  hlo = lambda m: jax.jit(lambda p: loss(m, p)[0]).lower(variables['params']).compile().as_text()
  assert ' conditional(' in hlo(fast) and ' conditional(' not in hlo(plain)
  stacked = jax.tree.map(lambda a: jnp.stack([a, a]), variables['params'])
  v1 = jax.vmap(lambda p: loss(fast, p)[1][0])(stacked)
  np.testing.assert_allclose(v1[0], o2, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.slow   # a speed formulation (55 s); CI runs it
def test_chunked_weight_gradients_in_the_resnet_match_and_work_under_vmap():
  x = jax.random.normal(jax.random.key(1), (24, 8, 8, 3))
  # chunks of 16 KiB: 4 images in the first stage, 8 in the second, 16 in the third
  fast = resnet.CifarResNet(depth=8, wgrad_chunk_bytes=16 * 1024)
  plain = resnet.CifarResNet(depth=8)
  variables = plain.init(jax.random.key(0), x, train=False)

  def grads(model, params):
    def loss(p):
      logits, _ = model.apply({**variables, 'params': p}, x, train=True, mutable=['batch_stats'])
      return jnp.sum(logits ** 2)
    return jax.grad(loss)(params)

  g_fast = jax.jit(lambda p: grads(fast, p))(variables['params'])
  g_plain = jax.jit(lambda p: grads(plain, p))(variables['params'])
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * float(np.max(np.abs(b))))
  # the chunks are really there: more convolutions in the compiled gradient
  count = lambda m: jax.jit(lambda p: grads(m, p)).lower(
      variables['params']).as_text().count('stablehlo.convolution')
  assert count(fast) > count(plain)
  stacked = jax.tree.map(lambda a: jnp.stack([a, a]), variables['params'])
  g_vmap = jax.jit(jax.vmap(lambda p: grads(fast, p)))(stacked)
  for a, b in zip(jax.tree.leaves(g_vmap), jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(a[1], b, rtol=1e-3, atol=1e-5 * float(np.max(np.abs(b))))


@pytest.mark.parametrize('kernel', [3, 7, 1])
def test_strided_conv_and_option_a_shortcut_sample_the_same_pixel(kernel):
  """A delta kernel (1 at the centre) turns a stride-2 conv into a subsampler: it must pick
  input (2i, 2j), the pixel the option-A shortcut keeps (flax 'SAME' picked (2i+1, 2j+1))."""
  x = jnp.arange(2 * 8 * 8, dtype=jnp.float32).reshape(2, 8, 8, 1)
  layer = resnet._conv(use_bias=False)(1, (kernel, kernel), strides=2)
  delta = jnp.zeros((kernel, kernel, 1, 1)).at[kernel // 2, kernel // 2].set(1.0)
  out = layer.apply({'params': {'kernel': delta}}, x)
  np.testing.assert_array_equal(out, resnet._shortcut_a(x, 1, 2))
  np.testing.assert_array_equal(out, np.asarray(x)[:, ::2, ::2])


def test_imagenet_max_pool_is_torchvisions():
  """3x3, stride 2, padding 1 (padding never wins the max): window i covers inputs 2i-1..2i+1."""
  x = np.random.default_rng(0).normal(size=(1, 8, 8, 2)).astype(np.float32)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  expected = np.stack([np.stack([padded[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max((1, 2))
                                 for j in range(4)], 1) for i in range(4)], 1)
  np.testing.assert_array_equal(resnet.stem_max_pool(jnp.asarray(x)), expected)


def _paper_resnet20(params, stats, x, eps=1e-5):
  """He et al.'s CIFAR ResNet-20, written independently with lax convolutions padded 1 on each
  side, numpy-style batch norm in train mode (batch statistics) and option-A shortcuts."""
  def bn(y, p):
    mean = y.mean((0, 1, 2))
    var = ((y - mean) ** 2).mean((0, 1, 2))
    return (y - mean) / jnp.sqrt(var + eps) * p['bn']['scale'] + p['bn']['bias']

  relu = jax.nn.relu
  h = relu(bn(conv(x, params['stem_conv']['kernel'], 1), params['stem_norm']))
  for stage in range(3):
    for i in range(3):
      p = params[f'stage{stage + 1}_block{i + 1}']
      stride = 2 if stage > 0 and i == 0 else 1
      y = relu(bn(conv(h, p['Conv_0']['kernel'], stride), p['BatchNorm_0']))
      y = bn(conv(y, p['Conv_1']['kernel'], 1), p['BatchNorm_1'])
      skip = h[:, ::stride, ::stride, :]
      extra = y.shape[-1] - skip.shape[-1]
      skip = jnp.pad(skip, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
      h = relu(y + skip)
  return h.mean((1, 2)) @ params['head']['kernel'] + params['head']['bias']


def test_resnet20_forward_equals_an_independent_paper_network():
  model = models.build_model(model_config(depth=20, conv_wgrad='xla'), info(10))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  rng = np.random.default_rng(1)   # non-trivial BN affine parameters
  params = jax.tree_util.tree_map_with_path(
      lambda path, v: v if path[-1].key == 'kernel' else
      jnp.asarray(rng.normal(0.5, 0.3, v.shape), jnp.float32), variables['params'])
  ours, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
  theirs = _paper_resnet20(params, None, x)
  scale = float(jnp.abs(theirs).max())
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)


EPS = 1e-5


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
                         (cs.Point('transformer', 'lm', 'none'), 'not implemented by transformer')):
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
