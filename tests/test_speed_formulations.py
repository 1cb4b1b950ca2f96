"""Every faster formulation of the sequence models computes the same function as the
straightforward one: outputs, gradients and running-statistics updates, train and eval mode,
with padding, over every LSTM point of the configuration space (tests/config_space.py: each norm
the LSTM allows, residual or not, fixed or variable length, classifier on features or tokens and
language model). The fast run takes one (the first with recurrent BatchNorm, whose cell body is
the most involved, with padding where the covering has it) and checks both formulations
together; `-m slow` takes a pairwise covering of the LSTM points (every pair of data,
norm, BatchNorm scope, residual and length values once), with both together (the test budget:
a wrong formulation shows in the combination).

LSTM formulations (models/backend.py): `fused` (the loop over time with a hand-written
backward, `recurrence`) and `fold_input` (the first layer's input projection re-associated with
the embedding, `project_source`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import config_space as cs
from training import tasks

ALLOWED = [p for p in cs.space()[0] if p.model == 'lstm']
COVERING = [p for p in cs.covering(cs.space()[0]) if p.model == 'lstm']
FAST = sorted((p for p in COVERING if cs.norms.NORMS[p.norm].running_stats),
              key=lambda p: not p.variable_length)[:1]
SLOW = cs.pairwise(ALLOWED, FAST)[len(FAST):]   # every pair of (data, norm, scope, residual,
#                                                length) values once
PARAMS = ([pytest.param(p, id=p.id) for p in FAST] +
          [pytest.param(p, id=p.id, marks=pytest.mark.slow) for p in SLOW])
PLAIN = dict(fused=False, fold_input=False)
FORMULATIONS = [dict(fused=True, fold_input=False), dict(fused=False, fold_input=True),
                dict(fused=True, fold_input=True)]


def test_the_lstm_points_cover_every_kind_of_input_and_the_norms_it_allows():
  assert {p.data for p in COVERING} == {p.data for p in ALLOWED} == {'sequence', 'tokens', 'lm'}
  assert {p.norm for p in COVERING} == {p.norm for p in ALLOWED}
  assert len(FAST) == 1


def _loss_and_updates(model, x, mask, y, task, train):
  """One compiled function of the variables: outputs, gradients and statistics updates."""
  batch = {'targets': y} if mask is None else {'targets': y, 'mask': mask}
  if 'mask' not in batch and task is tasks.language_model:
    batch['mask'] = np.ones(y.shape, bool)

  @jax.jit
  def run(variables):
    def loss(params):
      logits, updates = model.apply({**variables, 'params': params}, x, train=train, mask=mask,
                                    mutable=['batch_stats'])
      return task(logits, batch)[0], (logits, updates)
    (_, (logits, updates)), grads = jax.value_and_grad(loss, has_aux=True)(variables['params'])
    return logits, grads, updates
  return run


def _worst(got, want) -> float:
  """The largest difference of any leaf, relative to that leaf's largest value."""
  return max([float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
              for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want))] or [0.0])


def _nudged(params, seed=0):
  """Every parameter moved by one float32 rounding (relative 6e-8, random sign)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda a: (a * (1 + 6e-8 * rng.choice([-1, 1], size=a.shape))).astype(a.dtype), params)


@pytest.mark.parametrize('p', PARAMS)
def test_every_lstm_formulation_computes_the_same_function(p):
  """Outputs, gradients and statistics updates agree to float rounding. Some points are
  ill-conditioned in float32 (ghost BatchNorm over the few real tokens of a padded group, an
  RMS-normalized LM): there one float32 rounding of the parameters already moves the
  straightforward path's gradients by up to ~1e-3 of their size. So each comparison is allowed
  10x what that rounding does to the straightforward path (and at least 1e-4); a wrong
  formulation is off by O(1)."""
  model = cs.build(p)
  x, mask, y = cs.batch(p, size=8)
  variables = model.clone(**PLAIN).init(jax.random.key(0), x, train=False, mask=mask)
  task = tasks.get_task(p.dataset.task)
  for train in (True, False):
    plain = _loss_and_updates(model.clone(**PLAIN), x, mask, y, task, train)
    want = plain(variables)
    nudged = plain({**variables, 'params': _nudged(variables['params'])})   # compiled once
    allowed = [max(1e-4, 10 * _worst(n, w)) for n, w in zip(nudged, want)]
    for formulation in FORMULATIONS[-1:]:   # both together: a wrong one shows in the pair
      got = _loss_and_updates(model.clone(**formulation), x, mask, y, task, train)(variables)
      assert jax.tree.structure(got) == jax.tree.structure(want)
      for what, g, w, limit in zip(('outputs', 'gradients', 'statistics'), got, want, allowed):
        assert _worst(g, w) <= limit, (p.id, formulation, train, what, _worst(g, w), limit)


@pytest.mark.parametrize('p', PARAMS[:1])
def test_the_formulations_in_bfloat16_are_as_close_to_float32_as_the_straightforward_one(p):
  """compute_dtype=bfloat16: the hand-written backward and the folded projection round their
  matmuls as `nn.Dense(dtype=bfloat16)` does, so their outputs, gradients and statistics are no
  farther from the float32 function than the straightforward bfloat16 path's (within 3x: the
  summation orders differ), and they do compute in bfloat16 (they differ from float32)."""
  model = cs.build(p)
  x, mask, y = cs.batch(p, size=8)
  variables = model.clone(**PLAIN).init(jax.random.key(0), x, train=False, mask=mask)
  task = tasks.get_task(p.dataset.task)
  want = _loss_and_updates(model.clone(**PLAIN), x, mask, y, task, True)(variables)
  bf16 = model.clone(dtype=jnp.bfloat16)
  plain = _loss_and_updates(bf16.clone(**PLAIN), x, mask, y, task, True)(variables)
  fast = _loss_and_updates(bf16.clone(**FORMULATIONS[-1]), x, mask, y, task, True)(variables)
  for what, f, s, w in zip(('outputs', 'gradients', 'statistics'), fast, plain, want):
    assert 0 < _worst(f, w) <= 3 * max(_worst(s, w), 1e-3), (p.id, what, _worst(f, w), _worst(s, w))
