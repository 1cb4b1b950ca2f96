"""Optimizers and learning-rate schedules from the config, all from optax."""

from __future__ import annotations

import functools

import jax
import optax

from errors import ConfigError

OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('constant', 'cosine', 'piecewise')
# Which parameters weight decay applies to (optimizer.weight_decay_on):
#   kernels   Conv and Dense kernels (flax names them `kernel`): not biases, norm scales and
#             shifts, embeddings, or attention biases
#   matrices  every parameter with 2+ dimensions: kernels, and also the token and position
#             embeddings and attention biases (heads x head_dim); what runs before this key did
#   all       every parameter
DECAY_SETS = ('kernels', 'matrices', 'all')


def check_config(cfg) -> None:
  """The optimizer's, schedule's and decay set's names, checked without building anything."""
  for key, valid in (('name', OPTIMIZERS), ('schedule', SCHEDULES)):
    if cfg[key] not in valid:
      raise ConfigError(f'unknown optimizer.{key} {cfg[key]!r}; valid: {", ".join(valid)}')
  decay_on = cfg.weight_decay_on
  if decay_on not in DECAY_SETS:
    raise ConfigError(f'unknown optimizer.weight_decay_on {decay_on!r}; valid: '
                      f'{", ".join(DECAY_SETS)}')


def make_schedule(cfg, num_train_steps: int) -> optax.Schedule:
  """Linear warm-up over `warmup_steps`, then `schedule`:
  constant; cosine decay to 0 at the last step; piecewise: multiply by `decay_factor` at each
  of `boundaries` (absolute steps, as in He et al.: 32k and 48k of 64k)."""
  lr, warmup = cfg.learning_rate, cfg.warmup_steps
  if cfg.schedule == 'constant':
    main = optax.constant_schedule(lr)
  elif cfg.schedule == 'cosine':
    main = optax.cosine_decay_schedule(lr, max(1, num_train_steps - warmup))
  else:
    main = optax.piecewise_constant_schedule(
        lr, {int(b) - warmup: cfg.decay_factor for b in cfg.boundaries})
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def decay_mask(params, decay_on: str = 'kernels'):
  """A pytree of bools: which parameters weight decay applies to (see DECAY_SETS)."""
  rule = {'kernels': lambda path, p: path[-1].key == 'kernel',
          'matrices': lambda path, p: p.ndim > 1,
          'all': lambda path, p: True}[decay_on]
  return jax.tree_util.tree_map_with_path(rule, params)


def make_optimizer(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
  """The optimizer `cfg` names (names checked by `check_config`), after adaptive gradient
  clipping (`agc` > 0: optax.adaptive_grad_clip, Brock et al. 2021) of the raw gradient."""
  tx = _base_optimizer(cfg, schedule)
  agc = cfg.agc
  return optax.chain(optax.adaptive_grad_clip(agc), tx) if agc else tx


def _base_optimizer(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
  mask = functools.partial(decay_mask, decay_on=cfg.weight_decay_on)
  if cfg.name == 'adamw':  # decoupled weight decay (Loshchilov & Hutter)
    return optax.adamw(schedule, b2=cfg.b2, weight_decay=cfg.weight_decay,
                       mask=mask)
  if cfg.name == 'sgd':
    base = optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
  else:
    base = optax.adam(schedule, b2=cfg.b2)
  # L2 regularization added to the gradient, as in He et al.'s SGD recipe.
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask), base)
