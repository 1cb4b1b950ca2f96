"""Pieces every config shares: the norm keys, the data, the optimizer and the loop.

A config file composes these and sets its model; every key a sweep may turn is created here or
there, and the config is locked so a typo'd override fails.
"""

import ml_collections
from ml_collections import config_dict


def model(name: str, norm: str, residual: bool, width: int, **family_keys):
  """A model config: every shared key (the norms', the options', the speed fields') and the
  family's own keys, each at the default its declaration gives (models/spec.py), then
  `family_keys` (only keys the family declares). The defaults and meanings live with the
  declarations: `python -m models` prints them, and README's tables are made from them."""
  import models   # noqa: PLC0415 (importing flax; configs are read first)
  family = models.FAMILIES.get(name)
  m = ml_collections.ConfigDict()
  m.name, m.norm, m.residual, m.width = name, norm, residual, width
  for key in models.shared_keys():
    if key.name not in m:
      m[key.name] = key.default
  if family is None:   # an unknown name: refused by the config check with the valid names
    m.update(family_keys)
    return m
  own = {k.name: k.default for k in family.keys}
  unknown = set(family_keys) - set(own)
  if unknown:
    raise KeyError(f'{name} has no keys {sorted(unknown)}; its keys: {", ".join(own)}')
  m.update({**own, **family_keys})
  return m


def base(model_config, data_name: str, *, batch_size: int, steps: int, learning_rate: float,
         optimizer: str = 'sgd', schedule: str = 'cosine', weight_decay: float = 1e-4,
         log_every: int = 25, eval_every: int = 100) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config

  config.data = ml_collections.ConfigDict()
  config.data.name = data_name        # data.DATASETS
  config.data.batch_size = batch_size
  config.data.eval_batch_size = 128
  config.data.validation_examples = 0  # > 0: hold this many training examples out as a
  #                                      validation split (eval.py --split=validation)
  config.data.augment = 'none'        # none | crop_flip (images) | shift1 (±1 px, edge fill)
  config.data.pipeline = 'auto'       # auto | device | host | stream: where each step's batch
  #                                      is made (the same batches: data/pipeline.py); stream
  #                                      (Grain workers) for data too large to hold
  config.data.stream_workers = 4      # stream: Grain worker processes reading records
  config.data.variable_length = False  # sequences: cut each example to a random length, pad
  config.data.min_length = 8          # ... drawn uniformly from [min_length, full length]
  config.data.seq_length = 128        # text: tokens per example (LM windows; texts are cut)
  config.data.data_dir = config_dict.placeholder(str)   # TFDS / cache dir (None: default)
  config.data.download = False        # TFDS: allow download_and_prepare (needs internet)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = optimizer   # sgd | adam | adamw
  config.optimizer.learning_rate = learning_rate
  config.optimizer.momentum = 0.9     # sgd
  config.optimizer.nesterov = False   # sgd
  config.optimizer.b2 = 0.999         # adam, adamw: the second-moment decay (Transformers: 0.98)
  config.optimizer.weight_decay = weight_decay
  config.optimizer.weight_decay_on = 'kernels'  # kernels (Conv/Dense) | matrices | all
  config.optimizer.schedule = schedule  # constant | cosine | piecewise
  config.optimizer.warmup_steps = 0
  config.optimizer.boundaries = ()      # piecewise: steps at which lr *= decay_factor
  config.optimizer.decay_factor = 0.1
  config.optimizer.agc = 0.0            # > 0: adaptive gradient clipping at this ratio of unit-wise
  #                                       weight norm (Brock et al. 2021, NFNets: 0.01 at batch 4096)

  config.num_train_steps = steps
  config.log_every_steps = log_every
  config.eval_every_steps = eval_every
  config.checkpoint_every_steps = eval_every
  config.keep_checkpoints = 3
  config.diagnostics_every_steps = 0  # > 0: per-layer grad/activation statistics every N steps
  config.distributed = False          # multi-host: jax.distributed.initialize() at start
  config.transfer_guard = 'allow'     # after the first step: allow | log | disallow implicit
  #                                     host<->device transfers (jax.transfer_guard)
  config.matmul_precision = 'default'  # default | high | highest: float32 matmuls and convs
  #                                     (jax_default_matmul_precision). GPUs from Ampere on and
  #                                     TPUs compute `default` in TF32 / bfloat16 passes;
  #                                     `highest`: full float32 (the CPU always is)
  config.deterministic = False        # GPU: XLA's deterministic ops (training/platform.py);
  #                                     the CPU and TPUs are deterministic already
  config.compilation_cache = ''       # JAX's persistent cache: '' user cache dir | a dir | off
  config.platform = 'auto'            # auto: JAX's default backend; cpu: the CPU even where an
  #                                     accelerator is visible (training/platform.py)
  config.divergence_threshold = 100.0  # a train loss above this (or NaN/inf) stops the run
  return config
