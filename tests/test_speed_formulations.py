"""Every faster formulation of the sequence models computes the same function as the
straightforward one: outputs, gradients and running-statistics updates, train and eval mode,
with padding, over every LSTM point of the configuration space (tests/config_space.py: each norm
the LSTM allows, residual or not, fixed or variable length, classifier on features or tokens and
language model). The fast run takes two (one norm with running statistics, recurrent BN, and
one without, with padding) and checks each formulation alone and both together; `-m slow` takes
all of them with both together (the test budget: a wrong formulation shows in the combination).

LSTM formulations (models/lstm.py): `fused` (the loop over time with a hand-written backward,
`recurrence`) and `fold_input` (the first layer's input projection re-associated with the
embedding, `project_source`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import config_space as cs
from training import tasks

ALLOWED = [p for p in cs.space()[0] if p.model == 'lstm']
COVERING = [p for p in cs.covering(cs.space()[0]) if p.model == 'lstm']
FAST = list({cs.norms.NORMS[p.norm].running_stats: p
             for p in sorted(COVERING, key=lambda p: not p.variable_length)[::-1]}.values())
PARAMS = ([pytest.param(p, id=p.id) for p in FAST] +
          [pytest.param(p, id=p.id, marks=pytest.mark.slow) for p in ALLOWED if p not in FAST])
PLAIN = dict(fused=False, fold_input=False)
FORMULATIONS = [dict(fused=True, fold_input=False), dict(fused=False, fold_input=True),
                dict(fused=True, fold_input=True)]


def test_the_lstm_points_cover_every_kind_of_input_and_the_norms_it_allows():
  assert {p.data for p in COVERING} == {p.data for p in ALLOWED} == {'sequence', 'tokens', 'lm'}
  assert {p.norm for p in COVERING} == {p.norm for p in ALLOWED}
  assert len(FAST) == 2 and any(p.variable_length for p in FAST)


def _loss_and_updates(model, variables, x, mask, y, task, train):
  batch = {'targets': y} if mask is None else {'targets': y, 'mask': mask}
  if 'mask' not in batch and task is tasks.language_model:
    batch['mask'] = np.ones(y.shape, bool)

  def loss(params):
    logits, updates = model.apply({**variables, 'params': params}, x, train=train, mask=mask,
                                  mutable=['batch_stats'])
    return task(logits, batch)[0], (logits, updates)
  (_, (logits, updates)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      variables['params'])
  return logits, grads, updates


@pytest.mark.parametrize('p', PARAMS)
def test_every_lstm_formulation_computes_the_same_function(p):
  model = cs.build(p)
  x, mask, y = cs.batch(p, size=8)
  variables = model.clone(**PLAIN).init(jax.random.key(0), x, train=False, mask=mask)
  task = tasks.get_task(p.dataset.task)
  for train in (True, False):
    want = _loss_and_updates(model.clone(**PLAIN), variables, x, mask, y, task, train)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want[1]))
    for formulation in FORMULATIONS if p in FAST else FORMULATIONS[-1:]:
      got = _loss_and_updates(model.clone(**formulation), variables, x, mask, y, task, train)
      where = (p.id, formulation, train)
      np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5, err_msg=str(where))
      assert jax.tree.structure(got[1]) == jax.tree.structure(want[1]), where
      for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=str(where))
      for a, b in zip(jax.tree.leaves(got[2]), jax.tree.leaves(want[2])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=str(where))
