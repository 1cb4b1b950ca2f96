"""Orbax checkpoints of the train state, with fallback past unreadable ones.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
kill during a save never leaves a checkpoint that looks complete and is not. A checkpoint that
is complete but damaged afterwards (truncated or corrupted files) is found by the checksums we
write beside it (orbax restored some damaged files without an error: wrong parameters,
silently) or fails to restore: we say so in one line and fall back to the previous one. A
checkpoint of another model state (different arrays) is not damage: it is refused.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import re
import sys
import time
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from errors import ConfigError


def state_tree(state, root_key: jax.Array) -> dict:
  """What a checkpoint holds: the train state and the run's root key."""
  return {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state,
          # a host value (every process has the same key): a jax.Array here would be a
          # host-local array, which orbax refuses to save with several processes
          'rng': np.asarray(jax.random.key_data(root_key))}


def restore_state(state, tree: dict):
  """`state` with the contents of a restored `state_tree`."""
  return state.replace(step=tree['step'], params=tree['params'],
                       batch_stats=tree['batch_stats'], opt_state=tree['opt_state'])


CHECKSUMS = 'normlab_checksums.json'   # in each checkpoint's directory, written after it


def _path_str(path) -> str:
  return '/'.join(str(next((getattr(k, a) for a in ('key', 'name', 'idx') if hasattr(k, a)), k))
                  for k in path)


def _shapes(tree) -> dict[str, tuple]:
  return {_path_str(p): tuple(getattr(leaf, 'shape', ()))
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _crc(path: str) -> int:
  crc = 0
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 20):
      crc = zlib.crc32(chunk, crc)
  return crc


def _files(directory: str) -> list[str]:
  return sorted(os.path.relpath(os.path.join(root, name), directory)
                for root, _, names in os.walk(directory) for name in names if name != CHECKSUMS)


@contextlib.contextmanager
def _quiet():
  """Orbax and TensorStore report a damaged checkpoint with pages of log lines, asyncio
  tracebacks and "exception ignored" messages from abandoned coroutines; we say it in one."""
  loggers = [logging.getLogger(n) for n in ('absl', 'asyncio', 'orbax', 'jax')]
  levels = [l.level for l in loggers]
  hook = sys.unraisablehook
  for l in loggers:
    l.setLevel(logging.CRITICAL)
  sys.unraisablehook = lambda unraisable: None
  failed = False
  try:
    yield
  except BaseException:
    failed = True
    raise
  finally:
    gc.collect()   # abandoned coroutines report now, while the hook is quiet
    sys.unraisablehook = hook
    if failed:
      _drop_closed_loop_reports()
    for l, level in zip(loggers, levels):
      l.setLevel(level)


CLOSED_LOOP = 'Event loop is closed'
ABANDONED_TASK = 'Task was destroyed but it is pending!'


class _DropAbandonedTasks(logging.Filter):
  def filter(self, record):
    return not str(record.msg).startswith(ABANDONED_TASK)


def _drop_closed_loop_reports():
  """After a failed save or restore, for the rest of the process: orbax ran it on an event loop
  of its own and closed that loop when the first write failed, with other TensorStore writes
  still in flight. Each of those that completes later cannot wake its coroutine: it reports
  'Event loop is closed' as a traceback, and the coroutine's task, now garbage, is logged as
  destroyed while pending at the next collection; whenever they land (under load, seconds
  later, around the run's one-line error). Those two reports, only those, are dropped."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops', None) == CLOSED_LOOP:
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == CLOSED_LOOP):
      previous(unraisable)

  hook.drops = CLOSED_LOOP
  sys.unraisablehook = hook
  asyncio_logger = logging.getLogger('asyncio')
  if not any(isinstance(f, _DropAbandonedTasks) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_DropAbandonedTasks())


def _reason(e: Exception) -> str:
  """The first sentence of an exception, on one line."""
  text = ' '.join(str(e).split()) or type(e).__name__
  text = re.split(r'(?<=\.) |See full TensorStore details', text)[0].strip()
  if len(text) > 300:
    text = text[:300].rsplit(' ', 1)[0] + ' ...'
  return f'{type(e).__name__}: {text}'


class Checkpoints:

  def __init__(self, workdir: str, keep: int, read_only: bool = False):
    self._read_only = read_only
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
            create=not read_only, read_only=read_only, enable_async_checkpointing=False),
        item_handlers=ocp.StandardCheckpointHandler())

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, tree) -> None:
    """Saves, then records each file's size and CRC-32 beside it (a checkpoint killed before
    that is complete, just not verifiable: restored as orbax reads it)."""
    with _quiet():   # a failed write (a full disk) is raised once, not logged in pages
      self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
      self._manager.wait_until_finished()
    if jax.process_index() == 0:
      directory = os.path.join(self.directory, str(step))
      sums = {f: [os.path.getsize(os.path.join(directory, f)), _crc(os.path.join(directory, f))]
              for f in _files(directory)}
      tmp = os.path.join(directory, CHECKSUMS + '.tmp')
      with open(tmp, 'w') as f:
        json.dump(sums, f)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, os.path.join(directory, CHECKSUMS))

  def damage(self, step: int) -> str | None:
    """Why the checkpoint at `step` is damaged (a file missing or changed since it was saved),
    or None when its files are as saved (or it has no checksums to tell)."""
    directory = os.path.join(self.directory, str(step))
    try:
      with open(os.path.join(directory, CHECKSUMS)) as f:
        sums = json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError) as e:
      return f'{CHECKSUMS}: {_reason(e)}'
    for name, (size, crc) in sums.items():
      path = os.path.join(directory, name)
      if not os.path.exists(path):
        return f'{name} is missing'
      if os.path.getsize(path) != size:
        return f'{name} is {os.path.getsize(path)} bytes; it was saved with {size}'
      if _crc(path) != crc:
        return f'{name} has changed since it was saved (CRC-32)'
    return None

  def check_structure(self, step: int, like) -> None:
    """Refuses (ConfigError) a checkpoint whose arrays are not those of `like`: a different
    model, not damage. Names the first differing paths."""
    try:
      with _quiet():
        saved = _shapes(self._manager.item_metadata(step))
    except Exception:  # noqa: BLE001 - unreadable metadata is damage: restore will say so
      return
    if not saved:
      return
    want = _shapes(like)
    diff = ([f'{k} only in the checkpoint' for k in sorted(set(saved) - set(want))] +
            [f'{k} only in this model' for k in sorted(set(want) - set(saved))] +
            [f'{k}: {saved[k]} saved, {want[k]} here' for k in sorted(set(saved) & set(want))
             if saved[k] != want[k]])
    if diff:
      shown = '; '.join(diff[:4]) + (f'; and {len(diff) - 4} more' if len(diff) > 4 else '')
      raise ConfigError(f'the checkpoint at step {step} in {self.directory} holds another '
                        f'model state ({shown}); nothing was changed. Resume with the code and '
                        'config that wrote it, or use a new --workdir')

  def restore_latest(self, like, sharding=None) -> tuple[int | None, object]:
    """Restores the newest readable checkpoint into the structure of `like`, its arrays placed
    with `sharding` (the run's replicated sharding over the global mesh: with several processes
    each restores its own devices' copies; None: as `like`'s arrays).

    Returns (step, tree), or (None, like) when there is no readable checkpoint. A damaged one
    is reported in one line and skipped (set aside, unless read-only); one holding another
    model state stops with a ConfigError before anything is changed.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        if sharding is not None and isinstance(x, jax.Array)
        else ocp.utils.to_shape_dtype_struct(x), like)
    unreadable = []
    for step in reversed(self.steps()):
      reason = self.damage(step)
      if reason is None:
        self.check_structure(step, like)
        try:
          with _quiet():
            tree = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
          break
        except Exception as e:  # noqa: BLE001 - any damage means: try the previous one
          reason = _reason(e)
      print(f'warning: checkpoint at step {step} ({self.directory}/{step}) is unreadable: '
            f'{reason}; falling back to the previous one', file=sys.stderr, flush=True)
      unreadable.append(step)
    else:
      step, tree = None, like
    if unreadable and not self._read_only:
      self._set_aside(unreadable)
    return step, tree

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unreadable checkpoints out of the manager's way (kept for inspection, not
    deleted), so that training can write those steps again."""
    aside = self.directory + '_unreadable'
    os.makedirs(aside, exist_ok=True)
    for step in steps:
      os.replace(os.path.join(self.directory, str(step)),
                 os.path.join(aside, f'{step}.{int(time.time())}'))
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()
