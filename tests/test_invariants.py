"""Invariants over the whole configuration space the config checks allow (tests/config_space.py):

- a language model never sees the future: logits at positions <= t are bit-identical when any
  token after t changes, for every norm, scope and norm position, in train and eval mode;
- every allowed combination's outputs depend on its inputs, and a few steps of the train loop's
  own step function on a tiny batch lower the loss.

The fast run covers one point per (model, data, norm, scope); `-m slow` walks all of them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import config_space as cs
from training import loop, tasks

ALLOWED, REFUSED = cs.space()
FAST = cs.covering(ALLOWED)
LM_FAST = [p for p in ALLOWED if p.data == 'lm' and p.residual and not p.variable_length]


def _split(points, fast):
  return ([pytest.param(p, id=p.id) for p in points if p in fast] +
          [pytest.param(p, id=p.id, marks=pytest.mark.slow) for p in points if p not in fast])


def _init(model, p, x, mask):
  """Parameters, and BatchNorm running averages set to this batch's statistics by one
  train-mode pass (the configs use momentum 0), so eval mode normalizes as a trained net does."""
  variables = model.init(jax.random.key(0), x, train=False, mask=mask)
  if 'batch_stats' in variables:
    _, updates = model.apply(variables, x, train=True, mask=mask, mutable=['batch_stats'])
    variables = {**variables, **updates}
  return variables


def test_the_space_is_large_and_every_refusal_is_one_line():
  assert len(ALLOWED) > 100 and REFUSED
  for p, reason in REFUSED.items():
    assert '\n' not in reason and len(reason) > 20, (p, reason)
  # a CNN takes every norm in the registry
  from models import norms
  assert {p.norm for p in ALLOWED if p.model == 'resnet' and p.data == 'image'} == set(norms.NORMS)


@pytest.mark.parametrize('p', _split([p for p in ALLOWED if p.data == 'lm'], LM_FAST))
def test_language_model_never_sees_the_future(p):
  model = cs.build(p)
  x, mask, _ = cs.batch(p, size=8)
  variables = _init(model, p, x, mask)
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  rng = np.random.default_rng(1)
  for train in (True, False):
    logits = lambda inputs: np.asarray(apply(variables, inputs, train=train, mask=mask,
                                             mutable=('batch_stats',))[0])
    base = logits(x)
    for t in (0, cs.T // 2, cs.T - 2):
      edited = x.copy()
      edited[:, t + 1:] = rng.integers(1, cs.VOCAB, size=edited[:, t + 1:].shape)
      edited = np.where(mask, edited, 0) if mask is not None else edited
      out = logits(edited)
      np.testing.assert_array_equal(out[:, :t + 1], base[:, :t + 1],
                                    err_msg=f'{p.id} train={train}: position <= {t} changed')
      # the edit is visible where it may be: the test would notice a model that ignores inputs
      assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 0


@pytest.mark.parametrize('p', _split(ALLOWED, FAST))
def test_outputs_depend_on_inputs_and_a_few_steps_lower_the_loss(p):
  model = cs.build(p)
  x, mask, y = cs.batch(p, seed=0)
  x2, _, _ = cs.batch(p, seed=1)     # other inputs, same lengths
  variables = _init(model, p, x, mask)
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  for train in (True, False):
    a = np.asarray(apply(variables, x, train=train, mask=mask, mutable=('batch_stats',))[0])
    b = np.asarray(apply(variables, x2, train=train, mask=mask, mutable=('batch_stats',))[0])
    per_example = np.abs(a - b).reshape(len(a), -1).max(1)
    scale = np.abs(a).max() + 1e-3
    assert per_example.min() > 1e-3 * scale, (
        f'{p.id} train={train}: an example\'s outputs do not depend on its input '
        f'(change {per_example.min():.2e}, logit scale {scale:.2e})')

  task = tasks.get_task(p.dataset.task)
  batch = {'inputs': x, 'targets': y}
  if mask is not None:
    batch['mask'] = mask
  state = loop.TrainState.create(apply_fn=model.apply, params=variables['params'],
                                 batch_stats=variables.get('batch_stats', {}),
                                 tx=optax.adam(1e-2))
  step = jax.jit(loop.train_step_fn(model, task))
  losses = []
  for _ in range(25):
    state, sums = step(state, batch)
    losses.append(float(sums['loss'] / sums['count']))
  assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0], (p.id, losses)
