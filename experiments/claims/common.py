"""Helpers shared by the claim sweeps: the smoke variant and the seeds."""

from experiments.sweeps import Sweep, product

SEEDS = [0, 1, 2]


def finish(config, axes, arg, smoke_axes):
  """`arg == 'smoke'`: 2 runs of 4 steps (so the sweep cannot rot); otherwise the full sweep."""
  if arg == 'smoke':
    config.num_train_steps = 4
    config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
    return Sweep(config, smoke_axes)
  return Sweep(config, axes + [product('seed', SEEDS)])
