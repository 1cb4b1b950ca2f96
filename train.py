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
from training import loop, parallel, workdir

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py[:arg]).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory of this run: config, checkpoints, TensorBoard.')
flags.DEFINE_integer('num_processes', None, 'Multi-process without Slurm (config.distributed): '
                     'how many processes; with JAX_COORDINATOR_ADDRESS=host:port of process 0.')
flags.DEFINE_integer('process_id', None, 'Multi-process without Slurm: this process (0 .. n-1).')
flags.DEFINE_integer('peer_timeout', 60, 'Multi-process: seconds without a heartbeat from a '
                     'peer (a killed process, a machine gone) before the others record the run '
                     'failed and exit 1.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = cli.config_or_fail(FLAGS.config)
  try:
    parallel.maybe_initialize_distributed(config, FLAGS.num_processes, FLAGS.process_id,
                                          FLAGS.peer_timeout)
    status = loop.train_and_evaluate(config, FLAGS.workdir)
  except ConfigError as e:
    cli.fail(str(e))
  except KeyboardInterrupt:   # Ctrl-C before training started, or twice
    cli.fail('interrupted', code=130)
  except Exception as e:  # noqa: BLE001 - the machine's errors are one line; the code's, traces
    reason = workdir.failure_reason(e)
    if reason is None:
      raise
    cli.fail(f'the run failed: {reason} (status.json: failed; once that is fixed, the same '
             'command resumes from the last checkpoint)', code=1, hard=True)
  if status['state'] == 'interrupted':
    # stopped after saving, by Ctrl-C (130) or a scheduler's SIGTERM / SIGUSR2 (143, what
    # schedulers expect of a preempted job): the same command resumes it
    sys.exit(130 if status['signal'] == 'SIGINT' else 143)
  if status['state'] != 'finished':
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
