"""Evaluation: a split in batches through the compiled eval step, and a trained workdir read back
and evaluated in both normalization modes (what eval.py prints)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from data import pipeline
from errors import ConfigError
from training import checkpoints as ckpt_lib
from training import tasks
from training import workdir as wd
from training.experiment import Experiment, TrainState, build_experiment, create_train_state
from training.metric_writer import MetricWriter
from training.step import Steps, compile_steps


def variables(state: TrainState) -> dict:
  return {'params': state.params, 'batch_stats': state.batch_stats}


def evaluate(steps: Steps, state_variables, split, batch_size: int, *,
             batch_stats_mode: bool = False, max_examples: int | None = None) -> dict[str, float]:
  """Metrics over `split` (its first `max_examples`), in batches of `batch_size`."""
  totals = None
  for indices in pipeline.eval_indices(split, batch_size, max_examples):
    sums = steps.eval(state_variables, split, indices, batch_stats_mode)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return tasks.summarize(jax.device_get(totals))


def evaluate_test(exp: Experiment, steps: Steps, state: TrainState) -> dict[str, float]:
  """The test split in eval mode, in batches of data.eval_batch_size."""
  return evaluate(steps, variables(state), exp.dataset.test, exp.config.data.eval_batch_size)


def load_run(workdir: str) -> tuple[Experiment, TrainState, int]:
  """Rebuilds a workdir's experiment from its config.json and restores its latest checkpoint."""
  config = wd.read_config(workdir)
  exp = build_experiment(config)
  root_key = jax.random.key(config.seed)
  state = create_train_state(exp, root_key)
  checkpoints = ckpt_lib.Checkpoints(workdir, config.keep_checkpoints, read_only=True)
  step, tree = checkpoints.restore_latest(ckpt_lib.state_tree(state, root_key))
  checkpoints.close()
  if step is None:
    raise ConfigError(f'{workdir} has no readable checkpoint')
  return exp, ckpt_lib.restore_state(state, tree), step


SPLITS = ('test', 'train', 'validation')


def evaluate_workdir(workdir: str, batch_sizes, max_examples=None, split: str = 'test') -> dict:
  """The metrics on `split` (test; train: the training examples as stored, without the
  per-step augmentation or transform; validation: held out of train) in eval mode (running averages), then in train mode
  (batch statistics) at each of `batch_sizes`: {workdir, step, norm, split, rows}."""
  if split not in SPLITS:
    raise ConfigError(f'unknown split {split!r}; valid: {", ".join(SPLITS)}')
  exp, state, step = load_run(workdir)
  test = getattr(exp.dataset, split)
  if test is None:
    raise ConfigError(f'{workdir} holds no validation split (it trained with '
                      'data.validation_examples = 0)')
  steps = compile_steps(exp)
  eval_batch = exp.config.data.eval_batch_size
  rows = [{'mode': 'eval (running averages)', 'batch_size': eval_batch,
           **evaluate(steps, variables(state), test, eval_batch, max_examples=max_examples)}]
  for bs in batch_sizes:
    rows.append({'mode': 'train (batch statistics)', 'batch_size': bs,
                 **evaluate(steps, variables(state), test, bs, batch_stats_mode=True,
                            max_examples=max_examples)})
  return {'workdir': workdir, 'step': step, 'norm': exp.config.model.norm, 'split': split,
          'rows': rows}


def log_to_tensorboard(workdir: str, result: dict) -> None:
  """Scalars `eval_modes/<metric>/<mode>_bs<N>` at the run's step, and the gap to eval mode."""
  writer = MetricWriter(workdir)
  base = result['rows'][0]
  split = result.get('split', 'test')
  section = 'eval_modes' if split == 'test' else f'eval_modes_{split}'
  for r in result['rows']:
    mode = 'running_avg' if r['mode'].startswith('eval') else 'batch_stats'
    tag = f'{mode}_bs{r["batch_size"]}'
    writer.scalars(result['step'], section, {
        f'accuracy/{tag}': r['accuracy'], f'loss/{tag}': r['loss'],
        f'accuracy_gap_to_eval_mode/{tag}': r['accuracy'] - base['accuracy']})
  writer.close()
