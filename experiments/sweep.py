"""Run a sweep: every run not yet finished, each in its own workdir under --dir.

  python -m experiments.sweep --sweep=experiments/claims/depth.py --dir=sweeps/depth [--shard=i/n]
  python -m experiments.sweep --sweep=experiments/claims/depth.py --dir=sweeps/depth --dry_run
  python -m experiments.sweep --sweep=... --dir=... --devices_per_run=1   # 8 GPUs: 8 runs at once
  python -m experiments.sweep --sweep=... --dir=... --launcher=submitit --partition=gpu \
      --gpus_per_task=1 --time_min=240 --array_parallelism=16

`--launcher=submitit` submits the sweep to Slurm as a job array through submitit (`map_array`):
one task per shard, each task runs its shard exactly as `--shard=i/n` would. Before a
preemption or time-out Slurm signals the task (SIGUSR2, `--signal_delay_s` ahead); the run in
training saves and stops, then submitit's own handler requeues the task, which resumes it.

Re-running skips finished (and diverged) runs and resumes unfinished ones from their
checkpoints. `--shard=i/n` (0 <= i < n) runs every n-th run starting at i, so a scheduler's
array job spreads a sweep over machines with no coordinator. A run that crashes is recorded as
`failed` and the sweep goes on; the exit status is non-zero if any run failed.

`--devices_per_run=k` packs small runs onto one machine: instead of every run spread over all
its devices in turn (a small ResNet on 8 GPUs spends its step in collectives), one process per
k devices trains its slice of the shard, all at once (`packed`).
"""

from __future__ import annotations

# ruff: noqa: E402  (imports after the restart below)
if __name__ == '__main__':   # first, before JAX loads (training/huge_pages.py)
  from training import huge_pages
  huge_pages.restart_with_huge_pages()

import os
import signal
import subprocess
import sys
import traceback

from absl import app, flags, logging

import cli
import data as data_lib
import models
from errors import ConfigError
from experiments import sweeps
from training import experiment, loop, parallel, platform, run as run_lib
from training import workdir as wd

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line (defined only when run as a program: the launcher's tasks import this
  module for run_sweep)."""
  flags.DEFINE_string('sweep', None, 'Sweep file: experiments/<name>.py[:arg].')
  flags.DEFINE_string('dir', None, 'Directory of the sweep: one workdir per run.')
  flags.DEFINE_string('shard', '0/1', 'i/n: run the i-th of n disjoint slices of the sweep.')
  flags.DEFINE_bool('dry_run', False, 'List the runs and their state; validate every config.')
  flags.DEFINE_enum('seeds_in_one_program', 'auto', ['auto', 'true', 'false'],
                    'Train runs that differ only in their seed as one vmapped program. auto: on '
                    'GPU/TPU yes; on CPU no (vmapped convolutions run slower there than a loop: '
                    'python -m benchmarks.seeds).')
  flags.DEFINE_integer('devices_per_run', 0, 'Pack the runs onto this machine\'s devices: one '
                       'process per group of this many devices (GPUs by CUDA_VISIBLE_DEVICES, '
                       'TPU chips by TPU_VISIBLE_CHIPS), each training its slice of the shard, '
                       'all at once. 0: every run on every device, one run after another.')
  flags.DEFINE_enum('launcher', 'here', ['here', 'submitit'],
                    'here: run the shard in this process. submitit: submit every shard as a task '
                    'of a Slurm job array (or local processes with --cluster=local).')
  flags.DEFINE_integer('num_shards', None, 'submitit: how many tasks (default: one per run).')
  flags.DEFINE_string('cluster', None, 'submitit: slurm | local | debug (default: slurm when '
                      'sbatch is found, else local).')
  flags.DEFINE_string('partition', None, 'submitit: the Slurm partition.')
  flags.DEFINE_integer('gpus_per_task', 1, 'submitit: GPUs of each task.')
  flags.DEFINE_integer('cpus_per_task', None, 'submitit: CPUs of each task.')
  flags.DEFINE_integer('mem_gb', None, 'submitit: memory of each task (GB).')
  flags.DEFINE_integer('time_min', 240, 'submitit: time limit of each task, in minutes (a task '
                       'that reaches it saves, is requeued and resumes).')
  flags.DEFINE_integer('array_parallelism', 32, 'submitit: tasks of the array running at once.')
  flags.DEFINE_integer('signal_delay_s', 120, 'submitit: seconds before the time limit that Slurm '
                       'sends SIGUSR2 (time to save).')
  flags.DEFINE_string('slurm_args', '', 'submitit: more sbatch options, key=value,key=value '
                      '(e.g. account=abc,qos=high).')
  flags.DEFINE_bool('wait', False, 'submitit: wait for every task and report the runs\' states.')
  flags.mark_flags_as_required(['sweep', 'dir'])


SWEEP_FILE = 'sweep.json'
ENDED = ('finished', 'diverged')   # a re-run skips these runs: nothing is left to train


def parse_shard(text: str) -> tuple[int, int]:
  try:
    i, n = (int(p) for p in text.split('/'))
  except ValueError:
    raise ConfigError(f'--shard must be i/n with integers; got {text!r}') from None
  if not (n >= 1 and 0 <= i < n):
    raise ConfigError(f'--shard i/n needs 0 <= i < n; got {text!r}')
  return i, n


def shard(runs: list, i: int, n: int) -> list:
  return runs[i::n]


def run_state(workdir: str) -> str:
  status = wd.read_status(workdir)
  return 'pending' if status is None else status['state']


def validate(runs: list) -> None:
  """Builds every run's model (datasets loaded once per distinct data config) so that a bad
  key or value fails before any run starts, naming the run."""
  datasets, mesh = {}, parallel.data_mesh()
  for run in runs:
    try:
      experiment.check_config(run.config, mesh)
      key = run.config.data.to_json()
      if key not in datasets:
        datasets[key] = data_lib.load_dataset(run.config.data)
      models.build_model(run.config.model, datasets[key], devices=mesh.size)
    except ConfigError as e:
      raise ConfigError(f'run {run.name}: {e}') from None


def config_changes(old: dict, new: dict) -> dict:
  """The keys whose change makes a workdir trained with `old` a different run than `new` (those
  a run may resume with changed are not among them): {key: (old, new)}."""
  return {k: v for k, v in wd.config_diff(old, new).items() if k not in run_lib.RESUMABLE_KEYS}


def check_existing_runs(runs: list, directory: str) -> None:
  """Refuses (one line, naming runs and keys) when a run's workdir holds a run trained with
  another config than the one the sweep now gives it: a changed sweep definition must never
  skip, resume or overwrite runs of the old one."""
  stale = {}
  for run in runs:
    old = wd.read_json(os.path.join(directory, run.name, wd.CONFIG_FILE))
    if old is None:
      continue
    diff = config_changes(old, wd.config_to_dict(run.config))
    if diff:
      stale[run.name] = diff
  if stale:
    keys = sorted({k for d in stale.values() for k in d})
    first = next(iter(stale.values()))
    shown = '; '.join(f'{k}: {first[k][0]!r} -> {first[k][1]!r}' for k in sorted(first))
    names = ', '.join(list(stale)[:3]) + (f' and {len(stale) - 3} more' if len(stale) > 3 else '')
    raise ConfigError(f'{len(stale)} run(s) in {directory} were trained with another config than '
                      f'this sweep gives them ({names}; keys {", ".join(keys)}; e.g. {shown}); '
                      'use a new --dir, or restore the sweep definition')


def seed_groups(runs: list, together: bool) -> list[list]:
  """Runs that differ only in `seed` form one group (in sweep order) when `together`."""
  if not together:
    return [[r] for r in runs]
  groups = {}
  for r in runs:
    key = tuple(sorted((k, repr(v)) for k, v in r.overrides.items() if k != 'seed'))
    groups.setdefault(key, []).append(r)
  return list(groups.values())


def resolve_together(flag: str, backend: str | None = None) -> bool:
  """--seeds_in_one_program: auto is on for every backend but the CPU (`backend`: JAX's)."""
  if backend is None:
    import jax   # noqa: PLC0415
    backend = jax.default_backend()
  return flag == 'true' or (flag == 'auto' and backend != 'cpu')


def write_sweep_file(sweep: sweeps.Sweep, runs: list, directory: str) -> None:
  """sweep.json: the sweep's keys and every run's name and overrides (what reports read)."""
  os.makedirs(directory, exist_ok=True)
  wd.write_json_atomic(os.path.join(directory, SWEEP_FILE), {
      'keys': sweep.keys(), 'runs': [{'name': r.name, 'overrides': r.overrides} for r in runs]})


def run_sweep(sweep: sweeps.Sweep, directory: str, shard_index: int = 0, num_shards: int = 1,
              dry_run: bool = False, seeds_in_one_program: str = 'auto') -> dict[str, str]:
  """Runs (or lists) this shard's runs; returns {run name: final state}."""
  runs = sweep.runs()
  validate(runs)
  mine = shard(runs, shard_index, num_shards)
  check_existing_runs(mine, directory)
  states = {r.name: run_state(os.path.join(directory, r.name)) for r in mine}
  if dry_run:
    for r in mine:
      print(f'{states[r.name]:<12} {r.name}')
    print(f'{len(mine)} runs in shard {shard_index}/{num_shards} of {len(runs)}')
    return states
  write_sweep_file(sweep, runs, directory)
  todo = [r for r in mine if states[r.name] not in ENDED]
  for r in mine:
    if r not in todo:
      print(f'{r.name}: {states[r.name]}, skipped', flush=True)
  stop = run_lib.Preemption()   # a signal between runs (each run has its own while it trains)
  with stop:
    _run_groups(seed_groups(todo, resolve_together(seeds_in_one_program)), directory, states,
                stop)
  counts = {s: list(states.values()).count(s) for s in sorted(set(states.values()))}
  print('sweep done: ' + ', '.join(f'{v} {k}' for k, v in counts.items()), flush=True)
  return states


def _run_groups(groups, directory: str, states: dict, stop: run_lib.Preemption) -> None:
  """Trains each group of runs in turn; after a run is interrupted (SIGTERM, SIGUSR2, Ctrl-C:
  it saved), or a signal came between runs, no other run starts."""
  interrupted = False   # in this invocation (a resumed sweep starts with interrupted runs)
  for n, group in enumerate(groups):
    if stop.requested or interrupted:
      print('sweep interrupted: the runs not started stay as they are; the same command '
            'resumes them', file=sys.stderr, flush=True)
      return
    names = [r.name for r in group]
    print(f'[group {n + 1}] {" + ".join(names)}', flush=True)
    workdirs = [os.path.join(directory, name) for name in names]
    try:
      results = loop.train_seeds([r.config for r in group], workdirs,
                                 [r.overrides for r in group])
      states.update({name: res['state'] for name, res in zip(names, results)})
      interrupted = any(res['state'] == 'interrupted' for res in results)
    except ConfigError as e:   # e.g. the workdir holds a different run: never overwrite it
      print(f'error: {", ".join(names)}: {e}', file=sys.stderr, flush=True)
      states.update({name: 'refused' for name in names})
    except Exception as e:  # noqa: BLE001 - one crash must not stop the sweep
      traceback.print_exc()
      for name, workdir in zip(names, workdirs):
        if run_state(workdir) != 'failed' and os.path.exists(os.path.join(workdir, wd.CONFIG_FILE)):
          wd.write_status(workdir, 'failed', error=f'{type(e).__name__}: {e}')
        states[name] = 'failed'


def packed(flag_values, environ=os.environ) -> int:
  """--devices_per_run=k: one process per k devices, process j of m running the j-th of m
  slices of this shard (`--shard=i/n` becomes `--shard=i+j*n/n*m`: the same runs, split), all
  at once; Ctrl-C, SIGTERM and SIGUSR2 are passed on to every one (each saves its run and
  stops). JAX is never started here: it would hold every GPU. Returns the exit status: 143 if
  a run was interrupted, else the worst of the processes'."""
  i, n = parse_shard(flag_values.shard)
  kind, ids = platform.local_devices(environ)
  envs = platform.slot_environments(kind, ids, flag_values.devices_per_run, environ)
  m = len(envs)
  print(f'{m} processes at once, {flag_values.devices_per_run} {kind} device(s) each', flush=True)
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'experiments.sweep', f'--sweep={flag_values.sweep}',
       f'--dir={flag_values.dir}', f'--shard={i + j * n}/{n * m}',
       f'--seeds_in_one_program={flag_values.seeds_in_one_program}'],
      env=env, start_new_session=True) for j, env in enumerate(envs)]   # signals: from here only

  def pass_on(signum, frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)
  for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
    signal.signal(signum, pass_on)
  codes = [p.wait() for p in procs]
  return 143 if any(c in (130, 143) for c in codes) else max(c if c >= 0 else 1 for c in codes)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    if FLAGS.launcher == 'submitit' and not FLAGS.dry_run:
      from experiments import launch
      sys.exit(launch.submit_sweep(FLAGS, sys.modules[__name__]))
    if FLAGS.devices_per_run and not FLAGS.dry_run:
      sys.exit(packed(FLAGS))
    i, n = parse_shard(FLAGS.shard)
    states = run_sweep(sweeps.load_sweep(FLAGS.sweep), FLAGS.dir, i, n, FLAGS.dry_run,
                       FLAGS.seeds_in_one_program)
  except ConfigError as e:
    cli.fail(str(e))
  if 'interrupted' in states.values():
    sys.exit(143)   # a run saved and stopped, nothing else started: the same command resumes
  if any(s in ('failed', 'refused') for s in states.values()):
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
