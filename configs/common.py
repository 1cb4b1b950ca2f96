"""Pieces every config shares: the norm keys, the data, the optimizer and the loop.

A config file composes these and sets its model; every key a sweep may turn is created here or
there, and the config is locked so a typo'd override fails.
"""

import ml_collections
from ml_collections import config_dict


def model(name: str, norm: str, residual: bool, width: int, **family_keys):
  m = ml_collections.ConfigDict()
  m.name = name                 # models.MODELS: resnet, resnet_imagenet, lstm, transformer
  m.norm = norm                 # models.norms.NORMS: batch batch_renorm layer group rms instance dyt none
  m.residual = residual         # False: no skip connections
  m.width = width               # ResNet: first-stage filters; LSTM: hidden size; Transformer: d_model
  m.norm_groups = 8             # group norm: number of groups (capped at the width)
  m.bn_momentum = 0.9           # running average: ra <- m * ra + (1 - m) * batch
  m.norm_epsilon = 1e-5
  m.bn_scope = 'global'         # batch norm statistics: global | per_device | ghost
  m.bn_ghost_size = 0           # ghost: examples per statistics group
  m.renorm_rmax = 3.0           # batch_renorm (Ioffe 2017): limits of r and d, reached after
  m.renorm_dmax = 5.0           # ... renorm_start steps of plain BatchNorm and a linear ramp of
  m.renorm_start = 5000         # ... renorm_ramp steps (the paper: 5k, then to 40k / 25k)
  m.renorm_ramp = 35000
  m.dyt_alpha = 0.5             # dyt: initial alpha of tanh(alpha * x) (Zhu et al. 2025: 0.5)
  m.skipinit = False            # a learnable scalar, init 0, on each residual branch: SkipInit
  #                               (ResNets, De & Smith 2020) / ReZero (Transformers, Bachlechner
  #                               et al. 2020)
  m.deepnorm = False            # Transformers, post-LN: DeepNorm (Wang et al. 2022): N(alpha x + f(x)),
  #                               alpha = (2N)^(1/4), value/out/MLP init times (8N)^(-1/4)
  m.qk_norm = False             # Transformers: LayerNorm on queries and keys per head (QK-norm;
  #                               flax MultiHeadDotProductAttention(normalize_qk=True))
  m.nf_alpha = 0.0              # ResNets with norm=none: > 0 makes a Normalizer-Free ResNet (Brock,
  #                               De & Smith 2021: scaled WS, h + alpha * f(h / beta); paper: 0.2)
  m.fixup = False               # ResNets with norm=none: Fixup initialization (Zhang et al. 2019)
  m.weight_std = False          # ResNets: weight-standardized convs (Qiao et al. 2019; BiT's StdConv)
  m.weight_norm = False         # ResNets: convs wrapped in flax's WeightNorm (Salimans & Kingma 2016)
  m.spectral_norm = False       # ResNets: convs wrapped in flax's SpectralNorm (Miyato et al. 2018)
  m.compute_dtype = 'float32'   # bfloat16: convs/matmuls in bf16, params + norm stats float32 (ResNets)
  # speed formulations: auto = on only where measured to help (models.resolve_speed; the run's
  # resolved.json records what ran)
  m.conv_wgrad = 'auto'         # ResNet conv weight grads: xla | chunked (models/conv.py) | auto
  m.fusion_barriers = 'auto'    # ResNet: a fusion barrier after each block: on | off | auto
  m.recurrence = 'auto'         # LSTM loop over time: scan (nn.scan) | custom_vjp (lstm.recurrence) | auto
  m.fold_input = 'auto'         # LSTM: first projection re-associated with the embedding: on | off | auto
  m.update(family_keys)
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
  config.divergence_threshold = 100.0  # a train loss above this (or NaN/inf) stops the run
  return config
