"""Several processes training one run (multi-host): stopping together.

- Preemption is synchronized: a signal to any process (SIGTERM from the scheduler, SIGUSR2 from
  Slurm's `--signal` or submitit, Ctrl-C) reaches JAX's preemption sync manager, and every
  process stops at the same step (`reached_preemption_sync_point`), so that all of them save the
  same checkpoint together.
- A dead peer is noticed by `Watchdog`: each process writes a heartbeat to the coordination
  service's key-value store every second and reads the others'. A peer silent for `timeout`
  seconds (killed, its machine gone), or a coordinator that no longer answers, ends this
  process: the run's status becomes `failed` with the reason, one line on stderr, exit 1. JAX's
  own heartbeat time-out is set longer (`jax_heartbeat_timeout`), because when it fires JAX
  aborts the process from C++ with a page of logs and no chance to record anything.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Callable

import jax

KEY = 'normlab/heartbeat/'
INTERVAL = 1.0   # seconds between heartbeats
timeout_seconds = 60   # set by parallel.maybe_initialize_distributed (train.py --peer_timeout)


def jax_heartbeat_timeout(peer_timeout: int) -> int:
  """JAX's own time-out: long enough that the watchdog always acts first."""
  return 2 * peer_timeout + 30


def several() -> bool:
  return jax.process_count() > 1


def forward_to_jax(signum: int) -> None:
  """Hands a signal to JAX's preemption notifier, which listens for SIGTERM (installed by
  jax.distributed.initialize; Python's handler must then leave SIGTERM alone)."""
  del signum
  os.kill(os.getpid(), signal.SIGTERM)


def reached_stop(step: int) -> bool:
  """True in every process at the same step once any of them was signalled. Every process must
  call it at every step."""
  from jax.experimental import multihost_utils
  return multihost_utils.reached_preemption_sync_point(step)


def _client():
  from jax._src import distributed
  return distributed.global_state.client


class Watchdog:
  """A daemon thread; `on_lost(reason)` is called (once, from the thread) when a peer has sent no
  heartbeat for `timeout` seconds or the coordination service stopped answering."""

  def __init__(self, on_lost: Callable[[str], None], timeout: float | None = None):
    self.timeout, self.on_lost = timeout or timeout_seconds, on_lost
    self.me, self.count = jax.process_index(), jax.process_count()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._watch, name='normlab-peer-watchdog', daemon=True)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()

  def _watch(self) -> None:
    client, beat = _client(), 0
    seen = {p: (None, time.monotonic()) for p in range(self.count) if p != self.me}
    while not self._stop.wait(INTERVAL if beat else 0):
      beat += 1
      try:
        client.key_value_set(f'{KEY}{self.me}', str(beat), allow_overwrite=True)
        for p, (value, since) in seen.items():
          try:
            now_value = client.key_value_try_get(f'{KEY}{p}')
          except Exception:  # noqa: BLE001 - not written yet (NOT_FOUND)
            now_value = None
          if now_value != value:
            seen[p] = (now_value, time.monotonic())
      except Exception as e:  # noqa: BLE001 - the coordinator (process 0) is gone
        if self._stop.is_set():
          return
        reason = ' '.join(str(e).split())[:120]
        self.on_lost(f'the coordination service (process 0) stopped answering ({reason})')
        return
      silent = [p for p, (_, since) in seen.items() if time.monotonic() - since > self.timeout]
      if silent:
        which = ', '.join(str(p) for p in silent)
        self.on_lost(f'process {which} of {self.count} sent no heartbeat for {self.timeout:g} s '
                     '(killed, or its machine is gone)')
        return


# What a collective reports when the process on the other end is gone (gloo on CPU, NCCL on GPU)
# or the coordination service lost it.
LOST_MARKERS = ('Gloo', 'Connection reset by peer', 'Connection closed by peer',
                'remote process exited', 'NCCL', 'heartbeat timeout',
                'Failed to send RPC to coordination service')


def lost_peer(error: BaseException) -> str | None:
  """A one-line reason when `error` means a peer process is gone (multi-process only)."""
  if jax.process_count() == 1:
    return None
  text = ' '.join(str(error).split())
  if any(m in text for m in LOST_MARKERS):
    return f'a peer process is gone: a collective failed ({text[:160]})'
  return None


def exit_now(message: str) -> None:
  """From the watchdog thread: one line and exit 1, without waiting for the main thread (it may
  be blocked in a collective with the dead peer forever)."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)
