"""Claim sweeps longer than a session: finished runs kept in git, so the next session (perhaps
another machine) restores them and trains only the rest.

  python -m experiments.findings --run --only=depth --carry   # restore kept runs, train the
                                                              # rest, report, keep the finished
  ... the session ends; the next one runs the same command and picks up where it stopped.

A kept run (experiments/results/kept_runs/<sweep>/<run>/) is its workdir without checkpoints:
the config, resolved choices, status, TensorBoard events, and the measurements the claims cache
there while findings analyzes them (eval_*.json, position_loss.json, ...), so a report needs no
checkpoint. Git keeps no file times, and findings reads a sweep's start (was its rule committed
before?) and wall time from them, so each file's time is kept in times.json and given back on
restore. A run is restored only into a sweep that still has it with the config it was trained
with (a changed sweep trains it afresh, and its new copy replaces the old one when kept), and
never over an existing workdir.
"""

from __future__ import annotations

import os
import shutil

from training import workdir as wd

STORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'kept_runs')
TIMES_FILE = 'times.json'
LEFT_BEHIND = {'checkpoints'}     # too large for git; a finished run's report does not need them


def keep(directory: str, store: str) -> list[str]:
  """Copies every run of the sweep in `directory` that reached a final state into `store`
  (replacing an older copy of it); returns their names."""
  from experiments.sweep import ENDED   # noqa: PLC0415 (JAX)
  kept = []
  for name in sorted(os.listdir(directory)):
    source = os.path.join(directory, name)
    if not os.path.isdir(source) or (wd.read_status(source) or {}).get('state') not in ENDED:
      continue
    target = os.path.join(store, name)
    if os.path.isdir(target):
      shutil.rmtree(target)
    os.makedirs(target)
    times = {}
    for f in sorted(os.listdir(source)):
      if f in LEFT_BEHIND or not os.path.isfile(os.path.join(source, f)):
        continue
      shutil.copy2(os.path.join(source, f), target)
      times[f] = os.path.getmtime(os.path.join(source, f))
    wd.write_json_atomic(os.path.join(target, TIMES_FILE), times)
    kept.append(name)
  return kept


def restore(store: str, directory: str, configs: dict[str, dict]) -> tuple[list[str], list[str]]:
  """Copies each kept run of `store` that the sweep still has (`configs`: {run name: its config
  now, as plain JSON}) with the config it was trained with into `directory`, unless a workdir of
  that name exists there, with its files' times. Returns (restored, stale): the names copied,
  and those kept with another config (left in the store; the sweep trains them afresh)."""
  if not os.path.isdir(store):
    return [], []
  from experiments.sweep import config_changes   # noqa: PLC0415 (JAX)
  restored, stale = [], []
  for name in sorted(set(os.listdir(store)) & set(configs)):
    target = os.path.join(directory, name)
    source = os.path.join(store, name)
    old = wd.read_json(os.path.join(source, wd.CONFIG_FILE)) or {}
    if config_changes(old, configs[name]):
      stale.append(name)
      continue
    if os.path.exists(target):
      continue
    times = wd.read_json(os.path.join(source, TIMES_FILE)) or {}
    tmp = target + '.restoring'
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(TIMES_FILE))
    for f, t in times.items():
      os.utime(os.path.join(tmp, f), (t, t))
    os.rename(tmp, target)   # whole or not at all: a half-restored run is never read as a run
    restored.append(name)
  return restored, stale
