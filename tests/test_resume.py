"""Checkpoints and resuming in process: damaged checkpoints are skipped, the checkpoint holds
the whole train state, TensorBoard curves stay clean across restarts, old workdirs still load.
(Killed and signalled processes: tests/test_faults.py.)"""

import glob
import json
import os

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

import data
import models
from conftest import tiny_config
from errors import ConfigError
from training import evaluation, experiment, loop, run as run_lib



def complete_checkpoints(workdir):
  return sorted(int(os.path.basename(p)) for p in glob.glob(f'{workdir}/checkpoints/*')
                if os.path.basename(p).isdigit())


def raw_steps(workdir, tag):
  """Steps of `tag` in every event file, read raw: no purge logic, as any reader sees them."""
  steps = []
  for path in sorted(glob.glob(f'{workdir}/events.out.tfevents.*')):
    for event in EventFileLoader(path).Load():
      steps += [event.step for v in event.summary.value if v.tag == tag]
  return sorted(steps)


SHORT = {'num_train_steps': 20, 'checkpoint_every_steps': 10}


@pytest.fixture(scope='module')
def short_run(tmp_path_factory):
  """A finished 20-step run (checkpoints at 10 and 20) and its final metrics."""
  workdir = str(tmp_path_factory.mktemp('short') / 'run')
  return workdir, loop.train_and_evaluate(tiny_config(**SHORT), workdir)['metrics']


def _largest(paths):
  return [max(paths, key=os.path.getsize)]


DAMAGE = {   # what is damaged: (files of the checkpoint at 20, how, keep our checksums)
    'a data file overwritten in the middle': ('ocdbt.process_0/d/*', 'garbage', True),
    'a data file truncated': ('ocdbt.process_0/d/*', 'truncate', True),
    'the array manifest truncated': ('default/manifest.ocdbt', 'truncate', True),
    'the metadata overwritten': ('_CHECKPOINT_METADATA', 'garbage', True),
    'a data file truncated, no checksums': ('ocdbt.process_0/d/*', 'truncate', False),
    'the array manifest overwritten, no checksums': ('default/manifest.ocdbt', 'garbage', False),
}


@pytest.mark.parametrize('damage', [   # fast: the first kind; CI: every kind
    pytest.param(d, marks=() if k == 0 else pytest.mark.slow) for k, d in enumerate(DAMAGE)])
def test_a_damaged_checkpoint_is_one_line_naming_it_and_the_run_falls_back(
    tmp_path, short_run, capfd, damage):
  """Damage of every kind: one warning line (the step, the directory, the file or the reason),
  no tracebacks, the previous checkpoint restored, and the same final metrics as unbroken.
  (Orbax restored an overwritten data file without an error: our checksums find it.)"""
  import shutil
  source, metrics = short_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(source, workdir)
  pattern, how, checksums = DAMAGE[damage]
  step_dir = f'{workdir}/checkpoints/20'
  if not checksums:
    os.remove(f'{step_dir}/normlab_checksums.json')
  for path in _largest(glob.glob(f'{step_dir}/**/{pattern}', recursive=True)):
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
      if how == 'truncate':
        f.truncate(size // 2)
      else:
        f.seek(size // 2)
        f.write(b'\xffgarbage' * 4)
  os.remove(os.path.join(workdir, 'status.json'))  # as if killed right after the save
  capfd.readouterr()
  result = loop.train_and_evaluate(tiny_config(**SHORT), workdir)
  err = capfd.readouterr().err.strip().splitlines()
  assert len(err) == 1, err[:20]
  assert err[0].startswith(f'warning: checkpoint at step 20 ({step_dir}) is unreadable: '), err
  if checksums:
    assert os.path.relpath(path, step_dir) in err[0]   # names the file
  assert result['metrics'] == metrics
  assert os.listdir(f'{workdir}/checkpoints_unreadable')   # set aside, not deleted
  assert 20 in complete_checkpoints(workdir)               # and written again, readable


def test_logging_frequency_may_change_on_resume_but_nothing_else(tmp_path):
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(tiny_config(), workdir)
  os.remove(os.path.join(workdir, 'status.json'))
  loop.train_and_evaluate(tiny_config(log_every_steps=5, checkpoint_every_steps=5), workdir)
  with pytest.raises(ConfigError, match='optimizer.learning_rate'):
    loop.train_and_evaluate(tiny_config(**{'optimizer.learning_rate': 0.5}), workdir)


def _resnet_options():
  """'' (fast) and every model option the CIFAR ResNet takes (slow; some rename or add
  variables: flax's WeightNorm and SpectralNorm put '/' in their variables' names)."""
  out = [pytest.param('', id='plain')]
  for option in models.options.switches():
    try:
      models.build_model(tiny_config(**{f'model.{option}': True}).model,
                         data.load_dataset(tiny_config().data))
    except ConfigError:
      continue
    out.append(pytest.param(option, id=option, marks=pytest.mark.slow))
  return out


@pytest.mark.parametrize('option', _resnet_options())
def test_checkpoint_holds_the_whole_train_state(tmp_path, option):
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(tiny_config(**{f'model.{option}': True} if option else {}), workdir)
  exp, state, step = evaluation.load_run(workdir)
  assert step == int(state.step) == 20
  fresh = experiment.create_train_state(exp, jax.random.key(0))
  for name in ('params', 'batch_stats', 'opt_state'):
    assert jax.tree.structure(getattr(state, name)) == jax.tree.structure(getattr(fresh, name))
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                              getattr(state, name), getattr(fresh, name))
    assert any(jax.tree.leaves(moved)), name  # restored trained values, not the init


def test_resumed_writer_drops_points_logged_after_the_checkpoint(tmp_path):
  """A killed process logged steps 1..10 (diagnostics at 6, after its checkpoint at 6): the
  resumed writer removes what it logs again before logging it, and what it keeps stays a scalar
  (copied byte for byte: every reader that asks for scalars still finds them)."""
  from training.metric_writer import MetricWriter
  logdir = str(tmp_path)
  killed = MetricWriter(logdir)
  for step in range(1, 11):
    killed.scalars(step, 'train', {'loss': float(step)})
  killed.scalars(6, 'grad_norm', {'stem': 1.0})
  killed.close()  # the process dies here; what it wrote stays on disk
  resumed = MetricWriter(logdir, resume_step=6, kept_at_step=('train/',))
  resumed.scalars(6, 'grad_norm', {'stem': 2.0})
  for step in range(7, 13):
    resumed.scalars(step, 'train', {'loss': 100.0 + step})
  resumed.close()
  assert raw_steps(logdir, 'train/loss') == list(range(1, 13))
  acc = event_accumulator.EventAccumulator(logdir)
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars('train/loss')] == (
      [(s, float(s)) for s in range(1, 7)] + [(s, 100.0 + s) for s in range(7, 13)])
  assert [(e.step, e.value) for e in acc.Scalars('grad_norm/stem')] == [(6, 2.0)]


def test_a_workdir_written_before_a_later_key_existed_still_resumes_and_loads(tmp_path):
  """config.json from before `model.compute_dtype` existed: the run is the same run (float32)."""
  from training import workdir as wd
  config = tiny_config()
  old = wd.config_to_dict(config)
  del old['model']['compute_dtype']
  (tmp_path / 'config.json').write_text(json.dumps(old))
  assert run_lib.claim_workdir(config, str(tmp_path)) == {'state': 'running'}
  assert wd.read_config(str(tmp_path)).model.compute_dtype == 'float32'
  with config.unlocked():
    config.model.compute_dtype = 'bfloat16'     # but a real change is still refused
  with pytest.raises(ConfigError, match='compute_dtype'):
    run_lib.claim_workdir(config, str(tmp_path))
