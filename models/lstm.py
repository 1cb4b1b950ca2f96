"""Stacked LSTM (classifier or next-token LM) with a switchable normalization and skip.

Norms (from the registry), following the papers:
- `none`: the plain LSTM.
- `layer` / `rms` / `group`: Ba et al. 2016's Layer-Normalized LSTM: the norm is applied, per
  example and time step, to the input-to-hidden pre-activations W_x x_t, to the hidden-to-hidden
  pre-activations W_h h_{t-1}, and to the cell state before its tanh:
      (i, f, g, o) = N(W_x x_t) + N(W_h h_{t-1}) + b
      c_t = σ(f) c_{t-1} + σ(i) tanh(g);   h_t = σ(o) tanh(N(c_t))
- `batch`: recurrent BatchNorm (Cooijmans et al. 2016): the hidden-to-hidden pre-activations
  and the cell are batch-normalized at every time step with that step's statistics over the
  examples still valid at that step, and per-time-step running averages for eval (steps beyond
  `max_length` share the last); their scales start at 0.1 as in the paper. The input-to-hidden
  pre-activations are batch-normalized the same way, per time step (the registry's `causal`
  layout), as Cooijmans et al. do: no statistic pools over time, so an LSTM LM's output at
  step t never depends on a later token. Padding never enters any statistic. Note what the per-step statistics imply for variable lengths: at a step where one
  example is left, its normalized values are 0 (a batch of one has no spread).
- `instance` is refused: statistics over an example's whole sequence do not fit a recurrence.

The recurrence runs with `nn.scan` over time (one compiled loop). At padded steps the state is
carried unchanged, so each example's last valid output does not depend on its padding.
`residual` adds the layer's input to its output (x + LSTM(x)) between stacked layers.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from errors import ConfigError
from models import norms
from models import residual as residual_lib
from models.sequence import (
  InputEmbedding,
  check_length,
  check_sequence_dataset,
  full_mask,
  last_valid,
)


def _gate_bias_init(key, shape, dtype=jnp.float32):
  """Zeros, except the forget gate's bias of 1 (Gers et al. 2000)."""
  del key
  hidden = shape[0] // 4
  return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)


def _step_batch_norm(v, valid, stats, train, epsilon):
  """BatchNorm of (batch, features) at one time step. Train: statistics over the examples
  valid at this step (none valid: harmless zeros, never used: those rows are carried over).
  Eval: the running averages given for this step. Returns (normalized, (mean, var, count))."""
  if train:
    w = jnp.broadcast_to(valid[:, None], v.shape).astype(jnp.float32)
    shift, mean, var, count = norms.moments(v, w, (0,))   # the registry's exact moments
    return (v - shift - mean) * jax.lax.rsqrt(var + epsilon), ((shift + mean)[0], var[0],
                                                                count[0, 0])
  (mean, var), count = stats, jnp.zeros(())
  return (v - mean) * jax.lax.rsqrt(var + epsilon), (mean, var, count)


class LSTMCell(nn.Module):
  """One time step: xw = normalized W_x x_t + b, m = mask_t, stats = running stats for step t.

  recurrent_bn (Cooijmans et al. 2016): the hidden-to-hidden pre-activations and the cell are
  batch-normalized with this step's statistics over the valid examples (train) or this step's
  running averages (eval); scales start at 0.1 as in the paper. The statistics used are
  returned so the layer can update the per-step running averages.
  """
  hidden: int
  cell_norm: Callable[..., nn.Module]
  recurrent_bn: bool = False
  train: bool = False
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, carry, xw, m, stat_m, stats):
    """stat_m: the examples whose values enter this step's batch statistics (normally m)."""
    c, h = carry
    hh_stats, c_stats = stats
    hw = nn.Dense(4 * self.hidden, use_bias=False, name='hidden_to_hidden')(h)
    step_stats = ()
    if self.recurrent_bn:
      hw, hh_used = _step_batch_norm(hw, stat_m, hh_stats, self.train, self.epsilon)
      hw = hw * self.param('hh_scale', nn.initializers.constant(0.1), (4 * self.hidden,))
      step_stats += (hh_used,)
    else:
      hw = self.cell_norm(name='norm_hh')(hw, train=False)
    i, f, g, o = jnp.split(xw + hw, 4, axis=-1)
    c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    if self.recurrent_bn:
      c_normed, c_used = _step_batch_norm(c_new, stat_m, c_stats, self.train, self.epsilon)
      c_normed = (c_normed * self.param('c_scale', nn.initializers.constant(0.1), (self.hidden,))
                  + self.param('c_bias', nn.initializers.zeros, (self.hidden,)))
      step_stats += (c_used,)
    else:
      c_normed = self.cell_norm(name='norm_c')(c_new, train=False)
    h_new = jax.nn.sigmoid(o) * jnp.tanh(c_normed)
    m = m[:, None]
    c, h = jnp.where(m, c_new, c), jnp.where(m, h_new, h)  # padding: carry the state on
    return (c, h), (h, step_stats)


class LSTMLayer(nn.Module):
  hidden: int
  input_norm: Callable[..., nn.Module]
  cell_norm: Callable[..., nn.Module]
  recurrent_bn: bool = False
  max_steps: int = 512          # per-step running averages; later steps share the last one
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, mask, norm_mask, *, train: bool):
    xw = nn.Dense(4 * self.hidden, use_bias=False, name='input_to_hidden')(x)
    xw = self.input_norm(name='norm_ih')(xw, train=train, mask=norm_mask)
    xw = xw + self.param('bias', _gate_bias_init, (4 * self.hidden,))
    steps = jnp.minimum(jnp.arange(x.shape[1]), self.max_steps - 1)
    if self.recurrent_bn:
      ra = {name: (self.variable('batch_stats', f'{name}_mean', jnp.zeros, (self.max_steps, n)),
                   self.variable('batch_stats', f'{name}_var', jnp.ones, (self.max_steps, n)))
            for name, n in (('hh', 4 * self.hidden), ('c', self.hidden))}
      # (time, batch-independent) running stats, scanned over time next to the inputs
      per_step = tuple((mean.value[steps], var.value[steps]) for mean, var in ra.values())
    else:
      per_step = ((jnp.zeros(x.shape[1]),) * 2,) * 2
    scan = nn.scan(LSTMCell, variable_broadcast='params', split_rngs={'params': False},
                   in_axes=(1, 1, 1, 0), out_axes=(1, 0))
    stat_mask = mask if norm_mask is not None else jnp.ones_like(mask)  # norm_uses_mask=False
    zeros = jnp.zeros((x.shape[0], self.hidden), x.dtype)
    _, (hs, used) = scan(self.hidden, self.cell_norm, self.recurrent_bn, train, self.epsilon,
                         name='cell')((zeros, zeros), xw, mask, stat_mask, per_step)
    if self.recurrent_bn and train and not self.is_initializing():
      for (mean_var, (mean, var, count)) in zip(ra.values(), used):
        seen = (count > 0)[:, None]   # steps where some example was real
        for variable, new in zip(mean_var, (mean, var)):
          old = variable.value[steps]
          updated = jnp.where(seen, self.momentum * old + (1 - self.momentum) * new, old)
          variable.value = variable.value.at[steps].set(updated)
    return hs


class LSTM(nn.Module):
  num_outputs: int
  hidden: int = 128
  num_layers: int = 1
  residual: bool = False
  input_norm: Callable[..., nn.Module] = norms.make_norm('none', layout='causal')
  cell_norm: Callable[..., nn.Module] = norms.make_norm('none', layout='causal')
  recurrent_bn: bool = False     # batch norm: also normalize the recurrence (Cooijmans et al.)
  momentum: float = 0.9
  epsilon: float = 1e-5
  norm_uses_mask: bool = True    # False: padding enters the norms' statistics (for comparison)
  per_token_outputs: bool = False  # True: a language model (logits at every step)
  vocab_size: int = 0
  max_length: int = 512
  skipinit: bool = False   # each stacked layer's output times a learnable 0-init scalar

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    check_length(x.shape[1], self.max_length)
    mask = full_mask(x, mask)
    norm_mask = mask if self.norm_uses_mask else None
    h = InputEmbedding(self.hidden, self.vocab_size)(x)
    for layer in range(self.num_layers):
      y = LSTMLayer(self.hidden, self.input_norm, self.cell_norm, self.recurrent_bn,
                    self.max_length, self.momentum, self.epsilon, name=f'lstm{layer + 1}')(
          h, mask, norm_mask, train=train)
      h = h + residual_lib.gated(self, y, self.skipinit, f'lstm{layer + 1}_gain') \
          if self.residual else y
    if not self.per_token_outputs:
      h = last_valid(h, mask)
    return nn.Dense(self.num_outputs, name='head')(h)


def build(cfg, dataset, *, devices: int = 1) -> LSTM:
  check_sequence_dataset('lstm', dataset)
  if not norms.NORMS[cfg.norm].causal_ok:
    raise ConfigError(f'norm {cfg.norm} does not fit an LSTM (statistics over a whole sequence '
                      'inside a recurrence); valid norms for lstm: '
                      + ', '.join(norms.causal_norms()))
  if not norms.NORMS[cfg.norm].recurrent:
    raise ConfigError(f'norm {cfg.norm} is not implemented inside the LSTM\'s recurrence (its '
                      'recurrent BatchNorm is plain BatchNorm); valid norms for lstm: '
                      + ', '.join(n for n, s in norms.NORMS.items()
                                  if s.causal_ok and s.recurrent))
  # No statistic pools over time, in the classifier as in the LM: every step sees only the past.
  # A norm with running statistics is recurrent BN (Cooijmans et al.): per-step statistics on
  # the input and recurrent projections, so the cell itself is left unnormalized.
  recurrent_bn = norms.NORMS[cfg.norm].running_stats
  input_norm = norms.from_config(cfg, layout='causal', devices=devices)
  cell_norm = norms.from_config(cfg, layout='causal', devices=devices,
                                name='none' if recurrent_bn else cfg.norm)
  return LSTM(num_outputs=dataset.num_classes, hidden=cfg.width, num_layers=cfg.num_layers,
              residual=cfg.residual, input_norm=input_norm, cell_norm=cell_norm,
              recurrent_bn=recurrent_bn, momentum=cfg.bn_momentum,
              epsilon=cfg.norm_epsilon,
              norm_uses_mask=cfg.norm_uses_mask,
              per_token_outputs=dataset.task == 'language_model',
              vocab_size=dataset.vocab_size, max_length=cfg.max_length,
              skipinit=cfg.get('skipinit', False))
