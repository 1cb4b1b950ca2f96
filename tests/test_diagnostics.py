"""Per-layer diagnostics equal direct computations, and cost nothing when off."""

import jax
import numpy as np
import pytest
import optax

from conftest import tiny_config
from data import pipeline
from training import diagnostics, experiment, loop


def setup(**overrides):
  exp = experiment.build_experiment(tiny_config(**overrides))
  state = experiment.create_train_state(exp, jax.random.key(0))
  batch = pipeline.TrainBatches(exp.dataset.train, 32, seed=0)(0)
  return exp, state, batch


def test_grad_norms_equal_norms_of_jax_grad_of_the_same_loss():
  exp, state, batch = setup(**{'model.residual': False})
  stats = jax.device_get(jax.jit(diagnostics.diagnose_fn(exp.model, exp.task, exp.tx))(state, batch))

  def loss(params):
    logits, _ = exp.model.apply({'params': params, 'batch_stats': state.batch_stats},
                                batch['inputs'], train=True, mutable=['batch_stats'])
    return exp.task(logits, batch)[0]

  grads = jax.grad(loss)(state.params)
  assert set(stats['grad_norm']) == set(grads)
  for layer, g in grads.items():
    direct = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(g)))
    np.testing.assert_allclose(stats['grad_norm'][layer], direct, rtol=1e-5)
    p = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(state.params[layer])))
    np.testing.assert_allclose(stats['param_norm'][layer], p, rtol=1e-5)
  # The update-to-weight ratio uses the optimizer's own update (SGD at step 0: lr * (g + wd w)).
  updates, _ = exp.tx.update(grads, state.opt_state, state.params)
  head = optax.global_norm(updates['head']) / optax.global_norm(state.params['head'])
  np.testing.assert_allclose(stats['update_ratio']['head'], head, rtol=1e-5)


def test_activation_stats_are_those_of_each_layer_output():
  exp, state, batch = setup()
  stats = jax.device_get(jax.jit(diagnostics.diagnose_fn(exp.model, exp.task, exp.tx))(state, batch))
  _, inter = exp.model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                             batch['inputs'], train=True, mutable=['batch_stats', 'intermediates'],
                             capture_intermediates=True)
  out = np.asarray(inter['intermediates']['stage1_block1']['__call__'][0])
  np.testing.assert_allclose(stats['act_rms']['stage1_block1'], np.sqrt(np.mean(out ** 2)), rtol=1e-5)
  np.testing.assert_allclose(stats['act_std']['stage1_block1'], out.std(), rtol=1e-4)
  assert set(stats['act_rms']) == set(state.params)  # every layer


@pytest.mark.slow   # CI runs it
def test_the_loops_train_step_is_the_same_program_with_diagnostics_on_or_off(tmp_path,
                                                                           monkeypatch):
  """Diagnostics cost nothing when off and change nothing when on: the train step the loop
  compiles (caught as the loop asks for it) lowers to the same HLO either way."""
  compiled = []

  def spy(exp, population=1):
    compiled.append((exp, real(exp, population)))
    return compiled[-1][1]

  real = loop.compile_steps
  monkeypatch.setattr(loop, 'compile_steps', spy)
  texts = []
  for every in (0, 2):
    loop.train_and_evaluate(tiny_config(diagnostics_every_steps=every, num_train_steps=4),
                            str(tmp_path / str(every)))
    exp, steps = compiled[-1]
    state = experiment.create_train_state(exp, jax.random.key(0))
    batch = pipeline.TrainBatches(exp.dataset.train, 32, seed=0)(0)
    texts.append(steps.train.lower(state, batch).as_text())
  assert len(compiled) == 2 and texts[0] == texts[1]


@pytest.mark.slow   # CI runs it (30 s)
def test_plain_deep_net_without_norm_shows_gradients_shrinking_toward_the_input(tmp_path):
  """What the heat map is for: plain, no norm -> the stem gets a far smaller gradient than the
  last block; residual + BatchNorm -> no such collapse."""
  from tensorboard.backend.event_processing import event_accumulator

  ratios = {}
  for name, overrides in {'plain_none': {'model.residual': False, 'model.norm': 'none'},
                          'residual_bn': {}}.items():
    workdir = str(tmp_path / name)
    loop.train_and_evaluate(tiny_config(**{'model.depth': 20, 'num_train_steps': 10,
                                           'diagnostics_every_steps': 5, **overrides}), workdir)
    acc = event_accumulator.EventAccumulator(workdir)
    acc.Reload()
    first = acc.Scalars('grad_norm/stem_conv')[0].value
    last = acc.Scalars('grad_norm/stage3_block3')[0].value
    ratios[name] = first / last
    assert 'grad_norm/heatmap' in acc.Tags()['images']
  assert ratios['plain_none'] < 0.2 and ratios['residual_bn'] > 5 * ratios['plain_none'], ratios


def test_the_heat_map_has_one_colour_scale_for_every_run():
  """Two runs whose gradients differ by 10x give different images (a per-image rescaling would
  make them identical), the image is large enough to read, and a value beyond the scale takes
  the scale's end colour."""
  rng = np.random.default_rng(0)
  layers = [f'layer{i}' for i in range(12)]
  history = [10.0 ** rng.uniform(-5, 1, size=12) for _ in range(6)]
  steps = [10 * i for i in range(6)]
  a = diagnostics.heatmap(steps, history, layers)
  b = diagnostics.heatmap(steps, [10 * h for h in history], layers)
  assert a.shape == b.shape and a.shape[0] >= 150 and a.shape[1] >= 400 and a.shape[2] == 3
  assert np.abs(a.astype(int) - b.astype(int)).sum() > 0
  lo, hi = diagnostics.HEATMAP_RANGE
  c = diagnostics.heatmap(steps, [np.full(12, 10.0 ** (hi + 3))] * 6, layers)
  d = diagnostics.heatmap(steps, [np.full(12, 10.0 ** hi)] * 6, layers)
  np.testing.assert_array_equal(c, d)
