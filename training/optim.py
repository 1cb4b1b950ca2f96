"""Optimizers and learning-rate schedules from the config, all from optax."""

from __future__ import annotations

import jax
import optax

from errors import ConfigError

OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('constant', 'cosine', 'piecewise')


def make_schedule(cfg, num_train_steps: int) -> optax.Schedule:
  """Linear warm-up over `warmup_steps`, then `schedule`:
  constant; cosine decay to 0 at the last step; piecewise: multiply by `decay_factor` at each
  of `boundaries` (absolute steps, as in He et al.: 32k and 48k of 64k)."""
  if cfg.schedule not in SCHEDULES:
    raise ConfigError(f'unknown schedule {cfg.schedule!r}; valid schedules: {", ".join(SCHEDULES)}')
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


def _decay_mask(params):
  """Weight decay on kernels only: not on biases or norm scales/offsets (all 1-D)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
  if cfg.name not in OPTIMIZERS:
    raise ConfigError(f'unknown optimizer {cfg.name!r}; valid optimizers: {", ".join(OPTIMIZERS)}')
  if cfg.name == 'adamw':  # decoupled weight decay (Loshchilov & Hutter)
    return optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=_decay_mask)
  if cfg.name == 'sgd':
    base = optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
  else:
    base = optax.adam(schedule)
  # L2 regularization added to the gradient, as in He et al.'s SGD recipe.
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay, _decay_mask), base)
