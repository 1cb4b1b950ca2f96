"""Wu & He 2018: BatchNorm degrades at tiny batch sizes; GroupNorm and LayerNorm do not.

CPU scale: ResNet-20 on digits, batch {2, 4, 8, 32, 128} × norm {batch, group, layer}, the same
number of epochs (30) for every batch size, lr scaled linearly with the batch (0.1 × b / 128).
"""

from configs import default
from experiments.claims.common import finish
from experiments.sweeps import product, zipped

BATCHES = [2, 4, 8, 32, 128]
EPOCHS = 30
TRAIN_EXAMPLES = 1437


def get_sweep(arg=None):
  config = default.get_config()
  steps = [EPOCHS * TRAIN_EXAMPLES // b for b in BATCHES]
  axes = [zipped({'data.batch_size': BATCHES, 'num_train_steps': steps,
                  'optimizer.learning_rate': [0.1 * b / 128 for b in BATCHES]}),
          product('model.norm', ['batch', 'group', 'layer'])]
  smoke = [product('data.batch_size', [2]), product('model.norm', ['batch', 'group'])]
  return finish(config, axes, arg, smoke)
