"""The step functions, and `compile_steps`: the one place they are jitted.

`train_step(state, batch) -> (state, summed metrics)` is pure, as are the eval and diagnostics
steps. `compile_steps(exp, population)` jits them once, with shardings and donation written at
the call, as flax's lm1b does: parameters and optimizer state replicated, batches split over
the mesh's 'data' axis (training and eval alike; XLA inserts the all-reduces). The loop, the
benchmarks, `experiments/comm.py` and the tests all run these, so what they time, count and
test is the program the loop runs.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from training import diagnostics
from jax.sharding import Mesh

from data.pipeline import share_rows
from training.parallel import data_sharding, replicated, shard_batch
from training.experiment import Experiment, TrainState


def train_step_fn(model: nn.Module, task: Callable):
  """The pure `train_step(state, batch) -> (state, summed metrics)` (not yet jitted)."""

  def train_step(state: TrainState, batch: dict):
    def loss_fn(params):
      logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                    batch['inputs'], train=True, mask=batch.get('mask'),
                                    mutable=['batch_stats'])
      loss, sums = task(logits, batch)
      return loss, (sums, updates)

    (_, (sums, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads,
                                  batch_stats=updates.get('batch_stats', state.batch_stats))
    return state, sums

  return train_step


def eval_step_fn(model: nn.Module, task: Callable, batch_stats_mode: bool):
  """The pure `eval_step(variables, batch) -> summed metrics`.

  batch_stats_mode=False: the normal eval mode (BatchNorm uses its running averages).
  batch_stats_mode=True: train-mode normalization (BatchNorm uses this batch's statistics);
  the running averages are left unchanged.
  """

  def eval_step(variables, batch):
    logits, _ = model.apply(variables, batch['inputs'], train=batch_stats_mode,
                            mask=batch.get('mask'), mutable=['batch_stats'])
    return task(logits, batch)[1]

  return eval_step


class OneAtATime:
  """A jitted function that returns only once its result is computed (no asynchronous
  dispatch); `lower` and the rest pass through.

  For several simulated devices on one CPU (XLA_FLAGS=--xla_force_host_platform_device_count):
  with train steps dispatched ahead, XLA:CPU's in-process all-reduce waited for a device that
  never arrived and aborted the process after 40 s ("Termination timeout for all reduce"), in 4
  of 4 runs of 300 per-device-BatchNorm steps on 2 devices and 2 of 2 on 8
  (tests/multidevice_checks.py); waiting for each step before dispatching the next never hung.
  Real accelerators, and one CPU device, keep asynchronous dispatch."""

  def __init__(self, fn):
    self._fn = fn

  def __call__(self, *args):
    return jax.block_until_ready(self._fn(*args))

  def __getattr__(self, name):
    return getattr(self._fn, name)


@dataclasses.dataclass(frozen=True)
class Steps:
  train: Callable      # (state, batch) -> (state, sums); the state is donated
  diagnose: Callable   # (state, batch) -> {stat: {layer: value}}; steps nothing
  _eval: dict          # (batch_stats_mode, sharded) -> jitted (variables, batch) -> sums
  mesh: Mesh
  accumulate: Callable = None     # (sums, sums) -> sums, on the devices
  learning_rate: Callable = None  # state -> the learning rate of the step it last took

  def eval(self, variables, split, indices, batch_stats_mode: bool = False):
    """Sums of the eval batch `split.get(indices)`. Split over the devices like training when
    the batch divides among them (with several processes, each reads only its share); a batch
    that does not (the last of a split) is read whole and runs whole on every device, so batch
    statistics are still those of exactly that batch."""
    sharded = len(indices) % self.mesh.size == 0
    if sharded:
      rows = share_rows(len(indices), (jax.process_index(), jax.process_count()))
      batch = shard_batch(split.get(indices[rows]), self.mesh, local=True)
    else:   # an explicit transfer (a run under config.transfer_guard=disallow allows only those)
      batch = jax.device_put(split.get(indices), replicated(self.mesh))
    return self._eval[batch_stats_mode, sharded](variables, batch)


def compile_steps(exp: Experiment, population: int = 1) -> Steps:
  """The jitted steps of `exp` on its mesh; with `population` > 1, train and diagnose take
  stacked states and batches (one leading axis of seeds, vmapped)."""
  rep, data = replicated(exp.mesh), data_sharding(exp.mesh, population)
  batched = (lambda f: f) if population == 1 else jax.vmap
  simulated = exp.mesh.size > 1 and exp.mesh.devices.flat[0].platform == 'cpu'
  sync = OneAtATime if simulated else (lambda f: f)
  train = jax.jit(batched(train_step_fn(exp.model, exp.task)),
                  in_shardings=(rep, data), out_shardings=(rep, rep),
                  donate_argnums=0)
  diagnose = jax.jit(batched(diagnostics.diagnose_fn(exp.model, exp.task, exp.tx)),
                     in_shardings=(rep, data), out_shardings=rep)
  evals = {(mode, sharded): jax.jit(eval_step_fn(exp.model, exp.task, mode),
                                    in_shardings=(rep, data_sharding(exp.mesh)
                                                  if sharded else rep),
                                    out_shardings=rep)
           for mode in (False, True) for sharded in (False, True)}
  # metrics summed and the learning rate read on the devices: logging needs no transfer but
  # its one explicit device_get (a run under transfer_guard=disallow checks this)
  accumulate = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), out_shardings=rep)
  learning_rate = jax.jit(lambda state: exp.schedule(jnp.max(state.step) - 1),
                          out_shardings=rep)
  return Steps(sync(train), sync(diagnose), {k: sync(f) for k, f in evals.items()},
               exp.mesh, sync(accumulate), sync(learning_rate))
