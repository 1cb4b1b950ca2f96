"""He et al. 2016, CIFAR-10: SGD momentum 0.9, lr 0.1, weight decay 1e-4, batch 128, lr /10 at
32k and 48k of 64k steps, 4-pixel-pad random crops and horizontal flips.

`--config=configs/resnet_cifar10.py:56` picks the depth (6n+2; default 20). Needs the TFDS
`cifar10` dataset prepared once (see README: it needs internet and TensorFlow for that step).
"""

from configs import default


def get_config(arg: str | None = None):
  config = default.get_config(arg)
  config.data.name = 'cifar10'
  config.data.augment = 'crop_flip'
  config.data.download = True
  config.optimizer.schedule = 'piecewise'
  config.optimizer.boundaries = (32000, 48000)
  config.num_train_steps = 64000
  config.log_every_steps = 100
  config.eval_every_steps = 2000
  config.checkpoint_every_steps = 2000
  return config
