"""Train one run:  python train.py --config=configs/default.py --workdir=runs/default

Flags only; the train loop is `training.loop.train_and_evaluate(config, workdir)`.
"""

# ruff: noqa: E402  (imports after the restart below)
if __name__ == '__main__':   # first, before JAX loads (training/huge_pages.py)
  from training import huge_pages
  huge_pages.restart_with_huge_pages()

import sys

from absl import app, flags, logging
from ml_collections import config_flags

import cli
from errors import ConfigError
from training import loop, parallel

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py[:arg]).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory of this run: config, checkpoints, TensorBoard.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = cli.config_or_fail(FLAGS.config)
  parallel.maybe_initialize_distributed(config)
  try:
    status = loop.train_and_evaluate(config, FLAGS.workdir)
  except ConfigError as e:
    cli.fail(str(e))
  if status['state'] == 'interrupted':
    sys.exit(143)  # stopped by SIGTERM after saving a checkpoint: run the same command to resume
  if status['state'] != 'finished':
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
