"""Runs survive faults: killed (SIGKILL) at chosen moments and resumed with the same command,
a run ends with the curves, heat map, HParams session and final metrics of an unbroken run."""

import glob
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from experiments import report
from training import workdir as wd
from training.metric_writer import SESSION_START_TAG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ['--config=configs/default.py', '--config.model.depth=8', '--config.model.width=8',
         '--config.data.batch_size=32', '--config.num_train_steps=200',
         '--config.log_every_steps=25', '--config.eval_every_steps=100',
         '--config.checkpoint_every_steps=50', '--config.diagnostics_every_steps=50']
TIMING = ('train/steps_per_sec',)   # wall-clock: differs between any two runs


def train(workdir, runner=()):
  return subprocess.run([sys.executable, *runner, *([] if runner else ['train.py']), *FLAGS,
                         f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)


def killed_at(workdir, target, n, when, flushed=False):
  runner = [os.path.join(ROOT, 'tests', 'fault_runner.py'), target, str(n), when,
            *(['--flushed'] if flushed else []), '--']
  result = train(workdir, runner)
  assert result.returncode == -9, result.stderr[-2000:]   # it was killed, where we said


def curves(workdir) -> dict:
  """Every scalar curve as the report reads it (EventAccumulator), the heat maps' bytes, and
  what a raw reader sees: the steps of each tag in the files (duplicates included), and how many
  HParams session starts there are."""
  scalars = {t: v for t, v in report.read_scalars(workdir).items() if t not in TIMING}
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={'images': 0})
  acc.Reload()
  images = {t: [(e.step, e.encoded_image_string) for e in acc.Images(t)]
            for t in acc.Tags()['images']}
  raw, starts = {}, 0
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in EventFileLoader(path).Load():
      for v in event.summary.value:
        raw.setdefault(v.tag, []).append(event.step)
        starts += v.tag == SESSION_START_TAG
  return {'scalars': scalars, 'images': images, 'session_starts': starts,
          'raw_steps': {t: sorted(s) for t, s in raw.items() if t not in TIMING}}


@pytest.fixture(scope='module')
def unbroken(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('unbroken'))
  result = train(workdir)
  assert result.returncode == 0, result.stderr
  return wd.read_status(workdir), curves(workdir)


MOMENTS = {   # name: (target, call, when, flushed)
    'after a TensorBoard flush, before the first checkpoint':
        ('training.run:Run.log_train', 1, 'after', True),
    'between a checkpoint save and the status':
        ('training.checkpoints:Checkpoints.save', 2, 'after', False),
    'between the curves flush and the checkpoint':
        ('training.metric_writer:MetricWriter.flush', 2, 'after', False),
    'after the diagnostics of a checkpointed step':
        ('training.run:Run.log_diagnostics', 3, 'after', True),
    'during an evaluation':
        ('training.loop:evaluate_test', 1, 'before', True),
    'after the last checkpoint, before the run is closed':
        ('training.run:Run.close', 1, 'before', True),
}


@pytest.mark.slow
@pytest.mark.parametrize('moment', list(MOMENTS))
def test_killed_then_resumed_equals_an_unbroken_run(tmp_path, unbroken, moment):
  workdir = str(tmp_path / 'run')
  killed_at(workdir, *MOMENTS[moment])
  result = train(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  status, reference = unbroken
  final = wd.read_status(workdir)
  assert (final['state'], final['step'], final['metrics']) == (
      status['state'], status['step'], status['metrics'])
  got = curves(workdir)
  for key in reference:
    assert got[key] == reference[key], (moment, key)
