"""What a config describes: validated in one pass, then built, with nothing written to disk.

`check_config` is the one validation pass (train.py through the loop, the sweep's --dry_run and
eval all call it): every name and value, and the batch against the devices it is split over.
`build_experiment` loads the data, resolves the speed formulations for this backend and builds
the model, the task and the optimizer, once each.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state
from jax.sharding import Mesh

import data as data_lib
import models
from data import pipeline
from errors import ConfigError
from training import optim, parallel, platform, tasks
from training import workdir as wd

# The range of every numeric key outside the model a config may hold (a key a config lacks is
# skipped): (lowest, highest, whether the lowest itself is allowed). The model's keys are
# checked against their declarations (models.check_model_config). Checked before anything is
# loaded.
RANGES = {
    'seed': (0, None, True),
    'num_train_steps': (0, None, False),
    'log_every_steps': (0, None, False),
    'eval_every_steps': (0, None, False),
    'checkpoint_every_steps': (0, None, False),
    'keep_checkpoints': (0, None, False),
    'diagnostics_every_steps': (0, None, True),     # 0: off
    'divergence_threshold': (0, None, False),
    'data.batch_size': (0, None, False),
    'data.eval_batch_size': (0, None, False),
    'data.seq_length': (0, None, False),
    'data.min_length': (0, None, False),
    'data.validation_examples': (0, None, True),     # 0: none held out
    'data.stream_workers': (0, None, True),          # 0: read in the training process
    'optimizer.agc': (0, None, True),                # 0: off
    'optimizer.b2': (0, 1, False),
    'optimizer.learning_rate': (0, None, True),
    'optimizer.warmup_steps': (0, None, True),
    'optimizer.momentum': (0, 1, True),
    'optimizer.weight_decay': (0, None, True),
    'optimizer.decay_factor': (0, None, True),
}


TRANSFER_GUARDS = ('allow', 'log', 'disallow')
MATMUL_PRECISIONS = ('default', 'high', 'highest')


def check_ranges(config) -> None:
  """Every numeric key of RANGES that `config` holds, inside its range (one line if not)."""
  flat = wd.flatten(wd.config_to_dict(config))
  for key, (low, high, low_ok) in RANGES.items():
    value = flat.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    if not (value >= low if low_ok else value > low) or (high is not None and value > high):
      allowed = (f'{">=" if low_ok else ">"} {low}' +
                 (f' and <= {high}' if high is not None else ''))
      raise ConfigError(f'{key} must be {allowed}; got {value}')


class TrainState(train_state.TrainState):
  batch_stats: Any = None  # BatchNorm running averages ({} when the model has none)


@dataclasses.dataclass
class Experiment:
  """Everything a config builds, with no side effects on disk."""
  config: ml_collections.ConfigDict   # as given (speed choices may read `auto`)
  dataset: data_lib.Dataset
  model: nn.Module
  task: Callable
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: Mesh
  resolved: dict   # what `auto` became here, and where: written to the workdir
  fixed: tuple = ()   # keys of `resolved` a resumed run must match (they change the function)
  # create_train_state's jitted init, compiled once per experiment (every seed reuses it)
  jitted_init: Callable | None = dataclasses.field(default=None, init=False, repr=False,
                                                   compare=False)

  def describe(self, params, seeds: list[int], start: int) -> str:
    c, n_params = self.config, sum(x.size for x in jax.tree.leaves(params))
    return (f'{c.model.name} norm={c.model.norm} residual={c.model.residual} | '
            f'{n_params / 1e6:.3f}M parameters | {c.data.name}: {len(self.dataset.train)} '
            f'train / {len(self.dataset.test)} test | seeds {seeds} | steps {start} -> '
            f'{c.num_train_steps} | {self.resolved["devices"]} x {self.resolved["backend"]} '
            f'({self.resolved["device_kind"]})')


def check_config(config, mesh: Mesh) -> None:
  """Every name and value in `config`, and its batch against `mesh`, before any data is loaded
  or file written. (Combinations that depend on the data, such as a norm a model refuses, are
  the model builders' to refuse: `build_experiment`.) Values out of range first: an option
  set to a negative number is refused for its range, not for what turning it on needs."""
  check_ranges(config)
  data_lib.check_dataset_name(config.data.name)
  models.check_model_config(config.model)
  optim.check_config(config.optimizer)
  if config.matmul_precision not in MATMUL_PRECISIONS:
    raise ConfigError(f'unknown matmul_precision {config.matmul_precision!r}; valid: '
                      f'{", ".join(MATMUL_PRECISIONS)}')
  if config.transfer_guard not in TRANSFER_GUARDS:
    raise ConfigError(f'unknown transfer_guard {config.transfer_guard!r}; valid: '
                      f'{", ".join(TRANSFER_GUARDS)}')
  pipeline.check(config.data.augment, config.data.pipeline)
  parallel.check_batch(config.data.batch_size, mesh)
  m = config.model
  if m.bn_scope == 'ghost' and config.data.batch_size % max(m.bn_ghost_size, 1):
    raise ConfigError(f'model.bn_scope ghost with bn_ghost_size {m.bn_ghost_size} needs a '
                      f'data.batch_size divisible by it; got {config.data.batch_size}')


def build_experiment(config, mesh: Mesh | None = None,
                     dataset: data_lib.Dataset | None = None) -> Experiment:
  """Everything `config` describes on `mesh` (all devices when None); `dataset` replaces
  loading config.data (benchmarks)."""
  platform.deterministic(config.deterministic)   # before the backend starts
  platform.check(config.platform, jax.default_backend())
  platform.compilation_cache(config.compilation_cache)
  mesh = mesh if mesh is not None else parallel.data_mesh(platform.devices(config.platform))
  check_config(config, mesh)
  # every float32 matmul and conv compiled from here on (part of JAX's compile cache keys)
  jax.config.update('jax_default_matmul_precision',
                    None if config.matmul_precision == 'default' else config.matmul_precision)
  if dataset is None:
    dataset = data_lib.load_dataset(config.data, config.seed)
  where = platform.describe(mesh)
  resolved = models.resolve_speed(config.model, where['backend'], mesh.size)
  model = models.build(config.model, dataset, devices=mesh.size, speed=resolved)   # checked
  schedule = optim.make_schedule(config.optimizer, config.num_train_steps)
  tx = optim.make_optimizer(config.optimizer, schedule)
  return Experiment(config, dataset, model, tasks.get_task(dataset.task), tx, schedule, mesh,
                    {**{f'model.{k}': v for k, v in resolved.items()}, **where,
                     'data.pipeline': pipeline.resolve(config.data.pipeline, where['backend'],
                                                       dataset.streamed),
                     'matmul_precision': config.matmul_precision,
                     'deterministic': config.deterministic},
                    ('devices',) if models.depends_on_devices(config.model) else ())


def named_key(root: jax.Array, name: str) -> jax.Array:
  """Splits the root key by name, so adding a new random consumer changes no other stream."""
  return jax.random.fold_in(root, zlib.crc32(name.encode()))


def fresh_state(exp: Experiment, root_key: jax.Array) -> TrainState:
  """Parameters, running averages and optimizer state of a fresh run (traced or eager)."""
  dtype = jnp.int32 if exp.dataset.kind == 'tokens' else jnp.float32
  dummy = jnp.zeros((1, *exp.dataset.input_shape), dtype)
  variables = exp.model.init(named_key(root_key, 'params'), dummy, train=False)
  return TrainState.create(apply_fn=exp.model.apply, params=variables['params'],
                           batch_stats=variables.get('batch_stats', {}), tx=exp.tx)


def create_train_state(exp: Experiment, root_key: jax.Array) -> TrainState:
  """`fresh_state` as one jitted program, compiled once per experiment. Eagerly, init dispatches
  and compiles every initializer's ops one by one: on the 2-core CPU 1.5-2.8x slower the first
  time and 5-44x for each further seed (`python -m benchmarks.init`); the values agree to 1 ulp
  (XLA fuses the initializers' arithmetic)."""
  if exp.jitted_init is None:
    exp.jitted_init = jax.jit(functools.partial(fresh_state, exp))
  return exp.jitted_init(root_key)
