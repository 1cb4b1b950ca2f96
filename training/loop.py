"""The one train loop, for every model family (nothing here branches on the model, the norm or
the data), for one run or several seeds of one config trained as one program.

Claim the workdirs (refusing before anything is written), build, resume, compile; each step:
diagnostics, train, then log / eval / save when due; stop when preempted or no run is live;
evaluate, save and close every run. Its jobs: experiment.py (config -> experiment), step.py
(the jitted steps), population.py (seeds as one program), run.py (a run's workdir).
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np

from training import parallel, peers
from training.clock import TrainClock
from training.experiment import build_experiment, create_train_state
from training.population import Population, check_population
from training.evaluation import evaluate_test
from training.run import (Preemption, Run, already_done, diagnose_all, evaluate_and_save, live,
                          log_all, open_all, peer_lost)
from training.step import compile_steps


def train_and_evaluate(config, workdir: str, hparams: dict | None = None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns its status dict (final metrics inside).
  hparams: shown in TensorBoard's HParams dashboard (a sweep passes its overrides)."""
  return train_seeds([config], [workdir], [hparams])[0]


def train_seeds(configs: list, workdirs: list[str], hparams: list | None = None) -> list[dict]:
  """Seeds of one config as one compiled program (jax.vmap); each keeps its own workdir,
  checkpoints, TensorBoard run and status, exactly as if trained alone."""
  check_population(configs)
  runs = [Run(c, w, h) for c, w, h in zip(configs, workdirs, hparams or [None] * len(configs))]
  if any(r.done_before for r in runs):
    return already_done(runs)
  mesh = parallel.data_mesh()
  exps = [build_experiment(c, mesh) for c in configs]   # data loaded, nothing written yet
  pop = Population(exps)
  fresh = [create_train_state(exps[0], r.root_key) for r in runs]   # one model, one tx
  with Preemption() as preemption:   # from the first write on, Ctrl-C / SIGTERM save and stop
    states = open_all(runs, exps, fresh)
    if len({int(s.step) for s in states}) > 1:   # one program needs one step counter
      for r in runs:
        r.abandon()
      print('seeds resume from different steps: training them one by one', flush=True)
      return [train_and_evaluate(c, r.workdir, r.hparams) for c, r in zip(configs, runs)]
    exp, start = exps[0], int(states[0].step)
    for k, r in enumerate(runs):
      r.tag = pop.tag(k)
      r.start(start)
    steps, state, config = compile_steps(exp, pop.size), pop.stack(states), exp.config
    print(exp.describe(fresh[0].params, pop.seeds, start), flush=True)
    pending, done, clock = None, start, TrainClock()   # done: steps completed

    def lost(reason: str) -> None:   # a peer process is gone (several processes only)
      peer_lost(runs, done, reason)
      peers.exit_now(f'{reason}; status.json: failed. Restart every process with the same '
                     'command to resume from the last checkpoint')
    try:
      with peers.Watchdog(lost) if peers.several() else contextlib.nullcontext(), \
           contextlib.ExitStack() as guarded:
        for step, batch in pop.batches(start, config.num_train_steps):
          if step == start + 1:   # after the first step (it compiles), implicit transfers are
            guarded.enter_context(jax.transfer_guard(config.transfer_guard))  # logged / refused
          if config.diagnostics_every_steps and step % config.diagnostics_every_steps == 0:
            diagnose_all(runs, steps, pop, state, batch, step, clock)
          state, sums = steps.train(state, batch)
          done = step + 1
          clock.tick(state, first=step == start)
          pending = sums if pending is None else steps.accumulate(pending, sums)
          if done % config.log_every_steps == 0 or done == config.num_train_steps:
            log_all(runs, pop, pending, done, steps.learning_rate(state), clock.rate(state))
            pending = None
          stopping = preemption.stop_at(done)
          evaluate_and_save(runs, exp, steps, pop, state, done, clock, stopping)
          for _, r in live(runs) if stopping else []:
            r.interrupt(done, preemption.signal)
          if not any(r.live for r in runs):
            break
        done = int(np.max(jax.device_get(state.step)))
        for k, r in live(runs):
          r.log_eval(done, evaluate_test(exp, steps, pop.member(state, k)), final=True)
          r.save(pop.member(state, k), done)
    except BaseException as e:   # Ctrl-C twice included: the status says failed, and why
      for r in runs:
        r.close(done, error=e)
      raise
  return [r.close(done) for r in runs]
