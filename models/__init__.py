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
import jax

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
# Speed formulations: declarative fields, each `auto` | a concrete choice. `auto` turns one on
# only on the backend where it was measured to help (benchmarks/RESULTS.md has the numbers);
# `resolve_speed` decides, and the loop writes what it decided to the run's workdir.
CONV_WGRADS = ('auto', 'xla', 'chunked')     # ResNet conv weight gradients (models/conv.py)
FUSION_BARRIERS = ('auto', 'on', 'off')      # a barrier after each ResNet block (resnet.materialize)
RECURRENCES = ('auto', 'scan', 'custom_vjp')  # the LSTM's loop over time (lstm.recurrence)
FOLD_INPUT = ('auto', 'on', 'off')           # the LSTM's first projection (lstm.project_source)
SPEED_KEYS = (('conv_wgrad', CONV_WGRADS), ('fusion_barriers', FUSION_BARRIERS),
              ('recurrence', RECURRENCES), ('fold_input', FOLD_INPUT))


def resolve_speed(model_config, backend: str, devices: int) -> dict:
  """{key: concrete choice} for each speed field of `model_config`'s family on `backend` with
  `devices`.

  conv_wgrad: chunked for the CIFAR ResNets on one CPU device (faster there; with several
    devices the chunks would cut across the batch's sharding), XLA's own elsewhere.
  fusion_barriers: on on CPU (without them XLA:CPU's backward was quadratic in depth); off
    elsewhere until measured (on a GPU the conditional may cost a host round trip per block).
  recurrence, fold_input (the LSTM): custom_vjp and on on CPU (measured faster there:
    benchmarks/RESULTS.md); scan and off elsewhere until measured.
  """
  cpu = backend == 'cpu'
  out = {}
  if model_config.name in RESNETS:
    wgrad = model_config.get('conv_wgrad', 'auto')
    if wgrad == 'auto':
      wgrad = 'chunked' if model_config.name == 'resnet' and cpu and devices == 1 else 'xla'
    barriers = model_config.get('fusion_barriers', 'auto')
    out = {'conv_wgrad': wgrad, 'fusion_barriers': barriers if barriers != 'auto' else
           'on' if cpu else 'off'}
  if model_config.name == 'lstm':
    for key, fast, slow in (('recurrence', 'custom_vjp', 'scan'), ('fold_input', 'on', 'off')):
      value = model_config.get(key, 'auto')
      out[key] = (fast if cpu else slow) if value == 'auto' else value
  return out


RESNETS = ('resnet', 'resnet_imagenet')
# options that reparameterize the ResNets' convolution kernels (at most one at a time)
KERNEL_OPTIONS = ('weight_std',) + resnet.REPARAMS
# boolean model options that change the model around any norm (each refused with its reason
# where it does not apply): the invariant tests switch each on across the configuration space.
# (model.fixup and model.nf_alpha are not here: they replace the norm, need norm=none, and make
# the head start at 0 or change the whole net; they have their own tests.)
OPTIONS = ('skipinit',) + KERNEL_OPTIONS + ('qk_norm', 'deepnorm')


def check_model_names(model_config) -> None:
  """The model and norm names, checked without building anything."""
  if model_config.name not in MODELS:
    raise ConfigError(f'unknown model {model_config.name!r}; valid models: {", ".join(MODELS)}')
  norms.check_norm_name(model_config.norm)
  dtype = model_config.get('compute_dtype', 'float32')
  if dtype not in COMPUTE_DTYPES:
    raise ConfigError(f'unknown model.compute_dtype {dtype!r}; valid: {", ".join(COMPUTE_DTYPES)}')
  for key, valid in SPEED_KEYS:
    value = model_config.get(key, 'auto')
    if value not in valid:
      raise ConfigError(f'unknown model.{key} {value!r}; valid: {", ".join(valid)}')
  if model_config.get('skipinit', False) and not model_config.residual:
    raise ConfigError('model.skipinit gates residual branches, and residual=False has none '
                      '(every block would output 0 at init); use residual=True')
  for key, what in (('fixup', 'Fixup initialization (Zhang et al. 2019)'),
                    ('nf_alpha', 'a Normalizer-Free ResNet (Brock et al. 2021)')):
    if not model_config.get(key, False):
      continue
    if model_config.name not in RESNETS:
      raise ConfigError(f'model.{key} makes {what}: the ResNets only; {model_config.name} '
                        'has none')
    if model_config.norm != 'none' or not model_config.residual:
      raise ConfigError(f'model.{key} makes {what}, which replaces normalization in a residual '
                        f'net: it needs model.norm=none and residual=True (got '
                        f'norm={model_config.norm}, residual={model_config.residual})')
    others = [k for k in ('fixup', 'nf_alpha', 'skipinit') + KERNEL_OPTIONS
              if k != key and model_config.get(k, False)]
    if others:
      raise ConfigError(f'model.{key} makes {what}, with its own branch scalars and '
                        f'initialization: combine it with none of {", ".join(others)}')
  kernel = [k for k in KERNEL_OPTIONS if model_config.get(k, False)]
  if kernel and model_config.name not in RESNETS:
    raise ConfigError(f'model.{kernel[0]} reparameterizes convolution kernels: the ResNets only '
                      f'({", ".join(RESNETS)}); {model_config.name} has none')
  if len(kernel) > 1:
    raise ConfigError(f'model.{kernel[0]} and model.{kernel[1]} both reparameterize the '
                      'convolution kernels: choose one')
  if model_config.get('deepnorm', False) and model_config.name != 'transformer':
    raise ConfigError(f'model.deepnorm is a Transformer scheme (Wang et al. 2022); '
                      f'{model_config.name} has no post-LN sub-layers')
  if model_config.get('qk_norm', False) and model_config.name != 'transformer':
    raise ConfigError(f'model.qk_norm normalizes attention queries and keys: the transformer '
                      f'only; {model_config.name} has no attention')
  if dtype != 'float32' and model_config.name not in ('resnet', 'resnet_imagenet'):
    raise ConfigError(f'model.compute_dtype={dtype} is implemented for the ResNets only; '
                      f'{model_config.name} computes in float32')


def depends_on_devices(model_config) -> bool:
  """Whether the function the model computes in training depends on how many devices the batch
  is split over (per-device BatchNorm: one statistics group per device). Such a run resumes
  only on as many devices as it started on."""
  return (norms.NORMS[model_config.norm].running_stats
          and model_config.get('bn_scope') == 'per_device')


def build_model(model_config, dataset, *, devices: int = 1) -> nn.Module:
  """Validates the names in `model_config` and returns the module (no parameters yet).
  `devices`: how many the batch is split over (per-device BatchNorm's number of groups).
  Speed fields still `auto` are resolved for the default backend (`resolve_speed`)."""
  check_model_names(model_config)
  resolved = resolve_speed(model_config, jax.default_backend(), devices)
  model_config = model_config.copy_and_resolve_references()
  with model_config.unlocked():
    model_config.update(resolved)
  return MODELS[model_config.name](model_config, dataset, devices=devices)
