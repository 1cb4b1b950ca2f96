"""Cluster behaviour, measured: seconds from a scheduler's signal to exit (one run, a sweep, a
2-process run), the wall time of a run as 2 processes on localhost against 1 process on 2
devices (same global batch), and what each process reads per step.

  python -m benchmarks.cluster [--steps=60]

Every number comes from real processes started here (as tests/test_multiprocess.py starts them).
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ['--config=configs/default.py', '--config.model.depth=8', '--config.model.width=8',
         '--config.data.batch_size=32', '--config.log_every_steps=10',
         '--config.eval_every_steps=1000', '--config.checkpoint_every_steps=1000']


def env(**extra):
  e = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'XLA_FLAGS'))}
  return {**e, **extra}


def start(args, environ):
  return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=environ,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_to_exit(procs, marker: str, sig=signal.SIGTERM, target=0) -> tuple[float, list]:
  """Waits for `marker` in process `target`'s stdout, signals it, returns the seconds until
  every process has exited, and their exit codes."""
  seen = threading.Event()

  def watch():
    for line in procs[target].stdout:
      if marker in line:
        seen.set()
  threading.Thread(target=watch, daemon=True).start()
  seen.wait(600)
  t0 = time.perf_counter()
  procs[target].send_signal(sig)
  for p in procs:
    p.wait(600)
  return time.perf_counter() - t0, [p.returncode for p in procs]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def two_processes(workdir, args):
  port = free_port()
  return [start(['train.py', *args, f'--workdir={workdir}', '--config.distributed=True',
                 '--num_processes=2', f'--process_id={i}'],
                env(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}')) for i in range(2)]


def timed(procs) -> float:
  t0 = time.perf_counter()
  for p in procs:
    p.communicate()
    assert p.returncode == 0, p.returncode
  return time.perf_counter() - t0


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--steps', type=int, default=200)
  a = p.parse_args()
  steps = [f'--config.num_train_steps={a.steps}']
  with tempfile.TemporaryDirectory() as tmp:
    long = ['--config.num_train_steps=100000']
    s, codes = signal_to_exit([start(['train.py', *SMALL, *long, f'--workdir={tmp}/one'],
                                     env())], 'step     20  train')
    print(f'one run: SIGTERM at step 20 -> exit {codes} in {s:.2f} s (save + close)')
    s, codes = signal_to_exit(two_processes(f'{tmp}/two', SMALL + long), 'step     20  train',
                              target=1)
    print(f'2-process run: SIGTERM to process 1 only -> exits {codes} in {s:.2f} s')
    sweep = start(['-m', 'experiments.sweep', '--sweep=experiments/smoke.py',
                   f'--dir={tmp}/sweep'], env())
    s, codes = signal_to_exit([sweep], 'step     10  train', sig=signal.SIGUSR2)
    print(f'sweep: SIGUSR2 during its first run -> exit {codes} in {s:.2f} s')

    one = timed([start(['train.py', *SMALL, *steps, f'--workdir={tmp}/ref'],
                       env(XLA_FLAGS='--xla_force_host_platform_device_count=2'))])
    two = timed(two_processes(f'{tmp}/pair', SMALL + steps))
    print(f'{a.steps} steps, batch 32: 1 process on 2 devices {one:.1f} s; 2 processes on '
          f'localhost {two:.1f} s ({two / one:.2f}x; wall time of the whole command: start-up, '
          'compile, train, final eval, save)')

  import numpy as np
  from configs import default
  import data as data_lib
  config = default.get_config()
  dataset = data_lib.load_dataset(config.data)
  example = dataset.train.get(np.arange(1))
  per_example = sum(v.nbytes for v in example.values())
  b = config.data.batch_size
  for n in (2, 8):
    print(f'default config (batch {b}, {per_example} bytes/example), {n} processes: each reads '
          f'{b * per_example} bytes/step before (the whole batch), {b // n * per_example} after '
          f'(its share of {b // n} examples)')


if __name__ == '__main__':
  main()
