"""What the persistent compilation cache saves a second identical run (a sweep's next seed, a
resumed run): `python train.py` of a config, each run in a fresh process, with the cache off,
with an empty cache (the run fills it) and with the filled one.

  python -m benchmarks.compile_cache                                  # the default experiment
  python -m benchmarks.compile_cache --config=configs/transformer_lm.py --steps=10

Rounds alternate (off, empty, filled; off, empty, filled; ...); prints each way's median wall
time of the whole process (start, data, compile, --steps steps, final eval, checkpoint) and
the seconds the filled cache saves against the cache off: the compile time it loaded instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

from benchmarks.packed import process_seconds


def run_seconds(config: str, steps: int, workdir: str, cache: str) -> float:
  return process_seconds(
      [sys.executable, 'train.py', f'--config={config}', f'--workdir={workdir}',
       f'--config.num_train_steps={steps}', f'--config.eval_every_steps={steps}',
       f'--config.checkpoint_every_steps={steps}', f'--config.compilation_cache={cache}'])


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/default.py')
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--repeats', type=int, default=2)
  a = p.parse_args(argv)
  times = {'off': [], 'empty': [], 'filled': []}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(a.repeats):
      cache = os.path.join(tmp, f'cache{r}')
      for way, setting in (('off', 'off'), ('empty', cache), ('filled', cache)):
        times[way].append(run_seconds(a.config, a.steps, os.path.join(tmp, f'{way}{r}'), setting))
        print(f'round {r}: cache {way} {times[way][-1]:.1f} s', flush=True)
  off, empty, filled = (statistics.median(times[k]) for k in times)
  print(f'{a.config}, {a.steps} steps: cache off {off:.1f} s, empty {empty:.1f} s, filled '
        f'{filled:.1f} s: the filled cache saves {off - filled:.1f} s of {off:.1f} s')


if __name__ == '__main__':
  main()
