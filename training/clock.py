"""Train steps per second, timing train steps only."""

from __future__ import annotations

import contextlib
import time

import jax


class TrainClock:
  """Seconds spent in train steps only, for steps/s. Left out: the process's first step (it
  compiles) and whatever runs between `stop` and `start` (eval, checkpoints, diagnostics).
  Both wait for `state`, so that asynchronous dispatch does not move time between the two."""

  def __init__(self):
    self.seconds, self.steps, self._since = 0.0, 0, None

  def start(self, state):
    jax.block_until_ready(state)
    self._since = time.perf_counter()

  def tick(self, state, first: bool):
    """After each train step: the first one compiles, so timing starts at its end."""
    if first:
      self.start(state)
    else:
      self.steps += 1

  @contextlib.contextmanager
  def paused(self, state):
    """Leaves the time spent inside (eval, checkpoints, diagnostics) out of train time."""
    self.stop(state)
    yield
    self.start(state)

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
