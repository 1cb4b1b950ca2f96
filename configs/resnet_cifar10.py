"""He et al. 2016, CIFAR-10: SGD momentum 0.9, lr 0.1, weight decay 1e-4, batch 128, lr /10 at
32k and 48k of 64k steps, 4-pixel-pad random crops and horizontal flips.

`--config=configs/resnet_cifar10.py:56` picks the depth (6n+2; default 20). Needs the TFDS
`cifar10` dataset prepared once (see README: it needs internet and TensorFlow for that step).
"""

from configs import common


def get_config(arg: str | None = None):
  model = common.model('resnet', 'batch', True, width=16, depth=int(arg) if arg else 20)
  config = common.base(model, 'cifar10', batch_size=128, steps=64000, learning_rate=0.1,
                       schedule='piecewise', log_every=100, eval_every=2000)
  config.data.augment = 'crop_flip'
  config.data.download = False   # the first run on a machine with internet: --config.data.download=True
  config.optimizer.boundaries = (32000, 48000)
  return config.lock()
