"""A tiny sweep for tests and a first look: ResNet-8 on digits, norm x residual x seed.

  python -m experiments.sweep --sweep=experiments/smoke.py --dir=sweeps/smoke
  python -m experiments.report sweeps/smoke
"""

from configs import default
from experiments.sweeps import Sweep, product


def get_sweep(arg=None):
  config = default.get_config('8')
  config.model.width = 8
  config.data.batch_size = 32
  config.num_train_steps = int(arg) if arg else 20
  config.log_every_steps = 5
  config.eval_every_steps = 10
  config.checkpoint_every_steps = 10
  return Sweep(config, [product('model.norm', ['batch', 'layer']),
                        product('model.residual', [True, False]),
                        product('seed', [0, 1])])
