"""Sequence models: padding never changes outputs at real positions (for every norm, both
families, train and eval mode); the LN-LSTM step and the pre/post-LN blocks match hand
computations."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from configs import lstm_mnist1d, transformer_mnist1d
from data.base import Dataset
from errors import ConfigError
from models import lstm, norms, transformer
import config_space as cs

T, F, C = 12, 3, 5   # time steps, input features, classes


SEQUENCE_FAMILIES = [f for f, fam in models.FAMILIES.items()
                     if {'sequence', 'tokens'} & set(fam.data)]


def model_for(family, norm, *, task='classification', kind='sequence', uses_mask=True, **kw):
  cfg = cs.model_config(cs.Point(family, 'sequence', norm))
  cfg.update(dict(width=16, norm_groups=4, norm_uses_mask=uses_mask, bn_momentum=0.9, **kw))
  vocab = 11 if kind == 'tokens' else 0
  ds = Dataset(None, None, vocab or C, (T,) if kind == 'tokens' else (T, F), task=task,
               kind=kind, vocab_size=vocab)
  return models.build_model(cfg, ds)


def example_batch(kind='sequence', lengths=(12, 5)):
  rng = np.random.default_rng(0)
  b = len(lengths)
  mask = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
  if kind == 'tokens':
    x = rng.integers(1, 11, size=(b, T)).astype(np.int32)
    x = np.where(mask, x, 7)                         # padding: arbitrary tokens
  else:
    x = rng.normal(size=(b, T, F)).astype(np.float32)
    x = np.where(mask[..., None], x, 50.0)           # padding: large garbage
  return x, mask, np.asarray(lengths)


def init_and_train_a_bit(model, x, mask):
  """Init, then one train-mode pass so BatchNorm's running averages are not the init values."""
  variables = model.init(jax.random.key(0), x, train=False, mask=mask)
  if 'batch_stats' in variables:
    _, updates = model.apply(variables, x, train=True, mask=mask, mutable=['batch_stats'])
    variables = {**variables, **updates}
  return variables


_JITTED = {}


def run(model, variables, x, mask, train):
  """The model's outputs (one jitted apply per model, reused across shapes and modes)."""
  if id(model) not in _JITTED:
    _JITTED.clear()
    _JITTED[id(model)] = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  out, _ = _JITTED[id(model)](variables, x, train=train, mask=mask, mutable=('batch_stats',))
  return np.asarray(out)


def _accepted(family, task, kind):
  """The norms the builder accepts for this family and task (the registry minus refusals)."""
  out = []
  for n in norms.NORMS:
    try:
      model_for(family, n, task=task, kind=kind)
      out.append(n)
    except ConfigError:
      pass
  return out


CASES = [(family, n, task, kind) for family in SEQUENCE_FAMILIES
         for task, kind in (('classification', 'sequence'), ('language_model', 'tokens'))
         for n in _accepted(family, task, kind)]
FAST_CASES = cs.once_each(CASES, factors=(0, 1, 2))   # every family, norm and task once


@pytest.mark.parametrize('family,norm,task,kind', [
    pytest.param(*c, marks=() if c in FAST_CASES else pytest.mark.slow) for c in CASES])
def test_padding_never_changes_outputs_at_real_positions(family, norm, task, kind):
  model = model_for(family, norm, task=task, kind=kind)
  x, mask, lengths = example_batch(kind)
  variables = init_and_train_a_bit(model, x, mask)
  real = (lambda out, n: out[:n]) if task == 'language_model' else (lambda out, n: out)
  other_padding = (np.where(mask, x, 3) if kind == 'tokens'
                   else np.where(mask[..., None], x, -30.0).astype(np.float32))
  for train in (False, True):   # eval mode (running averages) and train mode (batch statistics)
    # A padded batch: other values in the padding change nothing at real positions.
    keep = (lambda out: out[mask]) if task == 'language_model' else (lambda out: out)
    np.testing.assert_allclose(keep(run(model, variables, other_padding, mask, train)),
                               keep(run(model, variables, x, mask, train)), rtol=2e-4, atol=2e-5)
    # Without batch statistics, a padded batch of many equals each example run alone.
    batch_out = (run(model, variables, x, mask, train)
                 if not norms.NORMS[norm].running_stats or not train else None)
    for i, n in enumerate(lengths):
      alone = run(model, variables, x[i:i + 1, :n], None, train)[0]   # unpadded, batch of one
      padded = run(model, variables, x[i:i + 1], mask[i:i + 1], train)[0]  # padded to T + mask
      np.testing.assert_allclose(real(padded, n), real(alone, n), rtol=2e-4, atol=2e-5)
      if batch_out is not None:
        np.testing.assert_allclose(real(batch_out[i], n), real(alone, n), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize('family', [pytest.param(f, marks=() if k == 0 else pytest.mark.slow)
                                    for k, f in enumerate(SEQUENCE_FAMILIES)])
def test_batch_norm_without_the_mask_is_changed_by_padding(family):
  """The seeds' point: BatchNorm whose statistics see the padding gives different outputs when
  only the padding changes; with the mask, nothing changes."""
  x, mask, _ = example_batch()
  other_padding = np.where(mask[..., None], x, -30.0).astype(np.float32)
  for uses_mask, should_match in ((True, True), (False, False)):
    model = model_for(family, 'batch', uses_mask=uses_mask)
    variables = init_and_train_a_bit(model, x, mask)
    a = run(model, variables, x, mask, train=True)
    b = run(model, variables, other_padding, mask, train=True)
    assert np.allclose(a, b, rtol=2e-4, atol=2e-5) == should_match


def test_ln_lstm_step_matches_ba_et_al_equations_in_numpy():
  hidden, b = 6, 3
  cell = lstm.LSTMCell(hidden, norms.make_norm('layer', layout='sequence'))
  rng = np.random.default_rng(1)
  c0, h0 = (rng.normal(size=(b, hidden)).astype(np.float32) for _ in range(2))
  xw = rng.normal(size=(b, 4 * hidden)).astype(np.float32)  # already N(W_x x) + b
  m = np.array([True, True, False])
  unused_stats = ((None, None), (None, None))  # running stats: only for recurrent BN
  variables = cell.init(jax.random.key(0), (c0, h0), xw, m, m, unused_stats)
  p = jax.tree.map(lambda v: rng.normal(size=v.shape).astype(np.float32), variables)['params']
  (c1, h1), (out, _) = cell.apply({'params': p}, (c0, h0), xw, m, m, unused_stats)

  def ln(v, scale, bias):
    mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + 1e-5) * scale + bias

  sig = lambda v: 1 / (1 + np.exp(-v))
  w_h = p['hidden_to_hidden']['kernel']
  g_hh = ln(h0 @ w_h, p['norm_hh']['ln']['scale'], p['norm_hh']['ln']['bias'])
  i, f, g, o = np.split(xw + g_hh, 4, axis=-1)
  c = sig(f) * c0 + sig(i) * np.tanh(g)
  h = sig(o) * np.tanh(ln(c, p['norm_c']['ln']['scale'], p['norm_c']['ln']['bias']))
  c, h = np.where(m[:, None], c, c0), np.where(m[:, None], h, h0)  # padded row: state kept
  np.testing.assert_allclose(c1, c, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(h1, h, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out, h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('position', ['pre', 'post'])
@pytest.mark.parametrize('residual', [True, False])
def test_transformer_block_pre_and_post_norm_against_hand_computation(position, residual):
  d = 8
  block = transformer.Block(num_heads=2, mlp_dim=16,
                            norm=norms.make_norm('layer', layout='sequence'),
                            norm_position=position, residual=residual)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, d)), jnp.float32)
  mask = jnp.ones((2, 5), bool)
  attn_mask = transformer.nn.make_attention_mask(mask, mask)
  variables = block.init(jax.random.key(0), x, attn_mask, None, train=False)
  p = jax.tree.map(lambda v: v + 0.1 * jnp.ones_like(v), variables)  # non-trivial LN affine
  out = block.apply(p, x, attn_mask, None, train=False)

  params = p['params']
  def ln(v, name):
    mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    return ((v - mu) / jnp.sqrt(var + 1e-5) * params[name]['ln']['scale']
            + params[name]['ln']['bias'])
  attention = lambda v: transformer.nn.MultiHeadDotProductAttention(num_heads=2).apply(
      {'params': params['attention']}, v, v, mask=attn_mask)
  mlp = lambda v: transformer.MLP(16).apply({'params': params['mlp']}, v)
  skip = (lambda v: v) if residual else (lambda v: 0.0)
  if position == 'pre':   # x + f(N(x))
    h = skip(x) + attention(ln(x, 'norm_attention'))
    expected = skip(h) + mlp(ln(h, 'norm_mlp'))
  else:                   # N(x + f(x))
    h = ln(skip(x) + attention(x), 'norm_attention')
    expected = ln(skip(h) + mlp(h), 'norm_mlp')
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_sequence_longer_than_max_length_is_a_clear_error():
  model = model_for('transformer', 'layer', max_length=8)
  x, mask, _ = example_batch()
  with pytest.raises(ConfigError, match='exceeds the model.s maximum length 8'):
    model.init(jax.random.key(0), x, train=False, mask=mask)


def test_norms_that_cannot_work_are_refused_at_config_time():
  with pytest.raises(ConfigError, match='instance does not fit an LSTM'):
    model_for('lstm', 'instance')
  with pytest.raises(ConfigError, match='see future tokens'):
    model_for('transformer', 'instance', task='language_model', kind='tokens')
  with pytest.raises(ConfigError, match='ignore its input'):
    model_for('transformer', 'instance')
  with pytest.raises(ConfigError, match='needs a sequence dataset'):
    models.build_model(lstm_mnist1d.get_config().model, Dataset(None, None, 10, (8, 8, 1)))
  with pytest.raises(ConfigError, match="valid: pre, post"):
    model_for('transformer', 'layer', norm_position='middle')


@pytest.mark.parametrize('activation', sorted(transformer.ACTIVATIONS))
def test_transformer_mlp_activation_against_its_formula(activation):
  from scipy.special import erf
  x = np.random.default_rng(4).normal(size=(2, 3, 4)).astype(np.float32) * 2
  mlp = transformer.MLP(6, activation)
  params = mlp.init(jax.random.key(0), x)['params']
  # flax names the output Dense first (it is constructed first): Dense_1 is the hidden layer
  h = x @ np.asarray(params['Dense_1']['kernel']) + np.asarray(params['Dense_1']['bias'])
  act = {'gelu': lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))),     # PyTorch's default
         'gelu_tanh': lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3))),
         'relu': lambda v: np.maximum(v, 0)}[activation]
  expected = act(h) @ np.asarray(params['Dense_0']['kernel']) + np.asarray(params['Dense_0']['bias'])
  np.testing.assert_allclose(mlp.apply({'params': params}, x), expected, rtol=1e-5, atol=1e-5)


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


def test_the_lstm_refuses_batch_renorm_it_does_not_implement_in_its_recurrence():
  from errors import ConfigError
  with pytest.raises(ConfigError, match='not implemented inside the LSTM'):
    cs.build(cs.Point('lstm', 'sequence', 'batch_renorm'))


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
