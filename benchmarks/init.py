"""A fresh run's initialization: one jitted program (training/experiment.py create_train_state)
against flax's eager `model.init` + `TrainState.create`, per family's default config.

  python -m benchmarks.init                     # default, lstm_lm, transformer_lm
  python -m benchmarks.init --configs=vit_digits

Each (config, way) runs in a fresh process with the compilation cache off (a compile cached
by the previous process would hide the cost), ways alternating; prints the first init's
seconds (compiles included) and a second seed's, and the ratios eager / jitted.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import subprocess
import sys
import time


def measure(way: str, config_name: str) -> tuple[float, float]:
  import jax   # noqa: PLC0415  (in the child only)
  from training import experiment   # noqa: PLC0415
  config = importlib.import_module(f'configs.{config_name}').get_config()
  config.compilation_cache = 'off'
  exp = experiment.build_experiment(config)
  if way == 'eager':
    exp.jitted_init = functools.partial(experiment.fresh_state, exp)
  seconds = []
  for seed in (0, 1):
    start = time.perf_counter()
    jax.block_until_ready(experiment.create_train_state(exp, jax.random.key(seed)).params)
    seconds.append(time.perf_counter() - start)
  return seconds[0], seconds[1]


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--configs', default='default,lstm_lm,transformer_lm')
  p.add_argument('--way', choices=('eager', 'jitted'), help=argparse.SUPPRESS)   # the child
  a = p.parse_args(argv)
  if a.way:
    print(*measure(a.way, a.configs))
    return
  for name in a.configs.split(','):
    got = {}
    for way in ('eager', 'jitted'):
      out = subprocess.run([sys.executable, '-m', 'benchmarks.init', f'--configs={name}',
                            f'--way={way}'], capture_output=True, text=True, check=True)
      got[way] = [float(v) for v in out.stdout.split()[-2:]]
    (e1, e2), (j1, j2) = got['eager'], got['jitted']
    print(f'{name}: first init eager {e1:.2f} s, jitted {j1:.2f} s ({e1 / j1:.1f}x); '
          f'second seed eager {e2 * 1e3:.0f} ms, jitted {j2 * 1e3:.0f} ms ({e2 / j2:.0f}x)',
          flush=True)


if __name__ == '__main__':
  main()
