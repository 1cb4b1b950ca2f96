"""Checks that need 8 devices; run by tests/test_parallel.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (JAX reads it once, at start)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from conftest import tiny_config  # noqa: E402
from experiments import comm  # noqa: E402
from models import norms  # noqa: E402
from training import experiment, parallel  # noqa: E402
from training.step import compile_steps  # noqa: E402

assert jax.device_count() == 8, jax.devices()


def one_step(config, devices):
  mesh = parallel.data_mesh(devices)
  exp = experiment.build_experiment(config, mesh)
  state = parallel.replicate(experiment.create_train_state(exp, jax.random.key(0)), mesh)
  batch = parallel.shard_batch(exp.dataset.train.get(np.arange(config.data.batch_size)), mesh)
  state, sums = compile_steps(exp).train(state, batch)
  return jax.device_get((state.params, state.batch_stats, sums))


def check_global_bn_equals_single_device():
  config = tiny_config()
  many = one_step(config, jax.devices())
  one = one_step(config, jax.devices()[:1])
  for a, b in zip(jax.tree.leaves(many), jax.tree.leaves(one)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  print('global BN on 8 devices == 1 device: ok')


def check_per_device_bn_equals_bn_of_each_shard():
  x = np.random.default_rng(0).normal(2, 3, size=(32, 4, 4, 6)).astype(np.float32)
  grouped = norms.make_norm('batch', bn_scope='per_device', devices=8)()
  plain = norms.make_norm('batch')()
  variables = plain.init(jax.random.key(0), x, train=False)
  mesh = parallel.data_mesh()
  fn = jax.jit(lambda v, x: grouped.apply(v, x, train=True, mutable=['batch_stats']))
  out, updates = fn(variables, parallel.shard_batch(x, mesh))
  shards = [plain.apply(variables, s, train=True, mutable=['batch_stats'])
            for s in np.split(x, 8)]
  np.testing.assert_allclose(out, np.concatenate([o for o, _ in shards]), rtol=1e-4, atol=1e-5)
  mean_of_shards = np.mean([u['batch_stats']['bn']['mean'] for _, u in shards], axis=0)
  np.testing.assert_allclose(updates['batch_stats']['bn']['mean'], mean_of_shards, rtol=1e-4, atol=1e-6)
  print('per_device BN == BN of each shard: ok')


def check_collectives():
  config = tiny_config()
  rows = {r['norm']: r for r in comm.measure(
      config, ['layer', 'batch:global', 'batch:per_device', 'group'], jax.devices())}
  for name in ('layer', 'group'):   # only the gradient (+ metrics) all-reduce
    assert rows[name]['all-reduce'] == 1 and rows[name]['extra_bytes'] <= 64, rows[name]
  assert rows['batch:global']['all-reduce'] > rows['layer']['all-reduce'], rows
  assert rows['batch:per_device']['all-reduce'] == 1, rows
  print('collectives:', {k: (v['all-reduce'], v['extra_bytes']) for k, v in rows.items()})


def check_steps_dispatched_back_to_back_never_hang():
  """300 per-device BatchNorm steps dispatched as the loop does: XLA:CPU's all-reduce used to
  wait for a device that never came and abort the process (training/step.py: OneAtATime)."""
  config = tiny_config(**{'model.bn_scope': 'per_device', 'data.batch_size': 64})
  exp = experiment.build_experiment(config)
  state = parallel.replicate(experiment.create_train_state(exp, jax.random.key(0)), exp.mesh)
  train = compile_steps(exp).train
  for step in range(300):
    idx = (np.arange(config.data.batch_size) + 7 * step) % len(exp.dataset.train)
    state, _ = train(state, parallel.shard_batch(exp.dataset.train.get(idx), exp.mesh))
  assert int(state.step) == 300
  print('300 steps dispatched back to back on 8 devices: ok')


check_steps_dispatched_back_to_back_never_hang()
check_global_bn_equals_single_device()
check_per_device_bn_equals_bn_of_each_shard()
check_collectives()
print('ALL OK')
