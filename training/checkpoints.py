"""Orbax checkpoints of the train state, with fallback past unreadable ones.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
kill during a save never leaves a checkpoint that looks complete and is not. A checkpoint that
is complete but damaged afterwards (truncated or corrupted files) fails to restore: we say so
in one line and fall back to the previous one.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import orbax.checkpoint as ocp


def state_tree(state, root_key: jax.Array) -> dict:
  """What a checkpoint holds: the train state and the run's root key."""
  return {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state, 'rng': jax.random.key_data(root_key)}


def restore_state(state, tree: dict):
  """`state` with the contents of a restored `state_tree`."""
  return state.replace(step=tree['step'], params=tree['params'],
                       batch_stats=tree['batch_stats'], opt_state=tree['opt_state'])


class Checkpoints:

  def __init__(self, workdir: str, keep: int, read_only: bool = False):
    self._read_only = read_only
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
            create=not read_only, read_only=read_only, enable_async_checkpointing=False))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, tree) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(tree), force=True)
    self._manager.wait_until_finished()

  def restore_latest(self, like) -> tuple[int | None, object]:
    """Restores the newest readable checkpoint into the structure of `like`.

    Returns (step, tree), or (None, like) when there is no readable checkpoint.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    unreadable = []
    for step in reversed(self.steps()):
      try:
        tree = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        break
      except Exception as e:  # noqa: BLE001 - any damage means: try the previous one
        reason = ' '.join(str(e).split())[:160] or type(e).__name__
        print(f'warning: checkpoint at step {step} is unreadable ({type(e).__name__}: {reason}); '
              'falling back to the previous one', file=sys.stderr, flush=True)
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
