"""Sweeps: expansion, shards, resume after a kill, divergence, failure isolation, report."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from scipy import stats as scipy_stats
import pytest

from errors import ConfigError
from experiments import report, sweep, sweeps
from experiments.sweeps import Sweep, product, zipped
from conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_product_and_zipped_axes_expand_with_stable_unique_names():
  s = Sweep(tiny_config(), [product('model.norm', ['batch', 'layer']),
                            zipped({'model.depth': [8, 14], 'optimizer.learning_rate': [0.1, 0.05]}),
                            product('seed', [0, 1, 2])])
  runs = s.runs()
  assert len(runs) == 2 * 2 * 3
  names = [r.name for r in runs]
  assert len(set(names)) == len(names)
  assert names[0] == 'norm=batch,depth=8,learning_rate=0.1,seed=0'
  assert names == [r.name for r in s.runs()]                 # stable
  by_name = {r.name: r for r in runs}
  r = by_name['norm=layer,depth=14,learning_rate=0.05,seed=2']
  assert (r.config.model.norm, r.config.model.depth, r.config.optimizer.learning_rate,
          r.config.seed) == ('layer', 14, 0.05, 2)
  assert s.runs()[0].config.model.depth == 8 and tiny_config().model.depth == 8  # base untouched


def test_colliding_short_names_use_the_full_key():
  s = Sweep(tiny_config(), [product('model.name', ['resnet']), product('data.name', ['digits'])])
  assert s.runs()[0].name == 'model.name=resnet,data.name=digits'


@pytest.mark.parametrize('n', [1, 3, 5])
def test_shards_are_disjoint_and_cover_the_sweep(n):
  runs = Sweep(tiny_config(), [product('model.norm', ['batch', 'layer', 'rms']),
                               product('seed', [0, 1, 2, 3])]).runs()
  slices = [sweep.shard(runs, i, n) for i in range(n)]
  names = [r.name for part in slices for r in part]
  assert sorted(names) == sorted(r.name for r in runs) and len(names) == len(set(names))


def test_bad_axis_fails_at_dry_run_naming_the_run(tmp_path):
  with pytest.raises(ConfigError, match=r'run norm=batch,nrom=layer: cannot set model.nrom'):
    Sweep(tiny_config(), [product('model.norm', ['batch']), product('model.nrom', ['layer'])]).runs()
  bad_value = Sweep(tiny_config(), [product('model.depth', [8, 21])])
  with pytest.raises(ConfigError, match=r'run depth=21: .*6n\+2'):
    sweep.run_sweep(bad_value, str(tmp_path / 's'), dry_run=True)
  bad_norm = Sweep(tiny_config(), [product('model.norm', ['batch', 'weight'])])
  with pytest.raises(ConfigError, match=r'run norm=weight: unknown norm'):
    sweep.run_sweep(bad_norm, str(tmp_path / 's'), dry_run=True)
  with pytest.raises(ConfigError, match='run depth=x: cannot set model.depth'):
    Sweep(tiny_config(), [product('model.depth', ['x'])]).runs()
  assert not (tmp_path / 's').exists()


def test_diverging_run_is_recorded_and_the_sweep_goes_on(tmp_path):
  s = Sweep(tiny_config(**{'model.norm': 'none'}),
            [product('optimizer.learning_rate', [0.05, 1e6])])
  states = sweep.run_sweep(s, str(tmp_path))
  assert states == {'learning_rate=0.05': 'finished', 'learning_rate=1000000.0': 'diverged'}
  status = json.load(open(tmp_path / 'learning_rate=1000000.0' / 'status.json'))
  assert status['state'] == 'diverged' and status['step'] > 0
  again = sweep.run_sweep(s, str(tmp_path))   # nothing is re-run
  assert again == states
  text = open(report.write_report(str(tmp_path))).read()
  assert 'learning_rate=1000000.0: **diverged** at step' in text


def test_crashing_run_is_failed_and_the_sweep_goes_on(tmp_path, monkeypatch):
  """A run that crashes inside (its evaluation raises, for eval batch size 63) ends `failed`
  with the error and the step it had completed; the sweep goes on to the next run."""
  from training import run as run_lib
  evaluate = run_lib.evaluate_test

  def crashing(exp, steps, state):
    if exp.config.data.eval_batch_size == 63:
      raise RuntimeError('a bug in the evaluation')
    return evaluate(exp, steps, state)

  monkeypatch.setattr(run_lib, 'evaluate_test', crashing)   # the loop's periodic evaluations
  s = Sweep(tiny_config(), [product('data.eval_batch_size', [63, 64])])
  states = sweep.run_sweep(s, str(tmp_path))
  assert states == {'eval_batch_size=63': 'failed', 'eval_batch_size=64': 'finished'}
  status = json.load(open(tmp_path / 'eval_batch_size=63' / 'status.json'))
  assert status['state'] == 'failed' and 'a bug in the evaluation' in status['error']
  assert status['step'] == tiny_config().eval_every_steps   # steps done, as every state counts


FOUR_RUNS = """
from experiments import smoke
from experiments.sweeps import Sweep, product
def get_sweep(arg=None):
  return Sweep(smoke.get_sweep('30').base, [product('model.norm', ['batch', 'layer']),
                                            product('seed', [0, 1])])
"""


def sweep_cmd(directory, text=FOUR_RUNS):
  sweep_file = directory.parent / 'four.py'
  sweep_file.write_text(text)
  return [sys.executable, '-m', 'experiments.sweep', f'--sweep={sweep_file}', f'--dir={directory}']


def final_metrics(directory):
  out = {}
  for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
    path = os.path.join(directory, name, 'status.json')
    if os.path.exists(path):
      status = json.load(open(path))
      out[name] = (status['state'], status.get('metrics'))
  return out


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_runs(tmp_path):
  reference, interrupted = tmp_path / 'ref', tmp_path / 'killed'
  subprocess.run(sweep_cmd(reference), cwd=ROOT, check=True, capture_output=True, timeout=600)
  proc = subprocess.Popen(sweep_cmd(interrupted), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  t0 = time.time()
  while sum(s == 'finished' for s, _ in final_metrics(interrupted).values()) < 2:
    assert proc.poll() is None and time.time() - t0 < 300
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  finished_before = {n: os.path.getmtime(interrupted / n / 'status.json')
                     for n, (s, _) in final_metrics(interrupted).items() if s == 'finished'}
  assert 2 <= len(finished_before) < 4
  result = subprocess.run(sweep_cmd(interrupted), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr
  for name, mtime in finished_before.items():
    assert f'{name}: finished, skipped' in result.stdout
    assert os.path.getmtime(interrupted / name / 'status.json') == mtime  # not re-run
  assert final_metrics(interrupted) == final_metrics(reference)


@pytest.mark.slow
@pytest.mark.parametrize('signal_name', ['SIGTERM'])   # SIGUSR2: the submitit test below
def test_a_signalled_sweep_saves_the_current_run_starts_no_other_and_resumes(
    tmp_path, signal_name):
  """SIGTERM mid-sweep (SIGUSR2, a scheduler's warning, takes the same path and is sent in the
  submitit test, which also checks the requeue): the run in training saves and ends
  `interrupted`, no other run starts, exit 143 within seconds; the same command finishes the
  sweep with the metrics of an uninterrupted one (computed here one run at a time: resumed
  runs are bit-identical, test_resume.py)."""
  directory = tmp_path / 'sweep'
  proc = subprocess.Popen(sweep_cmd(directory), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  t0 = time.time()
  first = directory / 'norm=batch,seed=0'
  while not os.path.isdir(first / 'checkpoints' / '10'):
    assert proc.poll() is None and time.time() - t0 < 300, proc.communicate()
    time.sleep(0.05)
  sent = time.time()
  proc.send_signal(getattr(signal, signal_name))
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 143 and 'Traceback' not in stderr, stderr[-2000:]
  assert time.time() - sent < 30
  states = {n: s for n, (s, _) in final_metrics(directory).items()}
  assert states == {'norm=batch,seed=0': 'interrupted'}, states   # nothing else started
  result = subprocess.run(sweep_cmd(directory), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert {s for s, _ in final_metrics(directory).values()} == {'finished'}
  assert len(final_metrics(directory)) == 4


@pytest.mark.slow   # 90 s of training; CI runs it
def test_report_groups_and_numbers_match_the_event_files(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  s = sweeps.load_sweep('experiments/smoke.py')
  sweep.run_sweep(s, str(tmp_path))
  path = report.write_report(str(tmp_path))
  text = open(path).read()
  assert os.path.exists(tmp_path / 'train_loss.png')
  rows = {tuple(c.strip() for c in line.strip('|').split('|')[:2]): line
          for line in text.splitlines() if line.startswith('| batch') or line.startswith('| layer')}
  assert set(rows) == {(n, r) for n in ('batch', 'layer') for r in ('True', 'False')}
  for (norm, residual), line in rows.items():
    losses, accs = [], []
    for seed in (0, 1):
      workdir = tmp_path / f'norm={norm},residual={residual},seed={seed}'
      acc = event_accumulator.EventAccumulator(str(workdir))
      acc.Reload()
      losses.append(acc.Scalars('train/loss')[-1].value)
      accs.append(acc.Scalars('eval/accuracy')[-1].value)
    cells = [c.strip() for c in line.strip('|').split('|')]
    assert cells[2] == '2'
    t = scipy_stats.t.ppf(0.975, 1) / np.sqrt(2)   # the 95 % t-interval of a mean of 2 seeds
    for cell, v in ((cells[3], losses), (cells[4], accs)):
      half = t * np.std(v, ddof=1)
      assert cell == f'{np.mean(v):.4f} [{np.mean(v) - half:.4f}, {np.mean(v) + half:.4f}]'


def test_seed_groups_gather_runs_that_differ_only_in_seed():
  runs = Sweep(tiny_config(), [product('model.norm', ['batch', 'rms']),
                               product('seed', [0, 1, 2])]).runs()
  groups = sweep.seed_groups(runs, together=True)
  assert [[r.overrides['seed'] for r in g] for g in groups] == [[0, 1, 2], [0, 1, 2]]
  assert {g[0].overrides['model.norm'] for g in groups} == {'batch', 'rms'}
  assert len(sweep.seed_groups(runs, together=False)) == 6
  # --seeds_in_one_program=auto: vmapped on accelerators, a loop on the CPU (measured slower)
  assert [sweep.resolve_together('auto', b) for b in ('cpu', 'gpu', 'tpu')] == [False, True, True]
  assert [sweep.resolve_together(f, 'gpu') for f in ('true', 'false')] == [True, False]


def test_rerun_of_a_changed_sweep_refuses_naming_runs_and_keys(tmp_path):
  """A directory made with `smoke.py:20` re-run with `smoke.py:50`: the finished runs were trained
  with 20 steps, so the sweep refuses instead of reporting them as done; nothing is written."""
  from training import workdir as wd
  old = Sweep(tiny_config(), [product('model.norm', ['batch', 'layer'])])
  for r in old.runs():   # two finished runs of the old definition
    os.makedirs(tmp_path / r.name)
    wd.write_json_atomic(str(tmp_path / r.name / wd.CONFIG_FILE), wd.config_to_dict(r.config))
    wd.write_status(str(tmp_path / r.name), 'finished', step=20)
  before = {p: os.path.getmtime(p) for p in map(str, tmp_path.rglob('*'))}
  changed = Sweep(tiny_config(num_train_steps=50), [product('model.norm', ['batch', 'layer'])])
  for dry_run in (True, False):
    with pytest.raises(ConfigError) as e:
      sweep.run_sweep(changed, str(tmp_path), dry_run=dry_run)
    message = str(e.value)
    assert '\n' not in message and 'norm=batch' in message and 'norm=layer' in message
    assert 'num_train_steps: 20 -> 50' in message
  assert {p: os.path.getmtime(p) for p in map(str, tmp_path.rglob('*'))} == before
  # only logging and checkpoint frequencies may change between re-runs
  logging_only = Sweep(tiny_config(log_every_steps=5), [product('model.norm', ['batch', 'layer'])])
  assert set(sweep.run_sweep(logging_only, str(tmp_path)).values()) == {'finished'}


@pytest.mark.slow
def test_submitit_launcher_runs_shards_as_tasks_and_requeues_a_signalled_one(tmp_path):
  """`--launcher=submitit` with submitit's local executor (real subprocesses, as Slurm would
  start them): 2 tasks of 2 runs each; SIGUSR2 (Slurm's warning before a preemption or time-out)
  to the process training a run: it saves, submitit requeues the task, the task resumes it; every
  run ends finished with the metrics of an uninterrupted sweep."""
  reference, directory = tmp_path / 'ref', tmp_path / 'sweep'
  subprocess.run(sweep_cmd(reference), cwd=ROOT, check=True, capture_output=True, timeout=600)
  proc = subprocess.Popen(
      sweep_cmd(directory) + ['--launcher=submitit', '--cluster=local', '--num_shards=2',
                              '--gpus_per_task=0', '--time_min=20', '--wait'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  t0, pid = time.time(), None
  while pid is None:   # a task is training a run: its checkpoint at step 10 is written
    assert proc.poll() is None and time.time() - t0 < 300, proc.communicate()
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
      lock = directory / name / 'lock.json'
      if (directory / name / 'checkpoints' / '10').is_dir() and lock.exists():
        try:
          pid = json.loads(lock.read_text())['pid']
          signalled = name
        except (ValueError, KeyError, FileNotFoundError):
          continue
        break
    time.sleep(0.05)
  os.kill(pid, signal.SIGUSR2)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, (out[-2000:], err[-2000:])
  assert final_metrics(directory) == final_metrics(reference)
  assert {s for s, _ in final_metrics(directory).values()} == {'finished'}
  logs = ''.join(p.read_text() for p in (directory / 'submitit').glob('*_log.*'))
  assert 'run interrupted (SIGUSR2)' in logs and 'Requeued job' in logs, logs[-3000:]
  assert f'{directory / signalled}: resumed from the checkpoint at step' in logs


@pytest.mark.slow
def test_a_packed_sweep_trains_its_runs_at_once_each_on_its_devices_with_the_same_results(
    tmp_path):
  """--devices_per_run=2 on a machine of 4 (simulated CPU) devices: two processes at once, each
  training its own run on its own 2 devices; every run ends as it does in a sweep that trains
  it alone on 2 devices."""
  two_runs = FOUR_RUNS.replace("product('seed', [0, 1])", "product('seed', [0])")
  on = lambda n: {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={n}'}
  reference, packed = tmp_path / 'ref', tmp_path / 'packed'
  subprocess.run(sweep_cmd(reference, two_runs), cwd=ROOT, check=True, capture_output=True,
                 timeout=600, env=on(2))
  result = subprocess.run([*sweep_cmd(packed, two_runs), '--devices_per_run=2'], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=on(4))
  assert result.returncode == 0, result.stderr[-3000:]
  assert '2 processes at once, 2 cpu device(s) each' in result.stdout
  assert len(final_metrics(packed)) == 2 and final_metrics(packed) == final_metrics(reference)
  pids = set()
  for name in final_metrics(packed):
    assert json.load(open(packed / name / 'resolved.json'))['devices'] == 2
    (event,) = glob.glob(str(packed / name / 'events.out.tfevents.*'))
    pids.add(int(event.split('.')[-2]))
  assert len(pids) == 2   # one process each
