"""Submitting a sweep to Slurm through submitit: one job array, one task per shard.

Each task runs `sweep.run_sweep` on its shard, in the task's process. Preemption and time-out
follow the scheduler's own path, in this order:
  1. Slurm sends SIGUSR2 (`--signal`, set by submitit from `signal_delay_s`), or SIGTERM;
  2. normlab's handler (installed over submitit's while a sweep runs) lets the run in training
     save a checkpoint and end `interrupted`; no other run starts;
  3. the sweep returns, submitit's handler is back in place, and the task hands the signal to
     it: submitit calls `ShardTask.checkpoint` (the same shard again: the workdirs hold
     everything), requeues the task and exits;
  4. the requeued task runs the same shard: finished runs are skipped, the interrupted one
     resumes from its checkpoint.
submitit's handler therefore never exits before normlab has saved.
"""

from __future__ import annotations

import os
import signal
import sys

import submitit

from errors import ConfigError

LOG_DIR = 'submitit'   # inside the sweep directory: submitit's pickles and each task's logs


class ShardTask(submitit.helpers.Checkpointable):
  """One task of the array: shard `index` of `count` of the sweep. Checkpointable: submitit
  requeues it (with the same arguments) after a preemption or time-out."""

  def __call__(self, sweep_spec: str, directory: str, index: int, count: int,
               seeds_in_one_program: str = 'auto') -> dict[str, str]:
    from experiments import sweep, sweeps
    states = sweep.run_sweep(sweeps.load_sweep(sweep_spec), directory, index, count,
                             seeds_in_one_program=seeds_in_one_program)
    if 'interrupted' in states.values():   # a run saved on the scheduler's signal
      requeue()
    failed = sorted(n for n, s in states.items() if s in ('failed', 'refused'))
    if failed:
      raise RuntimeError(f'shard {index}/{count}: runs failed: {", ".join(failed)}')
    return states


def requeue() -> None:
  """Hands the preemption to submitit's handler (checkpoint -> requeue -> exit). Outside
  submitit (no handler of its own) the task just ends: the run is saved and interrupted."""
  handler = signal.getsignal(signal.SIGUSR2)
  if callable(handler) and (getattr(handler, '__module__', '') or '').startswith('submitit'):
    handler(signal.SIGUSR2, None)
  raise SystemExit(143)


def executor(flags, folder: str):
  """A submitit executor with the Slurm options of `flags` (the local executor ignores them)."""
  cluster = flags.cluster
  if cluster not in (None, 'slurm', 'local', 'debug'):
    raise ConfigError(f'unknown --cluster {cluster!r}; valid: slurm, local, debug')
  ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
  params = {'timeout_min': flags.time_min, 'tasks_per_node': 1, 'nodes': 1,
            'slurm_array_parallelism': flags.array_parallelism,
            'slurm_signal_delay_s': flags.signal_delay_s, 'name': 'normlab-sweep'}
  if flags.gpus_per_task:
    params['gpus_per_node'] = flags.gpus_per_task
  if flags.cpus_per_task:
    params['cpus_per_task'] = flags.cpus_per_task
  if flags.mem_gb:
    params['mem_gb'] = flags.mem_gb
  if flags.partition:
    params['slurm_partition'] = flags.partition
  extra = {}
  for item in filter(None, flags.slurm_args.split(',')):
    key, eq, value = item.partition('=')
    if not eq:
      raise ConfigError(f'--slurm_args takes key=value,...; got {item!r}')
    extra[key.strip()] = value.strip()
  if extra:
    params['slurm_additional_parameters'] = extra
  ex.update_parameters(**params)
  return ex


def submit_sweep(flags, sweep) -> int:
  """Validates the sweep here (a bad config fails before anything is submitted), submits one
  task per shard, prints the job ids; with --wait, waits and returns the exit status.
  `sweep`: the experiments.sweep module (as imported by the caller: it may be __main__)."""
  from experiments import sweeps
  spec, directory = flags.sweep, flags.dir
  runs = sweeps.load_sweep(spec).runs()
  sweep.validate(runs)
  sweep.check_existing_runs(runs, directory)
  count = flags.num_shards or len(runs)
  if not 1 <= count <= len(runs):
    raise ConfigError(f'--num_shards must be between 1 and the {len(runs)} runs; got {count}')
  os.makedirs(directory, exist_ok=True)
  ex = executor(flags, os.path.join(directory, LOG_DIR))
  path, colon, arg = spec.partition(':')   # the tasks may start in another directory
  spec = os.path.abspath(path) + colon + arg
  jobs = ex.map_array(ShardTask(), [spec] * count, [os.path.abspath(directory)] * count,
                      list(range(count)), [count] * count, [flags.seeds_in_one_program] * count)
  print(f'submitted {count} task(s) of {len(runs)} runs: job {jobs[0].job_id.split("_")[0]} '
        f'(logs in {os.path.join(directory, LOG_DIR)})', flush=True)
  if not flags.wait:
    return 0
  code = 0
  for k, job in enumerate(jobs):
    try:
      states = job.result()
      print(f'task {k}: ' + ', '.join(f'{s} {name}' for name, s in sorted(states.items())),
            flush=True)
    except Exception as e:  # noqa: BLE001 - a failed task: say which, go on
      print(f'task {k} failed: {" ".join(str(e).split())[-300:]}', file=sys.stderr, flush=True)
      code = 1
  return code
