"""Evaluate a trained workdir on the test split, in both normalization modes.

  python eval.py --workdir=runs/default [--batch_sizes=1,8,128] [--max_examples=N]

Rows: the normal eval mode (BatchNorm uses its running averages) and train mode (every norm
uses the statistics of the batch it is given) at several batch sizes. A norm without running
statistics (layer, group, rms, instance, none) computes the same in both modes, so all its rows
agree; BatchNorm's train-mode rows depend on the batch size. Prints a table and writes it to
<workdir>/eval.json. Flags and the table only; the work is training/evaluation.py.
"""

# ruff: noqa: E402  (imports after the restart below)
if __name__ == '__main__':   # first, before JAX loads (training/huge_pages.py)
  from training import huge_pages
  huge_pages.restart_with_huge_pages()

import os

from absl import app, flags, logging

import cli
from errors import ConfigError
from training import evaluation
from training import workdir as wd

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'A workdir written by train.py.')
flags.DEFINE_list('batch_sizes', ['1', '2', '8', '32', '128'],
                  'Batch sizes for the batch-statistics (train) mode.')
flags.DEFINE_integer('max_examples', None, 'Evaluate only the first N test examples.')
flags.DEFINE_enum('split', 'test', ['test', 'train', 'validation'],
                  'test; train: the training examples as stored (no augmentation), e.g. for the '
                  'training loss at convergence; validation: the examples held out by '
                  'data.validation_examples. Written to eval.json, eval_train.json, '
                  'eval_validation.json.')
flags.mark_flag_as_required('workdir')


def format_table(result: dict) -> str:
  base = result['rows'][0]
  lines = [f'{result["workdir"]}  (norm={result["norm"]}, step {result["step"]}, '
           f'{result.get("split", "test")} split)',
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
    result = evaluation.evaluate_workdir(FLAGS.workdir, batch_sizes, FLAGS.max_examples,
                                         FLAGS.split)
  except (ConfigError, ValueError) as e:
    cli.fail(str(e))
  print(format_table(result))
  name = 'eval.json' if FLAGS.split == 'test' else f'eval_{FLAGS.split}.json'
  wd.write_json_atomic(os.path.join(FLAGS.workdir, name), result)
  evaluation.log_to_tensorboard(FLAGS.workdir, result)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
