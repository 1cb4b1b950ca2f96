"""A run's lifecycle in its workdir: claim -> open (or resume) -> log, eval, save -> finish.

A run is `running` until it ends `finished`, `diverged` (its train loss passed the
threshold or was not finite), `interrupted` (SIGTERM: a checkpoint is saved, the same command
resumes it) or `failed` (an exception: recorded with the error). `status.json` always holds the
latest of these; a workdir never holds two runs (a different config is refused before anything
is written).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import jax
import numpy as np

from errors import ConfigError
from training import checkpoints as ckpt_lib
from training import diagnostics, metric_writer, parallel, peers, tasks
from training import workdir as wd
from training.evaluation import evaluate_test
from training.experiment import Experiment
from training.metric_writer import MetricWriter

RUNNING, FINISHED, DIVERGED, INTERRUPTED, FAILED = (
    'running', 'finished', 'diverged', 'interrupted', 'failed')
DONE = (FINISHED, DIVERGED)   # a run in one of these states is not trained again

# Keys that may differ when resuming a workdir: they change logging, checkpointing, the checks
# on host transfers and where the (same) batches are made only.
RESUMABLE_KEYS = ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
                  'keep_checkpoints', 'diagnostics_every_steps', 'transfer_guard',
                  'compilation_cache', 'data.pipeline', 'data.stream_workers')

# Config keys shown as hyperparameters in TensorBoard's HParams dashboard for a run outside a
# sweep (a sweep shows its own axes instead).
DEFAULT_HPARAMS = ('model.name', 'model.norm', 'model.residual', 'model.depth', 'model.width',
                   'model.norm_position', 'data.name', 'data.batch_size', 'data.variable_length',
                   'optimizer.name', 'optimizer.learning_rate', 'seed')
HPARAM_METRICS = ['eval/accuracy', 'eval/loss', 'train/loss']


def claim_workdir(config, workdir: str) -> dict | None:
  """Checks `workdir` against `config` without writing. Returns the existing status (None for a
  new workdir). A different config stops with the differing keys."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'--workdir {workdir} is a file, not a directory')
  ancestor = os.path.dirname(os.path.abspath(workdir))
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise ConfigError(f'cannot write in {workdir}: {ancestor} is a file, not a directory')
  holder = wd.lock_holder(workdir) if wd.is_primary() else None   # process 0 holds the lock
  if holder is not None:
    raise wd.in_use_error(workdir, holder)
  old = wd.read_json(os.path.join(workdir, wd.CONFIG_FILE))
  if old is None:
    # another process starting the same run this instant leaves only its lock and probes
    if os.path.isdir(workdir) and [f for f in os.listdir(workdir) if not (
        f == wd.LOCK_FILE or f.startswith((wd.LOCK_FILE + '.', wd.PROBE_PREFIX)))]:
      raise ConfigError(f'{workdir} is not empty and holds no run ({wd.CONFIG_FILE} missing); '
                        'choose a new --workdir')
    return None
  diff = {k: v for k, v in wd.config_diff(old, wd.config_to_dict(config)).items()
          if k not in RESUMABLE_KEYS}
  if diff:
    shown = '; '.join(f'{k}: {a!r} -> {b!r}' for k, b_a in diff.items() for a, b in [b_a])
    raise ConfigError(f'{workdir} holds a run with a different config ({shown}); '
                      'use a new --workdir')
  return wd.read_status(workdir) or {'state': RUNNING}


class Run:
  """One run: its workdir, TensorBoard writer, checkpoints and state. `tag` prefixes its lines."""

  def __init__(self, config, workdir: str, hparams: dict | None, tag: str = ''):
    self.previous = claim_workdir(config, workdir)   # refuses before anything is written
    self.config, self.workdir, self.tag = config, workdir, tag
    flat = wd.flatten(wd.config_to_dict(config))
    self.hparams = hparams or {k: flat[k] for k in DEFAULT_HPARAMS if k in flat}
    self.root_key = jax.random.key(config.seed)
    self.state, self.metrics, self.end_step = RUNNING, None, None
    self.grad_history = []   # per diagnostic step: the gradient norm of each layer
    self.grad_steps = []     # ... and that step
    self.start_step = 0
    self.writer = self.checkpoints = self.lock = self.layers = None   # set by open / start
    self.signal = None   # the signal that interrupted the run

  @property
  def done_before(self) -> bool:
    return self.previous is not None and self.previous['state'] in DONE

  @property
  def live(self) -> bool:
    return self.state == RUNNING

  def open(self, exp: Experiment, fresh):
    """Makes sure the workdir can be written and takes its lock; writes the config and what
    `auto` resolved to; restores the newest readable checkpoint (else keeps `fresh`). Returns
    the train state. Refuses (ConfigError) before writing anything else when another process
    holds the workdir or the run was started on a setup that computes another function."""
    try:
      wd.check_writable(self.workdir)
    except ConfigError as e:
      self._record_unwritable(e)
      raise
    self.lock = wd.WorkdirLock(self.workdir)
    self.lock.acquire()
    try:
      self.previous = claim_workdir(self.config, self.workdir)   # as it is now that we hold it
      if self.done_before:
        raise ConfigError(f'{self.workdir}: another process finished this run meanwhile')
      resolved = self._check_resolved(exp)
    except BaseException:
      self.lock.release()
      raise
    wd.write_json_atomic(os.path.join(self.workdir, wd.CONFIG_FILE),
                         wd.config_to_dict(self.config))
    wd.write_json_atomic(os.path.join(self.workdir, wd.RESOLVED_FILE), resolved)
    self.layers = list(fresh.params)   # in the order the model defines them (input first)
    self.checkpoints = ckpt_lib.Checkpoints(self.workdir, self.config.keep_checkpoints)
    step, tree = self.checkpoints.restore_latest(ckpt_lib.state_tree(fresh, self.root_key),
                                                 parallel.replicated(exp.mesh))
    if step is None:
      was = (self.previous or {}).get('step') or 0
      if was:   # a run that had trained, and no checkpoint it could go on from
        print(f'{self.workdir}: no readable checkpoint (the run was {self.previous["state"]} '
              f'at step {was}): starting again from step 0; the curves it logged are dropped',
              file=sys.stderr, flush=True)
      return fresh
    print(f'{self.workdir}: resumed from the checkpoint at step {step}', flush=True)
    return ckpt_lib.restore_state(fresh, tree)

  def _record_unwritable(self, error: ConfigError) -> None:
    """A run left `running` by a process that is gone, whose workdir can no longer be written
    below its top (a read-only checkpoints mount): its status says `failed`, and why, so that
    nobody reads it as still training. Nothing is written when another live process holds the
    workdir, or the status cannot be written either."""
    status = wd.read_status(self.workdir)
    if not status or status.get('state') != RUNNING or wd.lock_holder(self.workdir):
      return
    try:
      wd.write_status(self.workdir, FAILED, step=status.get('step', 0),
                      metrics=status.get('metrics', {}), error=str(error))
    except OSError:
      pass

  def _check_resolved(self, exp: Experiment) -> dict:
    """What to write to resolved.json: what resolved here, and (when resuming) what resolved
    where the run trained before. Keys in `exp.fixed` must match those (the device count of
    per-device BatchNorm): a different value would change the experiment mid-run."""
    old = wd.read_json(os.path.join(self.workdir, wd.RESOLVED_FILE))
    if old is None or self.previous is None:
      return exp.resolved
    first = {k: v for k, v in old.items() if k != 'earlier'}
    for key in exp.fixed:
      if key in first and first[key] != exp.resolved[key]:
        raise ConfigError(f'{self.workdir} was trained with {key}={first[key]} and this '
                          f'process has {key}={exp.resolved[key]}: with '
                          f'model.bn_scope={self.config.model.bn_scope} that changes what '
                          f'the model computes; resume with {key}={first[key]} or use a new '
                          '--workdir')
    earlier = old.get('earlier', [])
    return {**exp.resolved, 'earlier': earlier + ([first] if first != exp.resolved else [])}

  def start(self, step: int) -> None:
    """Starts logging from `step`. What a killed run logged that this one logs again is dropped
    from the event files first: everything after `step`, and at `step` all but the train and
    eval points (written before the checkpoint at `step`; diagnostics at `step` come after it;
    at the last step, the final eval is run again). The HParams session start is written once:
    at step 0, or again if it was lost."""
    self.start_step = step
    last = step >= self.config.num_train_steps
    self.writer = MetricWriter(self.workdir, resume_step=step,
                               kept_at_step=('train/',) if last else ('train/', 'eval/'))
    if step == 0 or not metric_writer.has_session_start(self.workdir):
      self.writer.hparams(self.hparams, HPARAM_METRICS)
    wd.write_status(self.workdir, RUNNING, step=step)

  def log_train(self, step: int, sums: dict, learning_rate: float, speed: float | None) -> None:
    """Writes and prints the train metrics summed since the last log line (`speed`: train
    steps/s, None if none was timed); a loss above the threshold (or NaN) ends the run."""
    metrics = tasks.summarize(sums)
    if speed is not None:
      metrics['steps_per_sec'] = speed
    metrics['learning_rate'] = learning_rate
    self.writer.scalars(step, 'train', metrics)
    print(f'{self.tag}step {step:>6}  train  loss {metrics["loss"]:.4f}  accuracy '
          f'{metrics["accuracy"]:.4f}  lr {metrics["learning_rate"]:.4g}'
          + (f'  {speed:.1f} steps/s' if speed else ''), flush=True)
    if not metrics['loss'] <= self.config.divergence_threshold:  # also catches NaN
      self.state, self.end_step = DIVERGED, step
      print(f'{self.tag}diverged at step {step} (train loss {metrics["loss"]})',
            file=sys.stderr, flush=True)

  def log_eval(self, step: int, metrics: dict, final: bool = False) -> None:
    self.writer.scalars(step, 'eval', metrics)
    print(f'{self.tag}step {step:>6}  eval   loss {metrics["loss"]:.4f}  '
          f'accuracy {metrics["accuracy"]:.4f}', flush=True)
    if final:
      self.metrics = metrics
      print(f'{self.tag}final test accuracy {metrics["accuracy"]:.4f} '
            f'(loss {metrics["loss"]:.4f}) at step {step}', flush=True)

  def log_diagnostics(self, step: int, stats: dict) -> None:
    """Per-layer statistics {stat: {layer: value}} (layers from the input down, in the order
    the model defines them), and the gradient-norm heat map of every diagnostic step so far
    (rows: layers; columns: steps)."""
    layers = self.layers
    for stat, per_layer in stats.items():
      self.writer.scalars(step, stat, {name: float(per_layer[name]) for name in layers
                                       if name in per_layer})
    if not self.grad_history and self.start_step:   # resumed: the columns logged before
      logged = metric_writer.read_scalars(self.workdir, 'grad_norm')
      for s in sorted({s for per_step in logged.values() for s in per_step if s < step}):
        self.grad_history.append(np.array([logged[f'grad_norm/{name}'][s] for name in layers]))
        self.grad_steps.append(s)
    self.grad_history.append(np.array([stats['grad_norm'][name] for name in layers]))
    self.grad_steps.append(step)
    self.writer.image(step, 'grad_norm/heatmap',
                      diagnostics.heatmap(self.grad_steps, self.grad_history, layers))

  def save(self, state, step: int) -> None:
    """A checkpoint at `step` (if not already there). The curves are flushed first, so that
    every point up to a checkpoint is on disk before the checkpoint is."""
    self.writer.flush()
    if step not in self.checkpoints.steps():
      self.checkpoints.save(step, ckpt_lib.state_tree(state, self.root_key))
    wd.write_status(self.workdir, RUNNING, step=step)

  def interrupt(self, step: int, signum: int) -> None:
    self.state, self.end_step, self.signal = INTERRUPTED, step, signal.Signals(signum).name
    print(f'{self.tag}run interrupted ({self.signal}) at step {step}; the same command resumes '
          'it', flush=True, file=sys.stderr)

  def abandon(self) -> None:
    """Lets go of an opened run without ending it (its status stays as it was)."""
    if self.checkpoints is not None:
      self.checkpoints.close()
    if self.lock is not None:
      self.lock.release()

  def close(self, step: int, error: BaseException | None = None) -> dict:
    """Ends the run as it stands (or `failed` with `error`); returns its status."""
    if error is not None:
      self.state = FAILED
    elif self.state == RUNNING:
      self.state = FINISHED
    step = self.end_step if self.end_step is not None else step
    extra = {'signal': self.signal} if self.state == INTERRUPTED else {}
    if error is not None:
      reason = wd.failure_reason(error)
      extra = {'error': reason or f'{type(error).__name__}: {error}'}
    try:   # a full disk may refuse these too: the status is the one that must get through
      if self.writer is not None:
        if self.state in DONE:
          self.writer.end_session(self.hparams, HPARAM_METRICS)
        self.writer.close()
    except OSError:
      pass
    if self.checkpoints is not None:
      self.checkpoints.close()
    try:   # a lost peer may be process 0, which writes the status otherwise
      wd.write_status(self.workdir, self.state, step=step, metrics=self.metrics,
                      every_process=error is not None and peers.lost_peer(error) is not None,
                      **extra)
    except OSError as e:
      if error is None:
        raise
      print(f'{self.tag}could not record the failure in {wd.STATUS_FILE}: {e.strerror or e}',
            file=sys.stderr, flush=True)
    finally:
      if self.lock is not None:
        self.lock.release()
    return {'state': self.state, 'step': step, 'metrics': self.metrics, **extra}


def peer_lost(runs: list[Run], step: int, reason: str) -> None:
  """From the watchdog thread, while the main thread may be blocked in a collective forever:
  records `failed` with the reason (in every surviving process: process 0 may be the one gone)
  and lets go of the lock. Curves are not flushed (the main thread may be writing them); every
  point up to the last checkpoint is on disk already."""
  for r in runs:
    if r.live:
      wd.write_status(r.workdir, FAILED, step=step, error=reason, every_process=True)
    if r.lock is not None:
      r.lock.release()


def already_done(runs: list[Run]) -> list[dict]:
  """The status of a lone run that already finished (or diverged): nothing to train."""
  if len(runs) > 1:
    raise ConfigError('a population of seeds must not include finished runs; train the '
                      'unfinished ones')
  s = runs[0].previous
  print(f'{runs[0].workdir}: run already {s["state"]} at step {s.get("step")}; metrics '
        f'{s.get("metrics")}', flush=True)
  return [s]



class Preemption:
  """SIGTERM (what schedulers send before preemption), SIGUSR2 (what Slurm's `--signal` and
  submitit send before a time-out or preemption) and SIGINT (Ctrl-C) ask the loop to save a
  checkpoint and end the run `interrupted` (`stop_at`, checked each step). `signal` is the one
  received (train.py exits 143 for SIGTERM/SIGUSR2, 130 for SIGINT). A second Ctrl-C stops at
  once (KeyboardInterrupt: the run ends `failed`; the last checkpoint stays).

  With several processes the stop is synchronized (training/peers.py): SIGTERM is left to JAX's
  preemption notifier, the other signals are handed to it, and every process stops at the same
  step."""

  SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)

  def __init__(self):
    self.signal = None
    self._previous = {}
    self.several = False

  @property
  def requested(self) -> bool:
    return self.signal is not None

  def __enter__(self):
    self.several = peers.several()
    mine = [s for s in self.SIGNALS if not (self.several and s == signal.SIGTERM)]
    try:
      self._previous = {s: signal.signal(s, self._handle) for s in mine}
    except ValueError:  # not the main thread: leave signals alone
      self._previous = {}
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.signal == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal = signum
    if self.several:
      peers.forward_to_jax(signum)
    if signum == signal.SIGINT:
      print('interrupted: saving a checkpoint (Ctrl-C again to stop at once)',
            file=sys.stderr, flush=True)

  def stop_at(self, step: int) -> bool:
    """Whether to save and stop after `step`. With several processes, every process must ask at
    every step: it is True in all of them at the same step."""
    if not self.several:
      return self.requested
    if peers.reached_stop(step):
      self.signal = self.signal or signal.SIGTERM   # a peer's signal, or SIGTERM to JAX
      return True
    return False

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      signal.signal(s, previous)


# ---- the loop's actions over its runs (training/loop.py)

def open_all(runs, exps, fresh) -> list:
  """Each run's workdir opened (claimed, resumed); if one refuses, the ones opened let go."""
  states = []
  try:
    for r, e, f in zip(runs, exps, fresh):
      states.append(r.open(e, f))
  except BaseException:
    for r in runs[:len(states)]:
      r.abandon()
    raise
  return states


def log_all(runs, pop, totals, done, learning_rate, speed) -> None:
  """The train metrics summed on the devices since the last log line, fetched in one explicit
  transfer with the learning rate, written for every live run."""
  totals, learning_rate = jax.device_get((totals, learning_rate))
  for k, r in live(runs):
    r.log_train(done, pop.member(totals, k), float(learning_rate), speed)


def evaluate_and_save(runs, exp, steps, pop, state, done, clock, stopping) -> None:
  """The periodic evaluation and checkpoint after step `done` (the clock paused for both)."""
  config = exp.config
  evaluating = done % config.eval_every_steps == 0 and done < config.num_train_steps
  saving = done % config.checkpoint_every_steps == 0 or stopping
  with clock.paused(state) if evaluating or saving else contextlib.nullcontext():
    for k, r in live(runs):
      if evaluating:
        r.log_eval(done, evaluate_test(exp, steps, pop.member(state, k)))
      if saving:
        r.save(pop.member(state, k), done)


def diagnose_all(runs, steps, pop, state, batch, step, clock) -> None:
  """Per-layer diagnostics of the state before step `step` (the clock paused)."""
  with clock.paused(state):
    stats = jax.device_get(steps.diagnose(state, batch))
    for k, r in live(runs):
      r.log_diagnostics(step, pop.member(stats, k))


def live(runs):
  """(index, run) of the runs still training."""
  return [(k, r) for k, r in enumerate(runs) if r.live]
