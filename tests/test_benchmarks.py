"""The speed suite's own arithmetic, checked against an independent count."""

import os

import jax
import numpy as np
import pytest

from benchmarks import run
from training import experiment
from training.step import compile_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


@pytest.mark.parametrize('length', [1, 8])
def test_analytic_lstm_flops_agree_with_xla_where_xla_counts_every_step(length):
  """The LSTM's analytic count (run.lstm_analytic_flops) against XLA's cost analysis of the
  straightforward (nn.scan) train step. XLA counts a loop's body once: the input projection is
  hoisted out of the loop (counted for every step), the hidden-to-hidden matmul inside it is
  counted for one step. So XLA's count equals the analytic one with W_h counted once, within
  25 % (the gates' elementwise work is XLA's surplus), and at 8 steps it is well under the
  analytic count: why the suite's LSTM rows use the analytic count."""
  from configs import lstm_mnist1d
  config = lstm_mnist1d.get_config('none')
  config.model.recurrence, config.model.fold_input = 'scan', 'off'
  config.data.batch_size = batch = 8
  exp = experiment.build_experiment(config)
  state = experiment.create_train_state(exp, jax.random.key(0))
  b = exp.dataset.train.get(range(batch))
  b = {k: v[:, :length] if v.ndim > 1 else v for k, v in b.items()}
  cost = compile_steps(exp).train.lower(state, b).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  h = config.model.width
  analytic = run.lstm_analytic_flops(batch, length, 1, h, 10)
  w_h_once = analytic - 2 * 3 * batch * (length - 1) * h * 4 * h
  assert abs(cost['flops'] / w_h_once - 1) < 0.25, (cost['flops'], w_h_once)
  if length > 1:
    assert cost['flops'] < 0.7 * analytic, (cost['flops'], analytic)


def test_peaks_match_the_most_specific_device_kind_and_order_by_precision():
  """Every device kind in the table is found by its own name inside a longer device_kind
  string (an H100 PCIe is not read as an SXM H100), bfloat16 >= float32 at `default` >= at
  `highest` for each, a TPU's `high` is three bfloat16 passes, a CPU takes the suite's own
  estimate, and an unknown kind has no peak (no MFU is made up)."""
  from benchmarks import accelerator as acc
  for kind in acc.PEAK_TFLOPS:
    got = [acc.peak_tflops(f'vendor {kind} rev', d, p)
           for d, p in (('bfloat16', 'default'), ('float32', 'default'), ('float32', 'highest'))]
    assert got[0] >= got[1] >= got[2] > 0 and tuple(got) == acc.PEAK_TFLOPS[kind], kind
    if kind.startswith('TPU'):
      assert acc.peak_tflops(kind, 'float32', 'high') == pytest.approx(got[0] / 3)
  assert acc.peak_tflops('NVIDIA H100 PCIe', 'bfloat16') < acc.peak_tflops('NVIDIA H100 80GB HBM3',
                                                                          'bfloat16')
  assert acc.peak_tflops('cpu', 'float32', cpu_gflops=150.0) == pytest.approx(0.15)
  assert np.isnan(acc.peak_tflops('Some Future Chip', 'bfloat16'))


@pytest.mark.slow
def test_the_accelerator_section_runs_every_contender_in_its_smoke_form(tmp_path):
  """`python -m benchmarks.run --only=accelerator --smoke` on the CPU (what a GPU run does, with
  tiny shapes): a row for every kind of contender, MFU = achieved / peak, data-wait fractions
  in [0, 1) relative to the cached batch, the packed seeds row, and a profiler trace on disk."""
  import json
  import subprocess
  import sys
  out = tmp_path / 'results.json'
  done = subprocess.run([sys.executable, '-m', 'benchmarks.run', '--only=accelerator', '--smoke',
                         '--repeats=1', f'--out={out}'], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  rows = json.load(open(out))['rows']
  names = [r['name'] for r in rows]
  for part in ('resnet-8 CIFAR', 'resnet-50', 'transformer LM', 'recurrence=scan',
               'recurrence=custom_vjp', 'jax.experimental.rnn', 'device pipeline',
               'host pipeline', 'one cached batch', 'vmapped', 'one by one', 'packed',
               'profiler trace'):
    assert sum(part in n for n in names) >= 1, (part, names)
  for r in rows:
    if 'mfu' in r:
      assert 0 < r['mfu'] < 1 and r['mfu'] == pytest.approx(r['tflops'] / r['peak_tflops'])
    if 'data_wait_fraction' in r:
      assert 0 <= r['data_wait_fraction'] < 1
  assert next(r for r in rows if 'cached' in r['name'])['data_wait_fraction'] == 0
  assert any(f.is_file() and f.stat().st_size > 0 for f in (tmp_path / 'trace').rglob('*'))
