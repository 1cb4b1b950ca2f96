"""He et al. 2016: deep plain nets train worse than shallow ones; residual nets do not degrade.

CPU scale: ResNets of depth {8, 20, 56} on digits, 300 steps, × residual × norm {batch, none},
3 seeds. (Full scale: configs/resnet_cifar10.py with the same axes.)
"""

from configs import default
from experiments.claims.common import finish
from experiments.sweeps import product


def get_sweep(arg=None):
  config = default.get_config()
  config.num_train_steps = 300
  config.eval_every_steps = config.checkpoint_every_steps = 100
  config.diagnostics_every_steps = 100
  axes = [product('model.depth', [8, 20, 56]), product('model.residual', [True, False]),
          product('model.norm', ['batch', 'none'])]
  smoke = [product('model.depth', [8]), product('model.residual', [True, False])]
  return finish(config, axes, arg, smoke)
