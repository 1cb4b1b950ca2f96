"""The speed suite's own arithmetic, checked against an independent count."""

import jax
import pytest

from benchmarks import run
from training import experiment
from training.step import compile_steps


@pytest.mark.parametrize('depth', [8, pytest.param(20, marks=pytest.mark.slow)])
def test_analytic_resnet_flops_agree_with_xla_cost_analysis(depth):
  """3 x forward conv+head FLOPs (run.resnet_analytic_flops) vs XLA's count of the compiled
  train step, which also counts norms, ReLUs and the optimizer: within 15 %."""
  batch, size = 8, 32   # the benchmark's image size (border taps of SAME padding are counted)
  config = run.resnet_config(depth, batch=batch)
  ds = run.synthetic_images(batch, size)
  exp = experiment.build_experiment(config, dataset=ds)
  state = experiment.create_train_state(exp, jax.random.key(0))
  b = ds.train.get(range(batch))
  cost = compile_steps(exp).train.lower(state, b).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  analytic = run.resnet_analytic_flops(depth, batch, size)
  assert abs(cost['flops'] / analytic - 1) < 0.15, (cost['flops'], analytic)
