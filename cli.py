"""Command-line plumbing shared by train.py and eval.py: one-line errors, non-zero exits."""

from __future__ import annotations

import importlib.util
import os
import sys

from absl import flags

from errors import ConfigError


def fail(message: str, code: int = 2, hard: bool = False):
  """One line on stderr and exit `code`. hard: without the interpreter's shutdown, after a
  failure inside orbax/TensorStore whose abandoned writes would each print a traceback then
  (everything the run must keep, its status and lock, is already written)."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  if hard:
    sys.stdout.flush()
    os._exit(code)
  sys.exit(code)


def _bad_override(config, argv) -> str | None:
  """The first `--config.a.b=...` override naming a key the config lacks, with the valid keys."""
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0].split('.')
    node = config
    if config is None:
      return None
    for i, key in enumerate(path):
      if not hasattr(node, 'keys') or key not in node:
        where = '.'.join(['config'] + path[:i])
        if not hasattr(node, 'keys'):
          return f'unknown config key {".".join(path)!r}: {where} is a value, not a group'
        return f'unknown config key {".".join(path)!r}: {where} has {", ".join(sorted(node))}'
      node = node[key]
  return None


def parse_flags(argv):
  """absl flag parsing whose errors (a typo'd --config.key, a bad value) are one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(one_line(str(e)))
  except (AttributeError, KeyError, TypeError) as e:  # ml_collections: override of an unknown key
    fail(_bad_override(load_config(argv), argv) or str(e).replace('\n', ' '))


def one_line(message: str) -> str:
  """A message that may embed a traceback (absl wraps a config file's exception in one), as its
  first line and the exception that caused it: what went wrong, and why."""
  lines = [l.strip() for l in message.strip().splitlines() if l.strip()]
  if not lines:
    return message
  if any(l.startswith('Traceback') for l in lines) and lines[-1] != lines[0]:
    return f'{lines[0].rstrip(":")}: {lines[-1]}'
  return ' '.join(lines)


def import_file(path: str, name: str):
  """Imports a Python file by path (configs and sweeps are files, not packages)."""
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config(argv, strict: bool = False):
  """The config named by --config=path[:arg], loaded as config_flags would. Not strict (for
  messages): None when it cannot be loaded. Strict: a ConfigError naming the file and the cause."""
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if spec is None:
    if strict:
      raise ConfigError('no --config given')
    return None
  path, _, arg = spec.partition(':')
  try:
    module = import_file(path, '_config')
    return module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # noqa: BLE001 - a config file may raise anything
    if strict:
      raise ConfigError(f'config {spec}: {type(e).__name__}: {" ".join(str(e).split())}') from e
    return None


def config_or_fail(flag_value):
  """Touches the lazily loaded --config so that a missing/broken file is one line, not a trace."""
  try:
    flag_value.keys()
  except OSError as e:
    fail(' '.join(str(e).split()))
  return flag_value
