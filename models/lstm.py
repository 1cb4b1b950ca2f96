"""Stacked LSTM (classifier or next-token LM) with a switchable normalization and skip.

Norms (from the registry), following the papers:
- `none`: the plain LSTM.
- `layer` / `rms` / `group`: Ba et al. 2016's Layer-Normalized LSTM: the norm is applied, per
  example and time step, to the input-to-hidden pre-activations W_x x_t, to the hidden-to-hidden
  pre-activations W_h h_{t-1}, and to the cell state before its tanh:
      (i, f, g, o) = N(W_x x_t) + N(W_h h_{t-1}) + b
      c_t = σ(f) c_{t-1} + σ(i) tanh(g);   h_t = σ(o) tanh(N(c_t))
- `batch`: BatchNorm on the input-to-hidden pre-activations W_x x_t with statistics over the
  batch and the *valid* time steps (the padding mask excludes padding), with running averages
  for eval. The recurrent term and the cell are not batch-normalized: their statistics over
  time cannot be known before the recurrence has run (Laurent et al. 2016 normalize the same
  way; Cooijmans et al. 2016 additionally keep per-time-step statistics for the recurrent term,
  which this model does not do).
- `instance` is refused: statistics over an example's whole sequence do not fit a recurrence.

The recurrence runs with `nn.scan` over time (one compiled loop). At padded steps the state is
carried unchanged, so each example's last valid output does not depend on its padding.
`residual` adds the layer's input to its output (x + LSTM(x)) between stacked layers.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from errors import ConfigError
from models import norms
from models.sequence import (InputEmbedding, check_length, check_sequence_dataset, full_mask,
                             last_valid)


def _gate_bias_init(key, shape, dtype=jnp.float32):
  """Zeros, except the forget gate's bias of 1 (Gers et al. 2000)."""
  del key
  hidden = shape[0] // 4
  return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)


class LSTMCell(nn.Module):
  """One time step. `inputs` = (normalized W_x x_t + b, mask_t)."""
  hidden: int
  cell_norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, carry, inputs):
    c, h = carry
    xw, m = inputs
    hw = nn.Dense(4 * self.hidden, use_bias=False, name='hidden_to_hidden')(h)
    gates = xw + self.cell_norm(name='norm_hh')(hw, train=False)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h_new = jax.nn.sigmoid(o) * jnp.tanh(self.cell_norm(name='norm_c')(c_new, train=False))
    m = m[:, None]
    c, h = jnp.where(m, c_new, c), jnp.where(m, h_new, h)  # padding: carry the state on
    return (c, h), h


class LSTMLayer(nn.Module):
  hidden: int
  input_norm: Callable[..., nn.Module]
  cell_norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x, mask, norm_mask, *, train: bool):
    xw = nn.Dense(4 * self.hidden, use_bias=False, name='input_to_hidden')(x)
    xw = self.input_norm(name='norm_ih')(xw, train=train, mask=norm_mask)
    xw = xw + self.param('bias', _gate_bias_init, (4 * self.hidden,))
    scan = nn.scan(LSTMCell, variable_broadcast='params', split_rngs={'params': False},
                   in_axes=1, out_axes=1)
    zeros = jnp.zeros((x.shape[0], self.hidden), x.dtype)
    _, hs = scan(self.hidden, self.cell_norm, name='cell')((zeros, zeros), (xw, mask))
    return hs


class LSTM(nn.Module):
  num_outputs: int
  hidden: int = 128
  num_layers: int = 1
  residual: bool = False
  input_norm: Callable[..., nn.Module] = norms.make_norm('none')
  cell_norm: Callable[..., nn.Module] = norms.make_norm('none')
  norm_uses_mask: bool = True    # False: padding enters the norms' statistics (for comparison)
  per_token_outputs: bool = False  # True: a language model (logits at every step)
  vocab_size: int = 0
  max_length: int = 512

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    check_length(x.shape[1], self.max_length)
    mask = full_mask(x, mask)
    norm_mask = mask if self.norm_uses_mask else None
    h = InputEmbedding(self.hidden, self.vocab_size)(x)
    for layer in range(self.num_layers):
      y = LSTMLayer(self.hidden, self.input_norm, self.cell_norm, name=f'lstm{layer + 1}')(
          h, mask, norm_mask, train=train)
      h = h + y if self.residual else y
    if not self.per_token_outputs:
      h = last_valid(h, mask)
    return nn.Dense(self.num_outputs, name='head')(h)


def build(cfg, dataset) -> LSTM:
  check_sequence_dataset('lstm', dataset)
  if cfg.norm == 'instance':
    raise ConfigError('norm instance does not fit an LSTM (statistics over a whole sequence '
                      'inside a recurrence); valid norms for lstm: batch, layer, group, rms, none')
  input_norm = norms.from_config(cfg, pool_positions=False)
  cell_norm = norms.from_config(cfg, pool_positions=False,
                                name='none' if cfg.norm == 'batch' else cfg.norm)
  return LSTM(num_outputs=dataset.num_classes, hidden=cfg.width, num_layers=cfg.num_layers,
              residual=cfg.residual, input_norm=input_norm, cell_norm=cell_norm,
              norm_uses_mask=cfg.norm_uses_mask,
              per_token_outputs=dataset.task == 'language_model',
              vocab_size=dataset.vocab_size, max_length=cfg.max_length)
