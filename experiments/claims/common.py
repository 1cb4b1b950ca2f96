"""Helpers shared by the claim sweeps: the smoke variant, the seeds, and headless figures."""

import os

from experiments.sweeps import Sweep, product

SEEDS = [0, 1, 2]


def finish(config, axes, arg, smoke_axes):
  """`arg == 'smoke'`: 2 runs of 4 steps (so the sweep cannot rot); otherwise the full sweep."""
  if arg == 'smoke':
    config.num_train_steps = 4
    config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
    return Sweep(config, smoke_axes)
  return Sweep(config, axes + [product('seed', SEEDS)])


def subplots(*args, **kwargs):
  """matplotlib's `plt.subplots` on the headless Agg backend."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt.subplots(*args, **kwargs)


def save_figure(fig, directory: str, name: str) -> str:
  """Writes `fig` as directory/name (small PNG), closes it, returns the path."""
  import matplotlib.pyplot as plt
  path = os.path.join(directory, name)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def evaluated(directory: str, run: dict, split: str = 'test', batch_sizes=()) -> dict:
  """`training.evaluation.evaluate_workdir` of a finished run on `split` (eval mode, then train
  mode at each of `batch_sizes`), cached in its workdir as eval_<split>.json."""
  from training import evaluation
  from training import workdir as wd
  workdir = os.path.join(directory, run['name'])
  path = os.path.join(workdir, f'eval_{split}.json')
  if not os.path.exists(path):
    wd.write_json_atomic(path, evaluation.evaluate_workdir(workdir, list(batch_sizes),
                                                           split=split))
  return wd.read_json(path)
