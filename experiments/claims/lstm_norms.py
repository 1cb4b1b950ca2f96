"""Ba et al. 2016: layer-normalized LSTMs train faster than plain LSTMs (and recurrent BN,
Cooijmans et al. 2016). mnist1d, fixed and variable length, norm {none, layer, batch}."""

from configs import lstm_mnist1d
from experiments.claims.common import finish
from experiments.sweeps import product


def get_sweep(arg=None):
  config = lstm_mnist1d.get_config()
  axes = [product('model.norm', ['none', 'layer', 'batch']),
          product('data.variable_length', [False, True])]
  smoke = [product('model.norm', ['layer', 'batch']), product('data.variable_length', [True])]
  if arg == 'smoke':
    config.model.width = 16
  return finish(config, axes, arg, smoke)
