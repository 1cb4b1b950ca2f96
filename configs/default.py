"""The default experiment: CIFAR-style ResNet-20, BatchNorm, residual, on the embedded digits.

Every knob a sweep may turn is a key here (see configs/common.py). Override from the command
line, e.g.
  python train.py --config=configs/default.py --workdir=runs/ln_plain \
      --config.model.norm=layer --config.model.residual=False --config.model.depth=56
"""

from configs import common


def get_config(arg: str | None = None):
  """`arg` (after the colon, e.g. `configs/default.py:56`) sets the ResNet depth."""
  model = common.model('resnet', 'batch', True, width=16,
                       depth=int(arg) if arg else 20)   # 6n+2: 8, 14, 20, 32, 44, 56, 110
  # 500 steps of 128 = ~45 epochs of the 1437 training digits.
  return common.base(model, 'digits', batch_size=128, steps=500, learning_rate=0.1).lock()
