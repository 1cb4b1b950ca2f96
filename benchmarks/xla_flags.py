"""Alternating A/B runs of XLA flags on the ResNet-20 train step (flags are read when the backend
starts, so each run is a fresh process; A B A B ... so that machine noise hits both alike).

  python -m benchmarks.xla_flags                       # default vs the YNN fusion flag
  python -m benchmarks.xla_flags --rounds=5 --flags="--xla_cpu_enable_fast_math=true"

Prints each run's steps/s and the median ratio flagged / default.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

YNN = ('--xla_cpu_experimental_ynn_fusion_type='
       'dot,eltwise,reduce,individual_convolution,individual_dot')


def run_once(flags: str, extra: list[str]) -> float:
  env = dict(os.environ, XLA_FLAGS=flags)
  out = subprocess.run([sys.executable, '-m', 'benchmarks.train_step', *extra], env=env,
                       capture_output=True, text=True, check=True).stdout
  return float(re.search(r'\| ([\d.]+) steps/s', out).group(1))


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--flags', default=YNN)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--args', default='--steps=3 --repeats=3',
                 help='arguments for benchmarks.train_step (e.g. "--depth=56")')
  a = p.parse_args()
  ratios = []
  for i in range(a.rounds):
    base = run_once('', a.args.split())
    flagged = run_once(a.flags, a.args.split())
    ratios.append(flagged / base)
    print(f'round {i + 1}: default {base:.2f} steps/s, flagged {flagged:.2f} steps/s '
          f'({flagged / base:.3f}x)', flush=True)
  print(f'median flagged/default over {a.rounds} alternating rounds: '
        f'{statistics.median(ratios):.3f}x (min {min(ratios):.3f}, max {max(ratios):.3f}); '
        f'flags: {a.flags}')


if __name__ == '__main__':
  main()
