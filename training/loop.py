"""The one train loop: config -> data, model, task, optimizer -> jit train step -> workdir.

It serves every model family: a family contributes a Flax module (models.MODELS) and its data a
task (training.tasks); nothing below branches on either. `train_step` is a pure function.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
import zlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

import data as data_lib
import models
from data import pipeline
from errors import ConfigError
from training import checkpoints as ckpt_lib
from training import optim, tasks
from training import workdir as wd
from training.metric_writer import MetricWriter

# Keys that may differ when resuming a workdir: they change logging and checkpointing only.
RESUMABLE_KEYS = ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
                  'keep_checkpoints')


class TrainState(train_state.TrainState):
  batch_stats: Any = None  # BatchNorm running averages ({} when the model has none)


@dataclasses.dataclass
class Experiment:
  """Everything a config builds, with no side effects on disk."""
  config: ml_collections.ConfigDict
  dataset: data_lib.Dataset
  model: nn.Module
  task: Callable
  tx: optax.GradientTransformation
  schedule: optax.Schedule


def check_config(config) -> None:
  """Cheap checks of every name in the config, before any data is loaded or file written."""
  data_lib.check_dataset_name(config.data.name)
  if config.model.name not in models.MODELS:
    raise ConfigError(f'unknown model {config.model.name!r}; valid models: {", ".join(models.MODELS)}')
  models.norms.check_norm_name(config.model.norm)
  optim.make_optimizer(config.optimizer, config.num_train_steps)
  if config.data.augment not in pipeline.AUGMENTATIONS:
    raise ConfigError(f'unknown augmentation {config.data.augment!r}; '
                      f'valid: {", ".join(pipeline.AUGMENTATIONS)}')
  for key in ('num_train_steps', 'log_every_steps', 'eval_every_steps',
              'checkpoint_every_steps', 'keep_checkpoints'):
    if config[key] <= 0:
      raise ConfigError(f'{key} must be positive; got {config[key]}')


def build_experiment(config) -> Experiment:
  check_config(config)
  dataset = data_lib.load_dataset(config.data, config.seed)
  model = models.build_model(config.model, dataset)
  schedule = optim.make_schedule(config.optimizer, config.num_train_steps)
  tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
  return Experiment(config, dataset, model, tasks.get_task(dataset.task), tx, schedule)


def named_key(root: jax.Array, name: str) -> jax.Array:
  """Splits the root key by name, so adding a new random consumer changes no other stream."""
  return jax.random.fold_in(root, zlib.crc32(name.encode()))


def create_train_state(exp: Experiment, root_key: jax.Array) -> TrainState:
  dtype = jnp.int32 if exp.dataset.kind == 'tokens' else jnp.float32
  dummy = jnp.zeros((1, *exp.dataset.input_shape), dtype)
  variables = exp.model.init(named_key(root_key, 'params'), dummy, train=False)
  return TrainState.create(apply_fn=exp.model.apply, params=variables['params'],
                           batch_stats=variables.get('batch_stats', {}), tx=exp.tx)


def _variables(state: TrainState) -> dict:
  return {'params': state.params, 'batch_stats': state.batch_stats}


def make_train_step(model: nn.Module, task: Callable):
  """Returns the jitted, pure `train_step(state, batch) -> (state, summed metrics)`."""

  def train_step(state: TrainState, batch: dict):
    def loss_fn(params):
      logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                    batch['inputs'], train=True, mask=batch.get('mask'),
                                    mutable=['batch_stats'])
      loss, sums = task(logits, batch)
      return loss, (sums, updates)

    (_, (sums, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads,
                                  batch_stats=updates.get('batch_stats', state.batch_stats))
    return state, sums

  return jax.jit(train_step, donate_argnums=0)


def make_eval_step(model: nn.Module, task: Callable):
  """Returns jitted `eval_step(variables, batch, batch_stats_mode) -> summed metrics`.

  batch_stats_mode=False: the normal eval mode (BatchNorm uses its running averages).
  batch_stats_mode=True: train-mode normalization (BatchNorm uses this batch's statistics);
  the running averages are left unchanged.
  """

  def eval_step(variables, batch, batch_stats_mode: bool):
    logits, _ = model.apply(variables, batch['inputs'], train=batch_stats_mode,
                            mask=batch.get('mask'), mutable=['batch_stats'])
    return task(logits, batch)[1]

  return jax.jit(eval_step, static_argnames='batch_stats_mode')


def evaluate(eval_step, variables, split, batch_size: int, *, batch_stats_mode: bool = False,
             max_examples: int | None = None) -> dict[str, float]:
  totals = None
  for batch in pipeline.eval_batches(split, batch_size, max_examples):
    sums = eval_step(variables, batch, batch_stats_mode)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return tasks.summarize(jax.device_get(totals))


def _checkpoint_tree(state: TrainState, root_key: jax.Array) -> dict:
  return {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state, 'rng': jax.random.key_data(root_key)}


def restore_state(state: TrainState, tree: dict) -> TrainState:
  return state.replace(step=tree['step'], params=tree['params'],
                       batch_stats=tree['batch_stats'], opt_state=tree['opt_state'])


def claim_workdir(config, workdir: str) -> dict | None:
  """Checks `workdir` against `config` without writing. Returns the existing status (None for a
  new workdir). A different config stops with the differing keys."""
  old = wd.read_json(os.path.join(workdir, wd.CONFIG_FILE))
  if old is None:
    if os.path.isdir(workdir) and os.listdir(workdir):
      raise ConfigError(f'{workdir} is not empty and holds no run ({wd.CONFIG_FILE} missing); '
                        'choose a new --workdir')
    return None
  diff = {k: v for k, v in wd.config_diff(old, wd.config_to_dict(config)).items()
          if k not in RESUMABLE_KEYS}
  if diff:
    shown = '; '.join(f'{k}: {a!r} -> {b!r}' for k, b_a in diff.items() for a, b in [b_a])
    raise ConfigError(f'{workdir} holds a run with a different config ({shown}); '
                      'use a new --workdir')
  return wd.read_status(workdir) or {'state': 'running'}


class _Preemption:
  """SIGTERM (what schedulers send before preemption) sets a flag the loop checks each step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# Config keys shown as hyperparameters in TensorBoard's HParams dashboard for a run outside a
# sweep (a sweep shows its own axes instead).
DEFAULT_HPARAMS = ('model.name', 'model.norm', 'model.residual', 'model.depth', 'model.width',
                   'model.norm_position', 'data.name', 'data.batch_size', 'data.variable_length',
                   'optimizer.name', 'optimizer.learning_rate', 'seed')
HPARAM_METRICS = ['eval/accuracy', 'eval/loss', 'train/loss']


def _default_hparams(config) -> dict:
  flat = wd.flatten(wd.config_to_dict(config))
  return {k: flat[k] for k in DEFAULT_HPARAMS if k in flat}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       hparams: dict | None = None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns its status dict (final metrics inside).

  hparams: shown in TensorBoard's HParams dashboard (a sweep passes its overrides).
  """
  status = claim_workdir(config, workdir)   # refuses a different config before writing
  if status is not None and status['state'] in ('finished', 'diverged'):
    print(f'{workdir}: run already {status["state"]} at step {status.get("step")}; '
          f'metrics {status.get("metrics")}', flush=True)
    return status
  exp = build_experiment(config)            # all names validated, data loaded: nothing written yet

  root_key = jax.random.key(config.seed)
  state = create_train_state(exp, root_key)
  os.makedirs(workdir, exist_ok=True)
  wd.write_json_atomic(os.path.join(workdir, wd.CONFIG_FILE), wd.config_to_dict(config))
  checkpoints = ckpt_lib.Checkpoints(workdir, config.keep_checkpoints)
  restored_step, tree = checkpoints.restore_latest(_checkpoint_tree(state, root_key))
  if restored_step is not None:
    state = restore_state(state, tree)
    print(f'resumed from the checkpoint at step {restored_step}', flush=True)
  start = int(state.step)

  writer = MetricWriter(workdir, resume_step=start)
  if start == 0:
    writer.hparams(hparams or _default_hparams(config), HPARAM_METRICS)
  train_step = make_train_step(exp.model, exp.task)
  eval_step = make_eval_step(exp.model, exp.task)
  batches = pipeline.TrainBatches(exp.dataset.train, config.data.batch_size, config.seed,
                                  config.data.augment)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  print(f'{config.model.name} norm={config.model.norm} residual={config.model.residual} '
        f'| {n_params / 1e6:.3f}M parameters | '
        f'{config.data.name}: {len(exp.dataset.train)} train / {len(exp.dataset.test)} test '
        f'| steps {start} -> {config.num_train_steps}', flush=True)

  def run_eval(step):
    metrics = evaluate(eval_step, _variables(state), exp.dataset.test,
                       config.data.eval_batch_size)
    writer.scalars(step, 'eval', metrics)
    print(f'step {step:>6}  eval   loss {metrics["loss"]:.4f}  '
          f'accuracy {metrics["accuracy"]:.4f}', flush=True)
    return metrics

  wd.write_status(workdir, 'running', step=start)
  pending, last_time, last_step = [], time.perf_counter(), start
  final_state, step = 'finished', start
  with _Preemption() as preemption:
    try:
      for step, batch in batches.prefetch(start, config.num_train_steps):
        state, sums = train_step(state, batch)
        pending.append(sums)
        done = step + 1
        if done % config.log_every_steps == 0 or done == config.num_train_steps:
          train = tasks.summarize(jax.device_get(jax.tree.map(lambda *x: sum(x), *pending)))
          now = time.perf_counter()
          train['steps_per_sec'] = (done - last_step) / (now - last_time)
          train['learning_rate'] = float(exp.schedule(step))
          pending, last_time, last_step = [], now, done
          writer.scalars(done, 'train', train)
          print(f'step {done:>6}  train  loss {train["loss"]:.4f}  accuracy '
                f'{train["accuracy"]:.4f}  lr {train["learning_rate"]:.4g}  '
                f'{train["steps_per_sec"]:.1f} steps/s', flush=True)
          if not train['loss'] <= config.divergence_threshold:  # also catches NaN
            final_state = 'diverged'
            break
        if done % config.eval_every_steps == 0 and done < config.num_train_steps:
          run_eval(done)
        if done % config.checkpoint_every_steps == 0 or preemption.requested:
          checkpoints.save(done, _checkpoint_tree(state, root_key))
          writer.flush()  # curves up to a checkpoint survive a kill; later points are purged
          wd.write_status(workdir, 'running', step=done)
        if preemption.requested:
          final_state = 'interrupted'
          break
      step = int(state.step)
      if final_state == 'finished':
        metrics = run_eval(step)
        if step not in checkpoints.steps():
          checkpoints.save(step, _checkpoint_tree(state, root_key))
        print(f'final test accuracy {metrics["accuracy"]:.4f} (loss {metrics["loss"]:.4f}) '
              f'at step {step}', flush=True)
      else:
        metrics = None
        print(f'run {final_state} at step {step}', flush=True, file=sys.stderr)
    except Exception as e:
      final_state = 'failed'
      wd.write_status(workdir, 'failed', step=int(step), error=f'{type(e).__name__}: {e}')
      raise
    finally:
      if final_state in ('finished', 'diverged'):
        writer.end_session(hparams or _default_hparams(config), HPARAM_METRICS)
      writer.close()
      checkpoints.close()
  status = {'state': final_state, 'step': step, 'metrics': metrics}
  wd.write_status(workdir, final_state, step=step, metrics=metrics)
  return status


def load_run(workdir: str) -> tuple[Experiment, TrainState, int]:
  """Rebuilds a workdir's experiment from its config.json and restores its latest checkpoint."""
  config = wd.read_config(workdir)
  exp = build_experiment(config)
  root_key = jax.random.key(config.seed)
  state = create_train_state(exp, root_key)
  checkpoints = ckpt_lib.Checkpoints(workdir, config.keep_checkpoints, read_only=True)
  step, tree = checkpoints.restore_latest(_checkpoint_tree(state, root_key))
  checkpoints.close()
  if step is None:
    raise ConfigError(f'{workdir} has no readable checkpoint')
  return exp, restore_state(state, tree), step
