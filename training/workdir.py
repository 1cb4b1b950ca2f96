"""A workdir is a run: its resolved config, status, checkpoints and TensorBoard events.

Everything here can be read back without running a model: `config.json` (the config as given),
`resolved.json` (what its `auto` speed choices became, on which backend and devices),
`status.json` (running / finished / diverged / interrupted / failed, step, metrics, error).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from typing import Any

import ml_collections

from errors import ConfigError

CONFIG_FILE = 'config.json'
STATUS_FILE = 'status.json'
RESOLVED_FILE = 'resolved.json'   # what `auto` speed choices became, and on which backend


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON types (tuples become lists), so it round-trips through JSON."""
  return json.loads(config.to_json())


def flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


# Keys added to the configs after runs may have been written, with the value that reproduces
# what those runs did: an old workdir without the key reads as having this value. The model's
# come from their declarations (`Key.before`); these are the rest.
OTHER_LATER_KEYS = {'optimizer.weight_decay_on': 'matrices', 'optimizer.agc': 0.0,
                    'optimizer.b2': 0.999, 'data.validation_examples': 0, 'platform': 'auto',
                    'transfer_guard': 'allow', 'compilation_cache': '',
                    'data.pipeline': 'auto', 'data.stream_workers': 4,
                    'matmul_precision': 'default',
                    'deterministic': False}


def later_keys() -> dict[str, Any]:
  import models   # noqa: PLC0415 (importing flax)
  return {**models.later_keys(), **OTHER_LATER_KEYS}


def with_later_keys(d: dict, only: set | None = None) -> dict:
  """`d` with each of `later_keys()` it lacks (those in `only`, when given) set to its old value."""
  d = json.loads(json.dumps(d))
  for key, value in later_keys().items():
    if only is not None and key not in only:
      continue
    *path, last = key.split('.')
    node = d
    for p in path:
      node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict) and last not in node:
      node[last] = value
  return d


def config_diff(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """Keys whose values differ: {key: (old, new)}; a missing key shows as '<absent>' (unless it
  is one of `later_keys()` that the new config has: read as its old default)."""
  new = flatten(new)
  old = flatten(with_later_keys(old, only=set(new)))
  return {k: (old.get(k, '<absent>'), new.get(k, '<absent>'))
          for k in sorted(set(old) | set(new)) if old.get(k, '<absent>') != new.get(k, '<absent>')}


def read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def is_primary() -> bool:
  """Multi-host: only process 0 writes a workdir's files (orbax coordinates checkpoints)."""
  import jax
  return jax.process_index() == 0


def write_json_atomic(path: str, obj: dict, every_process: bool = False) -> None:
  """Write to a temporary file and rename: a reader never sees half a file. Process 0 only,
  unless `every_process` (a peer was lost: process 0 may be the one gone)."""
  if not (every_process or is_primary()):
    return
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  d = read_json(os.path.join(workdir, CONFIG_FILE))
  if d is None:
    raise ConfigError(f'{workdir} holds no run ({CONFIG_FILE} not found)')
  return ml_collections.ConfigDict(with_later_keys(d))


def read_status(workdir: str) -> dict | None:
  return read_json(os.path.join(workdir, STATUS_FILE))


def write_status(workdir: str, state: str, every_process: bool = False, **fields) -> None:
  write_json_atomic(os.path.join(workdir, STATUS_FILE),
                    {'state': state, 'time': time.time(), **fields}, every_process)


LOCK_FILE = 'lock.json'
PROBE_PREFIX = '.probe.'   # check_writable's short-lived file
HEARTBEAT_SECONDS = 30    # the holder touches its lock this often
STALE_SECONDS = 180       # a lock not touched for this long belongs to a dead process


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # someone else's process
    return True
  return True


def lock_holder(workdir: str) -> dict | None:
  """Who holds `workdir` ({host, pid, since}), or None when nobody live does. A lock is stale
  when its process is gone (same host), is this very process (a run that ended without closing),
  or its heartbeat stopped (another host: the process was killed with its machine)."""
  path = os.path.join(workdir, LOCK_FILE)
  try:
    with open(path) as f:
      holder = json.load(f)
    age = time.time() - os.path.getmtime(path)
  except OSError:   # no lock (or no such directory: check_writable says why)
    return None
  except ValueError:   # being written this instant: held
    return {'host': '?', 'pid': '?', 'since': time.time()}
  same_host = holder.get('host') == socket.gethostname()
  if same_host and (holder.get('pid') == os.getpid() or not _alive(int(holder.get('pid', 0)))):
    return None
  if age > STALE_SECONDS:
    return None
  return holder


def in_use_error(workdir: str, holder: dict) -> ConfigError:
  since = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('since', 0)))
  return ConfigError(f'{workdir} is in use by process {holder.get("pid")} on '
                     f'{holder.get("host")} (since {since}); a workdir holds one run at a time. '
                     f'If that process is dead, remove {os.path.join(workdir, LOCK_FILE)}')


class WorkdirLock:
  """One process trains in a workdir at a time (a requeued job while the old one still runs is
  refused). The lock names its host and pid; a heartbeat thread touches it, so a lock left by a
  killed process is recognised as stale and taken over (see `lock_holder`)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.workdir = workdir
    self._me = {'host': socket.gethostname(), 'pid': os.getpid(), 'since': time.time()}
    self._stop = threading.Event()
    self._thread = None

  def acquire(self) -> None:
    if not is_primary():
      return
    tmp = f'{self.path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:   # the lock appears whole (a link), never half written
      json.dump(self._me, f)
      f.flush()
      os.fsync(f.fileno())
    try:
      self._take(tmp)
    finally:
      os.remove(tmp)
    self._thread = threading.Thread(target=self._beat, daemon=True, name='workdir-lock')
    self._thread.start()

  def _take(self, tmp: str) -> None:
    for _ in range(3):
      try:
        os.link(tmp, self.path)   # fails if the lock exists: atomic test-and-set
        return
      except FileExistsError:
        holder = lock_holder(self.workdir)
        if holder is not None:
          raise in_use_error(self.workdir, holder) from None
        try:   # stale: exactly one process gets to move it away
          os.replace(self.path, f'{self.path}.stale.{os.getpid()}')
          os.remove(f'{self.path}.stale.{os.getpid()}')
        except FileNotFoundError:
          pass
        continue
    raise ConfigError(f'could not lock {self.workdir}: another process keeps taking it')

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        os.utime(self.path)
      except OSError:
        pass

  def release(self) -> None:
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    self._thread = None
    try:
      with open(self.path) as f:
        if json.load(f) == self._me:
          os.remove(self.path)
    except (OSError, ValueError):
      pass


def check_writable(workdir: str) -> None:
  """Creates `workdir` (and its checkpoints directory, if there) far enough to know that files
  can be written there; one line naming the place and the reason if not. Before training.
  (A `workdir` that is a file, or under one, was refused earlier: run.claim_workdir.)"""
  for directory in (workdir, os.path.join(workdir, 'checkpoints')):
    if directory != workdir and not os.path.isdir(directory):
      continue
    probe = os.path.join(directory, f'{PROBE_PREFIX}{os.getpid()}')
    try:
      os.makedirs(directory, exist_ok=True)
      with open(probe, 'w') as f:
        f.write('ok')
      os.remove(probe)
    except OSError as e:
      raise ConfigError(f'cannot write in {directory}: {e.strerror or e}') from None


def failure_reason(error: BaseException) -> str | None:
  """A human reason for an error of the machine rather than of the code (a full disk, a
  directory made read-only, a quota), or None. Orbax/TensorStore report a full disk as
  RESOURCE_EXHAUSTED in the text of another exception."""
  for e in (error, error.__cause__, error.__context__):
    if isinstance(e, OSError) and e.errno:
      return os.strerror(e.errno).lower()
  text = str(error)
  code = re.search(r"os_error_code='?(\d+)", text)   # TensorStore's report of an OS error
  if code:
    return os.strerror(int(code.group(1))).lower()
  from training import peers   # a collective with a process that is gone
  lost = peers.lost_peer(error)
  if lost:
    return lost
  for marker, reason in (('No space left', 'no space left on device'),
                         ('RESOURCE_EXHAUSTED', 'no space left on device'),
                         ('Read-only file system', 'read-only file system'),
                         ('Permission denied', 'permission denied')):
    if marker in text:
      return reason
  return None
