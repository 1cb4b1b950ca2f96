"""The model registry: a model name -> a builder `build(model_config, dataset) -> nn.Module`.

The builder reads what it needs of the dataset (number of classes, kind of inputs, vocabulary,
task) and refuses combinations that cannot work, with a clear message.

Every model is a pure Flax module called as `model.apply(variables, inputs, train=..., mask=...)`
that returns logits. The train loop only ever calls `build_model`; it never branches on the
family. To add a family: write its module file and add one line to MODELS.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from errors import ConfigError
from models import lstm, norms, resnet, transformer

MODELS: dict[str, Callable[..., nn.Module]] = {
    'resnet': resnet.build_cifar,             # CIFAR-style, depth 6n+2
    'resnet_imagenet': resnet.build_imagenet,  # ResNet-18/34/50/101/152
    'lstm': lstm.build,                       # stacked LSTM: classifier or LM
    'transformer': transformer.build,         # encoder classifier or decoder-only LM
}


# Compute precision of convolutions and matmuls; parameters, norm statistics and the loss stay
# float32 (mixed precision with float32 master weights).
COMPUTE_DTYPES = ('float32', 'bfloat16')
# How the ResNets compute convolution weight gradients: XLA's own, summed over chunks of images
# (models/conv.py: faster on CPU), or auto: chunked for the CIFAR ResNets on a single CPU
# device, XLA's elsewhere.
CONV_WGRADS = ('auto', 'xla', 'chunked')


def check_model_names(model_config) -> None:
  """The model and norm names, checked without building anything."""
  if model_config.name not in MODELS:
    raise ConfigError(f'unknown model {model_config.name!r}; valid models: {", ".join(MODELS)}')
  norms.check_norm_name(model_config.norm)
  dtype = model_config.get('compute_dtype', 'float32')
  if dtype not in COMPUTE_DTYPES:
    raise ConfigError(f'unknown model.compute_dtype {dtype!r}; valid: {", ".join(COMPUTE_DTYPES)}')
  wgrad = model_config.get('conv_wgrad', 'auto')
  if wgrad not in CONV_WGRADS:
    raise ConfigError(f'unknown model.conv_wgrad {wgrad!r}; valid: {", ".join(CONV_WGRADS)}')
  if dtype != 'float32' and model_config.name not in ('resnet', 'resnet_imagenet'):
    raise ConfigError(f'model.compute_dtype={dtype} is implemented for the ResNets only; '
                      f'{model_config.name} computes in float32')


def build_model(model_config, dataset) -> nn.Module:
  """Validates the names in `model_config` and returns the module (no parameters yet)."""
  check_model_names(model_config)
  return MODELS[model_config.name](model_config, dataset)
