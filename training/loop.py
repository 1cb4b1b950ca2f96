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
from training import diagnostics as diag_lib
from training import optim, parallel, tasks
from training import workdir as wd
from training.metric_writer import MetricWriter

# Keys that may differ when resuming a workdir: they change logging and checkpointing only.
RESUMABLE_KEYS = ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
                  'keep_checkpoints', 'diagnostics_every_steps')


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
  models.check_model_names(config.model)
  optim.make_optimizer(config.optimizer,
                       optim.make_schedule(config.optimizer, config.num_train_steps))
  if config.data.augment not in pipeline.AUGMENTATIONS:
    raise ConfigError(f'unknown augmentation {config.data.augment!r}; '
                      f'valid: {", ".join(pipeline.AUGMENTATIONS)}')
  for key in ('num_train_steps', 'log_every_steps', 'eval_every_steps',
              'checkpoint_every_steps', 'keep_checkpoints'):
    if config[key] <= 0:
      raise ConfigError(f'{key} must be positive; got {config[key]}')


def build_experiment(config, dataset: data_lib.Dataset | None = None) -> Experiment:
  """Everything `config` describes; `dataset` replaces loading config.data (benchmarks)."""
  check_config(config)
  if dataset is None:
    dataset = data_lib.load_dataset(config.data, config.seed)
  model = models.build_model(config.model, dataset)
  schedule = optim.make_schedule(config.optimizer, config.num_train_steps)
  tx = optim.make_optimizer(config.optimizer, schedule)
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


def train_step_fn(model: nn.Module, task: Callable):
  """The pure `train_step(state, batch) -> (state, summed metrics)` (not yet jitted)."""

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

  return train_step


def make_train_step(model: nn.Module, task: Callable):
  """The jitted train step; the state's buffers are donated (updated in place)."""
  return jax.jit(train_step_fn(model, task), donate_argnums=0)


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
  return train_seeds([config], [workdir], [hparams])[0]


class _Run:
  """One member of a population: its config, workdir, writer, checkpoints and state."""

  def __init__(self, config, workdir, hparams, exp):
    self.config, self.workdir, self.exp = config, workdir, exp
    self.hparams = hparams or _default_hparams(config)
    self.root_key = jax.random.key(config.seed)
    self.state_name = 'finished'   # what it ends as unless something happens
    self.metrics = None

  def open(self, state):
    os.makedirs(self.workdir, exist_ok=True)
    wd.write_json_atomic(os.path.join(self.workdir, wd.CONFIG_FILE), wd.config_to_dict(self.config))
    self.checkpoints = ckpt_lib.Checkpoints(self.workdir, self.config.keep_checkpoints)
    step, tree = self.checkpoints.restore_latest(_checkpoint_tree(state, self.root_key))
    if step is not None:
      state = restore_state(state, tree)
      print(f'{self.workdir}: resumed from the checkpoint at step {step}', flush=True)
    return state

  def start_logging(self, start: int):
    self.writer = MetricWriter(self.workdir, resume_step=start)
    if start == 0:
      self.writer.hparams(self.hparams, HPARAM_METRICS)
    wd.write_status(self.workdir, 'running', step=start)

  def save(self, state, step):
    self.checkpoints.save(step, _checkpoint_tree(state, self.root_key))
    self.writer.flush()  # curves up to a checkpoint survive a kill; later points are dropped
    wd.write_status(self.workdir, 'running', step=step)

  def close(self, step):
    if self.state_name in ('finished', 'diverged'):
      self.writer.end_session(self.hparams, HPARAM_METRICS)
    self.writer.close()
    self.checkpoints.close()
    wd.write_status(self.workdir, self.state_name, step=step, metrics=self.metrics)
    return {'state': self.state_name, 'step': step, 'metrics': self.metrics}


class _TrainClock:
  """Seconds spent in train steps only, for steps/s. Left out: the process's first step (it
  compiles) and whatever runs between `stop` and `start` (eval, checkpoints, diagnostics).
  Both wait for `state`, so that asynchronous dispatch does not move time between the two."""

  def __init__(self):
    self.seconds, self.steps, self._since = 0.0, 0, None

  def start(self, state):
    jax.block_until_ready(state)
    self._since = time.perf_counter()

  def stop(self, state):
    if self._since is not None:
      jax.block_until_ready(state)
      self.seconds += time.perf_counter() - self._since
      self._since = None

  def rate(self, state) -> float | None:
    """Train steps per second since the last call (None if no step was timed)."""
    self.stop(state)
    rate = self.steps / self.seconds if self.steps and self.seconds > 0 else None
    self.seconds, self.steps = 0.0, 0
    self.start(state)
    return rate


def _check_population(configs) -> None:
  """Seeds share one program only if their configs differ in nothing but the seed."""
  first = wd.config_to_dict(configs[0])
  for c in configs[1:]:
    diff = [k for k in wd.config_diff(first, wd.config_to_dict(c)) if k != 'seed']
    if diff:
      raise ConfigError(f'seeds in one program must share their config; they differ in {diff}')


def _stack(trees):
  return trees[0] if len(trees) == 1 else jax.tree.map(lambda *x: jnp.stack(x), *trees)


def _member(tree, k: int, population: int):
  return tree if population == 1 else jax.tree.map(lambda x: x[k], tree)


def train_seeds(configs: list, workdirs: list[str], hparams: list | None = None) -> list[dict]:
  """The one train loop, for one run or for several seeds of one config trained as one compiled
  program (`jax.vmap` over parameters, optimizer state and data order). Each seed keeps its own
  workdir, checkpoints, TensorBoard run and status, exactly as if trained alone."""
  hparams = hparams or [None] * len(configs)
  _check_population(configs)
  statuses = [claim_workdir(c, w) for c, w in zip(configs, workdirs)]  # refuses before writing
  done = [s for s in statuses if s is not None and s['state'] in ('finished', 'diverged')]
  if done:
    if len(configs) == 1:
      s = statuses[0]
      print(f'{workdirs[0]}: run already {s["state"]} at step {s.get("step")}; '
            f'metrics {s.get("metrics")}', flush=True)
      return [s]
    raise ConfigError('a population of seeds must not include finished runs; train the '
                      'unfinished ones')
  exps = [build_experiment(c) for c in configs]  # names validated, data loaded: nothing written
  config, exp, population = configs[0], exps[0], len(configs)
  mesh = parallel.data_mesh()
  parallel.check_batch(config.data.batch_size, mesh)
  batches = [pipeline.TrainBatches(e.dataset.train, config.data.batch_size, c.seed,
                                   config.data.augment) for e, c in zip(exps, configs)]
  runs = [_Run(c, w, h, e) for c, w, h, e in zip(configs, workdirs, hparams, exps)]
  fresh = [create_train_state(exp, r.root_key) for r in runs]  # one model, one tx for all
  layers = list(fresh[0].params)  # in the order the model defines them (input first)
  states = [r.open(f) for r, f in zip(runs, fresh)]
  starts = {int(s.step) for s in states}
  if len(starts) > 1:
    for r in runs:
      r.checkpoints.close()
    print(f'seeds resume from different steps {sorted(starts)}: training them one by one',
          flush=True)
    return [train_seeds([c], [w], [h])[0] for c, w, h in zip(configs, workdirs, hparams)]
  start = starts.pop()
  for r in runs:
    r.start_logging(start)
  state = parallel.replicate(_stack(states), mesh)

  step_fn = train_step_fn(exp.model, exp.task)
  train_step = jax.jit(step_fn if population == 1 else jax.vmap(step_fn), donate_argnums=0)
  diag_every = config.get('diagnostics_every_steps', 0)
  if diag_every:
    diag_fn = diag_lib.diagnose_fn(exp.model, exp.task, exp.tx)
    diagnose = jax.jit(diag_fn if population == 1 else jax.vmap(diag_fn))
    grad_history = [[] for _ in runs]
  eval_step = make_eval_step(exp.model, exp.task)
  n_params = sum(x.size for x in jax.tree.leaves(states[0].params))
  print(f'{config.model.name} norm={config.model.norm} residual={config.model.residual} '
        f'| {n_params / 1e6:.3f}M parameters | {config.data.name}: {len(exp.dataset.train)} '
        f'train / {len(exp.dataset.test)} test | seeds {[c.seed for c in configs]} '
        f'| steps {start} -> {config.num_train_steps}', flush=True)

  def run_eval(k, step):
    r = runs[k]
    metrics = evaluate(eval_step, _variables(_member(state, k, population)), r.exp.dataset.test,
                       config.data.eval_batch_size)
    r.writer.scalars(step, 'eval', metrics)
    print(f'{_tag(k)}step {step:>6}  eval   loss {metrics["loss"]:.4f}  '
          f'accuracy {metrics["accuracy"]:.4f}', flush=True)
    return metrics

  def _tag(k):
    return f'[seed {configs[k].seed}] ' if population > 1 else ''

  def population_batch(step):
    if population == 1:
      batch = batches[0](step)
    else:  # stacked on the host: one transfer, straight into the sharded layout
      batch = jax.tree.map(lambda *x: np.stack(x), *[b(step) for b in batches])
    return parallel.shard_batch(batch, mesh, population)

  live = lambda: [k for k, r in enumerate(runs) if r.state_name == 'finished']
  pending, step, clock = [], start, _TrainClock()
  with _Preemption() as preemption:
    try:
      for step, batch in pipeline.prefetch(population_batch, start, config.num_train_steps):
        if diag_every and step % diag_every == 0:   # statistics of the state before this step
          clock.stop(state)
          stats = jax.device_get(diagnose(state, batch))
          for k in live():
            mine = _member(stats, k, population)
            for stat, per_layer in mine.items():
              runs[k].writer.scalars(step, stat, {l: float(per_layer[l]) for l in layers
                                                  if l in per_layer})
            grad_history[k].append(np.array([mine['grad_norm'][l] for l in layers]))
            # rows: layers from the input down; columns: diagnostic steps
            runs[k].writer.image(step, 'grad_norm/heatmap',
                                 diag_lib.heatmap(grad_history[k], layers))
          clock.start(state)
        state, sums = train_step(state, batch)
        if step == start:   # the first step compiles: time from its end
          clock.start(state)
        else:
          clock.steps += 1
        pending.append(sums)
        done = step + 1
        if done % config.log_every_steps == 0 or done == config.num_train_steps:
          totals = jax.device_get(jax.tree.map(lambda *x: sum(x), *pending))
          speed = clock.rate(state)
          pending = []
          for k in live():
            train = tasks.summarize(_member(totals, k, population))
            if speed is not None:
              train['steps_per_sec'] = speed
            train['learning_rate'] = float(exp.schedule(step))
            runs[k].writer.scalars(done, 'train', train)
            print(f'{_tag(k)}step {done:>6}  train  loss {train["loss"]:.4f}  accuracy '
                  f'{train["accuracy"]:.4f}  lr {train["learning_rate"]:.4g}'
                  + (f'  {speed:.1f} steps/s' if speed else ''), flush=True)
            if not train['loss'] <= config.divergence_threshold:  # also catches NaN
              runs[k].state_name, runs[k].diverged_at = 'diverged', done
              print(f'{_tag(k)}diverged at step {done} (train loss {train["loss"]})',
                    file=sys.stderr, flush=True)
          if not live():
            break
        if done % config.eval_every_steps == 0 and done < config.num_train_steps:
          clock.stop(state)
          for k in live():
            run_eval(k, done)
          clock.start(state)
        if done % config.checkpoint_every_steps == 0 or preemption.requested:
          clock.stop(state)
          for k in live():
            runs[k].save(_member(state, k, population), done)
          clock.start(state)
        if preemption.requested:
          for k in live():
            runs[k].state_name = 'interrupted'
          break
      step = int(np.max(jax.device_get(state.step)))
      for k in live():
        runs[k].metrics = run_eval(k, step)
        if step not in runs[k].checkpoints.steps():
          runs[k].save(_member(state, k, population), step)
        print(f'{_tag(k)}final test accuracy {runs[k].metrics["accuracy"]:.4f} '
              f'(loss {runs[k].metrics["loss"]:.4f}) at step {step}', flush=True)
      for r in runs:
        if r.state_name == 'interrupted':
          print(f'run interrupted at step {step}', flush=True, file=sys.stderr)
    except Exception as e:
      for r in runs:
        r.state_name = 'failed'
        r.writer.close()
        r.checkpoints.close()
        wd.write_status(r.workdir, 'failed', step=int(step), error=f'{type(e).__name__}: {e}')
      raise
  return [r.close(getattr(r, 'diverged_at', step)) for r in runs]


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
