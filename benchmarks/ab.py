"""Alternating A/B runs of process-level settings on the train step (XLA flags and glibc tunables
are read when a process starts, so each run is a fresh process; A B A B ... so that machine noise
hits both alike).

  python -m benchmarks.ab                                # default vs the YNN fusion XLA flag
  python -m benchmarks.ab --flags="--xla_cpu_enable_fast_math=true" --rounds=5
  python -m benchmarks.ab --huge-pages --args="--depth=110 --steps=2 --repeats=2"
                                                         # training/huge_pages.py: off vs on

Prints each run's steps/s and system time per step, and the median ratio B / A.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

YNN = ('--xla_cpu_experimental_ynn_fusion_type='
       'dot,eltwise,reduce,individual_convolution,individual_dot')


def run_once(env: dict[str, str], extra: list[str]) -> tuple[float, float]:
  """(steps/s, system seconds per step) of one `benchmarks.train_step` process."""
  out = subprocess.run([sys.executable, '-m', 'benchmarks.train_step', *extra],
                       env={**os.environ, **env}, capture_output=True, text=True,
                       check=True).stdout
  return (float(re.search(r'\| ([\d.]+) steps/s', out).group(1)),
          float(re.search(r'system ([\d.]+) ms/step', out).group(1)) / 1e3)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--flags', default=YNN, help='XLA_FLAGS of run B (run A: none)')
  p.add_argument('--huge-pages', action='store_true',
                 help='instead: A = NORMLAB_HUGE_PAGES=0, B = the default (training/huge_pages.py)')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--args', default='--steps=3 --repeats=3',
                 help='arguments for benchmarks.train_step (e.g. "--depth=56")')
  a = p.parse_args()
  if a.huge_pages:
    env_a, env_b, what = {'NORMLAB_HUGE_PAGES': '0'}, {}, 'huge pages'
  else:
    env_a, env_b, what = {'XLA_FLAGS': ''}, {'XLA_FLAGS': a.flags}, f'flags {a.flags}'
  ratios = []
  for i in range(a.rounds):
    (rate_a, sys_a), (rate_b, sys_b) = (run_once(env_a, a.args.split()),
                                        run_once(env_b, a.args.split()))
    ratios.append(rate_b / rate_a)
    print(f'round {i + 1}: A {rate_a:.3f} steps/s ({sys_a * 1e3:.0f} ms system/step), '
          f'B {rate_b:.3f} steps/s ({sys_b * 1e3:.0f} ms system/step): {rate_b / rate_a:.3f}x',
          flush=True)
  print(f'median B/A over {a.rounds} alternating rounds: {statistics.median(ratios):.3f}x '
        f'(min {min(ratios):.3f}, max {max(ratios):.3f}); B = {what}')


if __name__ == '__main__':
  main()
