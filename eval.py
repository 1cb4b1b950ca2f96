"""Evaluate a trained workdir on the test split, in both normalization modes.

  python eval.py --workdir=runs/default [--batch_sizes=1,8,128] [--max_examples=N]

Rows: the normal eval mode (BatchNorm uses its running averages) and train mode (every norm
uses the statistics of the batch it is given) at several batch sizes. A norm without running
statistics (layer, group, rms, instance, none) computes the same in both modes, so all its rows
agree; BatchNorm's train-mode rows depend on the batch size. Prints a table and writes it to
<workdir>/eval.json.
"""

# ruff: noqa: E402  (imports after the restart below)
if __name__ == '__main__':   # first, before JAX loads (training/huge_pages.py)
  from training import huge_pages
  huge_pages.restart_with_huge_pages()

import os

from absl import app, flags, logging

import cli
from errors import ConfigError
from training import loop
from training import workdir as wd

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'A workdir written by train.py.')
flags.DEFINE_list('batch_sizes', ['1', '2', '8', '32', '128'],
                  'Batch sizes for the batch-statistics (train) mode.')
flags.DEFINE_integer('max_examples', None, 'Evaluate only the first N test examples.')
flags.mark_flag_as_required('workdir')


def evaluate_workdir(workdir: str, batch_sizes, max_examples=None) -> dict:
  exp, state, step = loop.load_run(workdir)
  eval_step = loop.make_eval_step(exp.model, exp.task)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  test = exp.dataset.test
  rows = [{'mode': 'eval (running averages)', 'batch_size': exp.config.data.eval_batch_size,
           **loop.evaluate(eval_step, variables, test, exp.config.data.eval_batch_size,
                           max_examples=max_examples)}]
  for bs in batch_sizes:
    rows.append({'mode': 'train (batch statistics)', 'batch_size': bs,
                 **loop.evaluate(eval_step, variables, test, bs, batch_stats_mode=True,
                                 max_examples=max_examples)})
  return {'workdir': workdir, 'step': step, 'norm': exp.config.model.norm, 'rows': rows}


def format_table(result: dict) -> str:
  base = result['rows'][0]
  lines = [f'{result["workdir"]}  (norm={result["norm"]}, step {result["step"]})',
           f'{"mode":<26} {"batch":>6} {"loss":>9} {"accuracy":>9} {"Δloss vs eval":>14} '
           f'{"Δacc vs eval":>13}']
  for r in result['rows']:
    lines.append(f'{r["mode"]:<26} {r["batch_size"]:>6} {r["loss"]:>9.4f} {r["accuracy"]:>9.4f} '
                 f'{r["loss"] - base["loss"]:>+14.4f} {r["accuracy"] - base["accuracy"]:>+13.4f}')
  return '\n'.join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    if any(b < 1 for b in batch_sizes):
      raise ConfigError(f'--batch_sizes must be positive integers; got {FLAGS.batch_sizes}')
    result = evaluate_workdir(FLAGS.workdir, batch_sizes, FLAGS.max_examples)
  except (ConfigError, ValueError) as e:
    cli.fail(str(e))
  print(format_table(result))
  wd.write_json_atomic(os.path.join(FLAGS.workdir, 'eval.json'), result)
  log_to_tensorboard(FLAGS.workdir, result)


def log_to_tensorboard(workdir: str, result: dict) -> None:
  """Scalars `eval_modes/<metric>/<mode>_bs<N>` at the run's step, and the gap to eval mode."""
  from training.metric_writer import MetricWriter
  writer = MetricWriter(workdir)
  base = result['rows'][0]
  for r in result['rows']:
    mode = 'running_avg' if r['mode'].startswith('eval') else 'batch_stats'
    tag = f'{mode}_bs{r["batch_size"]}'
    writer.scalars(result['step'], 'eval_modes', {
        f'accuracy/{tag}': r['accuracy'], f'loss/{tag}': r['loss'],
        f'accuracy_gap_to_eval_mode/{tag}': r['accuracy'] - base['accuracy']})
  writer.close()


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
