"""A sweep of small runs packed onto a machine's devices against the same sweep run serially.

  python -m benchmarks.packed                          # 2 simulated CPU devices here
  python -m benchmarks.packed --devices=8 --per_run=1  # on a GPU node: --devices is ignored

Serial: `python -m experiments.sweep` trains each run data-parallel over all devices, one run
after another. Packed: `--devices_per_run=K` starts one process per K devices, each training
its slice of the runs at once (experiments/sweep.py). Both sweeps train the same runs (the
smoke sweep's ResNet-8s at --steps steps, --runs of them), each sweep with an empty
compilation cache of its own (a shared one would favour whichever ran second); the rounds
alternate (serial, packed, serial, ...) so machine noise hits both. Prints each sweep's wall
time and the ratio serial / packed (>1: packing is faster). On the CPU the simulated devices
share the machine's cores: what packing can win there is the overlap of each run's start,
compile and host work, not compute.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from training import platform

SWEEP = """
from experiments import smoke
from experiments.sweeps import Sweep, product
def get_sweep(arg=None):
  return Sweep(smoke.get_sweep('{steps}').base, [product('model.norm', {norms}),
                                                 product('seed', list(range({seeds})))])
"""
NORMS = ('batch', 'layer')


def process_seconds(command: list[str], env: dict | None = None) -> float:
  """Wall seconds of one command in a fresh process (its failure stops the benchmark)."""
  start = time.perf_counter()
  result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if result.returncode != 0:
    raise SystemExit(f'{" ".join(command[:3])} failed ({result.returncode}):\n'
                     f'{result.stderr[-3000:]}')
  return seconds


def sweep_seconds(sweep_file: str, directory: str, env: dict, extra: list[str]) -> float:
  return process_seconds([sys.executable, '-m', 'experiments.sweep', f'--sweep={sweep_file}',
                          f'--dir={directory}', *extra], env)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--devices', type=int, default=2, help='simulated CPU devices (CPU only)')
  p.add_argument('--per_run', type=int, default=1, help='--devices_per_run of the packed sweep')
  p.add_argument('--runs', type=int, default=4, help='runs in the sweep (even: two norms)')
  p.add_argument('--steps', type=int, default=200, help='train steps per run')
  p.add_argument('--repeats', type=int, default=2, help='rounds of (serial, packed)')
  a = p.parse_args(argv)
  env = dict(os.environ)
  kind, ids = platform.local_devices(env)
  if kind == 'cpu':
    env = platform.with_cpu_devices(env, a.devices)
    ids = [str(i) for i in range(a.devices)]
  seeds = max(1, a.runs // len(NORMS))
  times = {'serial': [], 'packed': []}
  with tempfile.TemporaryDirectory() as tmp:
    sweep_file = os.path.join(tmp, 'sweep.py')
    with open(sweep_file, 'w') as f:
      f.write(SWEEP.format(steps=a.steps, norms=list(NORMS), seeds=seeds))
    for r in range(a.repeats):
      for name, extra in (('serial', []), ('packed', [f'--devices_per_run={a.per_run}'])):
        where = os.path.join(tmp, f'{name}{r}')
        times[name].append(sweep_seconds(sweep_file, where, {**env, 'XDG_CACHE_HOME': where +
                                                             '-cache'}, extra))
        print(f'round {r}: {name} {times[name][-1]:.1f} s', flush=True)
  serial, packed = (statistics.median(times[k]) for k in ('serial', 'packed'))
  print(f'{len(NORMS) * seeds} runs of {a.steps} steps on {len(ids)} {kind} device(s): serial (each run on all '
        f'{len(ids)}) {serial:.1f} s, packed ({a.per_run} per run) {packed:.1f} s: '
        f'serial / packed = {serial / packed:.2f}')


if __name__ == '__main__':
  main()
