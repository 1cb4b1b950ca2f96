"""The one train loop: it learns, it is deterministic, it writes a readable workdir."""

import json
import os

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

import data
import models
from conftest import tiny_config
from errors import ConfigError
from data import pipeline
from training import evaluation, experiment, loop, tasks
from training.step import compile_steps


def test_train_step_decreases_loss_on_a_fixed_batch():
  exp = experiment.build_experiment(tiny_config(**{'optimizer.learning_rate': 0.05}))
  state = experiment.create_train_state(exp, jax.random.key(0))
  step = compile_steps(exp).train
  batch = pipeline.TrainBatches(exp.dataset.train, 32, seed=0)(0)
  losses = []
  for _ in range(15):
    state, sums = step(state, batch)
    losses.append(tasks.summarize(jax.device_get(sums))['loss'])
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(state.step) == 15


def test_train_step_updates_batch_norm_running_averages():
  exp = experiment.build_experiment(tiny_config())
  state = experiment.create_train_state(exp, jax.random.key(0))
  before = jax.tree.map(np.asarray, state.batch_stats)
  state, _ = compile_steps(exp).train(
      state, pipeline.TrainBatches(exp.dataset.train, 32, seed=0)(0))
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, state.batch_stats)
  assert all(jax.tree.leaves(changed))


def test_train_state_is_initialized_by_one_program_compiled_once_equal_to_eager_init():
  exp = experiment.build_experiment(tiny_config())
  states = [experiment.create_train_state(exp, jax.random.key(s)) for s in (0, 1)]
  assert exp.jitted_init._cache_size() == 1   # the second seed reused the first's compile
  dummy = np.zeros((1, *exp.dataset.input_shape), np.float32)
  for seed, state in zip((0, 1), states):
    eager = exp.model.init(experiment.named_key(jax.random.key(seed), 'params'), dummy,
                           train=False)
    assert jax.tree.structure(state.params) == jax.tree.structure(eager['params'])
    for got, want in zip(jax.tree.leaves((state.params, state.batch_stats)),
                         jax.tree.leaves((eager['params'], eager['batch_stats']))):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)   # XLA's fusion: 1 ulp
    assert int(state.step) == 0 and jax.tree.structure(state.opt_state) == \
        jax.tree.structure(exp.tx.init(eager['params']))
  assert not all(np.array_equal(a, b) for a, b in zip(*(jax.tree.leaves(s.params) for s in states)))


@pytest.mark.slow   # CI runs it (and the resume tests compare runs bit for bit)
def test_same_seed_gives_bit_identical_metrics(tmp_path):
  a = loop.train_and_evaluate(tiny_config(), str(tmp_path / 'a'))
  b = loop.train_and_evaluate(tiny_config(), str(tmp_path / 'b'))
  assert a['state'] == b['state'] == 'finished'
  assert a['metrics'] == b['metrics']
  c = loop.train_and_evaluate(tiny_config(seed=1), str(tmp_path / 'c'))
  assert c['metrics'] != a['metrics']


def test_workdir_holds_config_status_checkpoint_and_tensorboard_curves(tmp_path):
  workdir = str(tmp_path / 'run')
  result = loop.train_and_evaluate(tiny_config(), workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['depth'] == 8
  with open(os.path.join(workdir, 'status.json')) as f:
    status = json.load(f)
  assert status['state'] == 'finished' and status['step'] == 20
  assert status['metrics'] == result['metrics']
  with open(os.path.join(workdir, 'resolved.json')) as f:   # what `auto` became, and where
    resolved = json.load(f)
  assert resolved == {'model.conv_wgrad': 'chunked' if jax.default_backend() == 'cpu' else 'xla',
                      'model.fusion_barriers': 'on' if jax.default_backend() == 'cpu' else 'off',
                      'backend': jax.default_backend(), 'devices': jax.device_count(),
                      'device_kind': jax.devices()[0].device_kind,
                      'data.pipeline': pipeline.AUTO.get(jax.default_backend(), 'host'),
                      'matmul_precision': 'default', 'deterministic': False}
  acc = event_accumulator.EventAccumulator(workdir)
  acc.Reload()
  tags = set(acc.Tags()['scalars'])
  assert {'train/loss', 'train/accuracy', 'train/learning_rate', 'train/steps_per_sec',
          'eval/loss', 'eval/accuracy'} <= tags
  assert [e.step for e in acc.Scalars('train/loss')] == [10, 20]
  assert acc.Scalars('eval/accuracy')[-1].value == np.float32(result['metrics']['accuracy'])


def test_evaluate_aggregates_uneven_batches_exactly():
  """Metrics over batches of 7 (last one smaller) equal those over one batch of everything."""
  exp = experiment.build_experiment(tiny_config(**{'model.norm': 'layer'}))
  state = experiment.create_train_state(exp, jax.random.key(0))
  steps, variables = compile_steps(exp), evaluation.variables(state)
  small = evaluation.evaluate(steps, variables, exp.dataset.test, 7, max_examples=50)
  whole = evaluation.evaluate(steps, variables, exp.dataset.test, 50, max_examples=50)
  np.testing.assert_allclose(small['loss'], whole['loss'], rtol=1e-5)
  assert small['accuracy'] == whole['accuracy']


def test_eval_modes_identical_for_layer_norm_and_batch_dependent_for_batch_norm(tmp_path):
  results = {}
  for norm in ('layer', 'batch'):
    workdir = str(tmp_path / norm)
    loop.train_and_evaluate(tiny_config(**{'model.norm': norm, 'num_train_steps': 30}), workdir)
    results[norm] = evaluation.evaluate_workdir(workdir, [1, 8, 128], max_examples=64)['rows']
  ln = results['layer']
  for row in ln[1:]:
    assert row['accuracy'] == ln[0]['accuracy']
    np.testing.assert_allclose(row['loss'], ln[0]['loss'], rtol=1e-5)
  bn_losses = [row['loss'] for row in results['batch']]
  assert len({round(v, 4) for v in bn_losses}) == len(bn_losses)  # every mode/batch differs


@pytest.mark.slow   # CI runs it
def test_steps_per_sec_counts_train_steps_only(tmp_path, monkeypatch):
  """An eval (made to take 3 s) and the compiling first step are not train time: the window
  holding the eval reports about the steps/s of the window before it (counted, the eval would
  cut it more than tenfold)."""
  import time
  real_evaluate = evaluation.evaluate

  def slow_evaluate(*args, **kwargs):
    time.sleep(3.0)
    return real_evaluate(*args, **kwargs)

  monkeypatch.setattr(evaluation, 'evaluate', slow_evaluate)
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(tiny_config(num_train_steps=30, eval_every_steps=10), workdir)
  acc = event_accumulator.EventAccumulator(workdir)
  acc.Reload()
  speeds = {e.step: e.value for e in acc.Scalars('train/steps_per_sec')}
  assert set(speeds) == {10, 20, 30}
  # steps 11-20 follow the eval at step 10: counted, its 3 s would hold them under 10/3 steps/s
  assert speeds[20] > 10 and speeds[20] > 0.3 * speeds[10], speeds


def test_ghost_batch_norm_step_is_the_mean_of_plain_steps_on_each_group(tmp_path):
  """The loop's own train step with ghost BatchNorm (4 groups of 8 in a batch of 32) against an
  independent computation: the same step with ordinary BatchNorm on each group of 8 alone. SGD's
  first step (momentum and weight decay included) is linear in the gradient, the loss is a mean
  over examples and the groups share no statistic, so the parameters after the ghost step are
  the mean of the four plain steps', and so are the running averages (equal group sizes)."""
  ghost = {'model.bn_scope': 'ghost', 'model.bn_ghost_size': 8}
  exp = experiment.build_experiment(tiny_config(**ghost))
  plain = experiment.build_experiment(tiny_config(**{'data.batch_size': 8}))
  state = experiment.create_train_state(exp, jax.random.key(0))
  batch = pipeline.TrainBatches(exp.dataset.train, 32, seed=0)(0)
  after, sums = jax.device_get(compile_steps(exp).train(state, batch))
  step = compile_steps(plain).train
  groups = [jax.device_get(step(experiment.create_train_state(plain, jax.random.key(0)),
                                {k: v[i:i + 8] for k, v in batch.items()}))
            for i in range(0, 32, 8)]
  for name in ('params', 'batch_stats'):
    mean = jax.tree.map(lambda *x: np.mean(x, axis=0), *[getattr(s, name) for s, _ in groups])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 getattr(after, name), mean)
  for key in sums:
    np.testing.assert_allclose(sums[key], sum(m[key] for _, m in groups), rtol=1e-5)
  # and the command README shows trains through the loop
  status = loop.train_and_evaluate(tiny_config(**{'model.bn_ghost_size': 4,
                                                  'model.bn_scope': 'ghost'}),
                                   str(tmp_path / 'run'))
  assert status['state'] == 'finished' and status['metrics']['accuracy'] > 0.3


EMBEDDED = {'image': 'digits', 'sequence': 'mnist1d', 'tokens': 'tiny_text'}   # no download


def _family_configs():
  """Each family on an embedded dataset of a kind it takes, small (the fast run: the ResNet);
  a family no embedded dataset fits (the ImageNet ResNet needs 32x32 images) is left out."""
  import config_space as cs
  out = []
  for name, family in models.FAMILIES.items():
    for kind in family.data:
      config = tiny_config(**{'data.name': EMBEDDED[kind], 'data.seq_length': 16,
                              'num_train_steps': 6, 'log_every_steps': 2,
                              'eval_every_steps': 3, 'checkpoint_every_steps': 3,
                              'diagnostics_every_steps': 3, 'data.eval_batch_size': 64})
      with config.unlocked():
        config.model = cs.model_config(cs.Point(name, 'image', 'batch'))
        config.model.width, config.model.bn_momentum = 8, 0.9
        if 'max_length' in config.model:   # mnist1d's 40 steps
          config.model.max_length = 64
        config.optimizer.learning_rate = 1e-3
      try:
        models.build_model(config.model, data.load_dataset(config.data))
      except ConfigError:
        continue
      out.append(pytest.param(config, id=f'{name}-{EMBEDDED[kind]}',
                              marks=() if name == 'resnet' else pytest.mark.slow))
      break
  return out


@pytest.mark.parametrize('config', _family_configs())
def test_every_family_trains_without_an_implicit_transfer(tmp_path, config):
  """transfer_guard=disallow from the second step on, through log, eval, checkpoint and
  diagnostics steps and the final evaluation: the loop moves data between host and devices
  only explicitly (batches put, metrics fetched), so nothing waits on a hidden sync."""
  with config.unlocked():
    config.transfer_guard = 'disallow'
  status = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert status['state'] == 'finished' and status['step'] == 6, status


@pytest.mark.slow   # CI runs it
def test_the_transfer_guard_is_on_in_the_loop(tmp_path, monkeypatch):
  """An implicit transfer slipped into the loop's logging stops a disallow run (and only it)."""
  from training import run as run_lib
  log_train = run_lib.Run.log_train

  def leaky(self, step, sums, learning_rate, speed):
    jax.numpy.asarray(np.float32(step)) + 1   # an implicit host-to-device transfer
    return log_train(self, step, sums, learning_rate, speed)
  monkeypatch.setattr(run_lib.Run, 'log_train', leaky)
  quick = dict(num_train_steps=4, log_every_steps=2, eval_every_steps=4,
               checkpoint_every_steps=4)
  assert loop.train_and_evaluate(tiny_config(**quick), str(tmp_path / 'a'))['state'] == 'finished'
  with pytest.raises(Exception, match='Disallowed host-to-device transfer'):
    loop.train_and_evaluate(tiny_config(transfer_guard='disallow', **quick), str(tmp_path / 'b'))
  assert json.load(open(tmp_path / 'b' / 'status.json'))['state'] == 'failed'


def test_the_device_and_stream_pipelines_train_exactly_as_the_host_pipeline(tmp_path):
  """data.pipeline=device (batches made on the mesh), =stream (records read through Grain,
  finished on the mesh) and =host end with the same metrics, for two vmapped seeds on
  digits_hard (its per-step transform) with shift1, and the device and stream paths move
  nothing implicitly (transfer_guard=disallow: they dispatch in the loop's thread, where the
  guard is set)."""
  from training import checkpoints
  ends = {}
  for place in ('host', 'device', 'stream'):
    configs = [tiny_config(**{'data.pipeline': place, 'seed': seed, 'data.name': 'digits_hard',
                              'data.augment': 'shift1', 'transfer_guard': 'disallow',
                              'num_train_steps': 6, 'log_every_steps': 3,
                              'eval_every_steps': 3, 'checkpoint_every_steps': 6})
               for seed in (0, 1)]
    workdirs = [str(tmp_path / place / str(seed)) for seed in (0, 1)]
    statuses = loop.train_seeds(configs, workdirs)
    assert [s['state'] for s in statuses] == ['finished'] * 2
    resolved = json.load(open(os.path.join(workdirs[0], 'resolved.json')))
    assert resolved['data.pipeline'] == place
    ends[place] = [s['metrics'] for s in statuses]
  assert ends['host'] == ends['device'] == ends['stream'] and ends['host'][0] != ends['host'][1]
