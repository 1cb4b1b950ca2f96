"""Runs train.py, killed with SIGKILL at a chosen moment: a deterministic kill -9.

  python tests/fault_runner.py TARGET N WHEN [--flushed] -- <train.py flags>

TARGET is `module:Class.method` (or `module:function`), N the call to die at (1-based), WHEN
`before` or `after` that call, or `signal:NAME` to send itself that signal after the call
instead of dying (a scheduler's SIGTERM / SIGUSR2 at a known moment). --flushed first flushes the open TensorBoard writers, as
tensorboardX's own periodic flush (every 10 s) may have done before a real kill.
"""

import gc
import importlib
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def die(flushed: bool):
  if flushed:
    from training.metric_writer import MetricWriter
    for obj in gc.get_objects():
      if isinstance(obj, MetricWriter):
        obj.flush()
  os.kill(os.getpid(), signal.SIGKILL)


def arm(target: str, n: int, when: str, flushed: bool):
  module_name, _, attr = target.partition(':')
  owner = importlib.import_module(module_name)
  *path, name = attr.split('.')
  for p in path:
    owner = getattr(owner, p)
  original, calls = getattr(owner, name), [0]

  def wrapper(*args, **kwargs):
    calls[0] += 1
    if calls[0] == n and when == 'before':
      die(flushed)
    result = original(*args, **kwargs)
    if calls[0] == n and when == 'after':
      die(flushed)
    if calls[0] == n and when.startswith('signal:'):
      os.kill(os.getpid(), getattr(signal, when.split(':')[1]))
    return result

  setattr(owner, name, wrapper)


if __name__ == '__main__':
  split = sys.argv.index('--')
  target, n, when, *options = sys.argv[1:split]
  sys.argv = [os.path.join(ROOT, 'train.py')] + sys.argv[split + 1:]
  import train   # noqa: E402  (defines the flags)
  from absl import app   # noqa: E402
  import cli   # noqa: E402
  arm(target, int(n), when, '--flushed' in options)
  app.run(train.main, flags_parser=cli.parse_flags)
