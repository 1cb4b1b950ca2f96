"""The default experiment: CIFAR-style ResNet-20, BatchNorm, residual, on the embedded digits.

Every knob a sweep may turn is a key here. Override from the command line, e.g.
  python train.py --config=configs/default.py --workdir=runs/ln_plain \
      --config.model.norm=layer --config.model.residual=False --config.model.depth=56
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` (after the colon, e.g. `configs/default.py:56`) sets the ResNet depth."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = 'resnet'        # models.MODELS: resnet (CIFAR, 6n+2), resnet_imagenet
  config.model.depth = int(arg) if arg else 20
  config.model.width = 16             # filters of the first stage (x2, x4 in later stages)
  config.model.norm = 'batch'         # models.norms.NORMS: batch layer group rms instance none
  config.model.residual = True        # False: He et al.'s plain net (same blocks, no skip)
  config.model.norm_groups = 8        # group norm: number of groups (capped at the width)
  config.model.bn_momentum = 0.9      # running average: ra <- m * ra + (1 - m) * batch
  config.model.norm_epsilon = 1e-5

  config.data = ml_collections.ConfigDict()
  config.data.name = 'digits'         # data.DATASETS: digits, cifar10, mnist, fashion_mnist
  config.data.batch_size = 128
  config.data.eval_batch_size = 128
  config.data.augment = 'none'        # none | crop_flip
  config.data.data_dir = config_dict.placeholder(str)   # TFDS data_dir (None: TFDS default)
  config.data.download = False        # TFDS: allow download_and_prepare (needs internet)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'sgd'       # sgd | adam | adamw
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 1e-4  # on kernels only (not biases or norm parameters)
  config.optimizer.schedule = 'cosine'  # constant | cosine | piecewise
  config.optimizer.warmup_steps = 0
  config.optimizer.boundaries = ()      # piecewise: steps at which lr *= decay_factor
  config.optimizer.decay_factor = 0.1

  config.num_train_steps = 500        # ~45 epochs of the 1437 training digits
  config.log_every_steps = 25
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 100
  config.keep_checkpoints = 3
  return config.lock()
