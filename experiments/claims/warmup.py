"""Xiong et al. 2020: post-LN Transformers need learning-rate warm-up; pre-LN do not.
Transformer on mnist1d, norm position {pre, post} × warm-up {0, 300} × lr {1e-3, 3e-3}."""

from configs import transformer_mnist1d
from experiments.claims.common import finish
from experiments.sweeps import product


def get_sweep(arg=None):
  config = transformer_mnist1d.get_config()
  config.num_train_steps = 1500
  axes = [product('model.norm_position', ['pre', 'post']),
          product('optimizer.warmup_steps', [0, 300]),
          product('optimizer.learning_rate', [1e-3, 3e-3])]
  smoke = [product('model.norm_position', ['pre', 'post']), product('optimizer.warmup_steps', [0])]
  if arg == 'smoke':
    config.model.width, config.model.num_layers = 16, 1
  return finish(config, axes, arg, smoke)
