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
  examples still valid at that step (in the statistics groups `model.bn_scope` says: the whole
  batch, each device's share or ghost groups, as the registry's BatchNorm), and per-time-step running averages for eval (steps beyond
  `max_length` share the last); their scales start at 0.1 as in the paper. The input-to-hidden
  pre-activations are batch-normalized the same way, per time step (the registry's `causal`
  layout), as Cooijmans et al. do: no statistic pools over time, so an LSTM LM's output at
  step t never depends on a later token. Padding never enters any statistic. Note what the per-step statistics imply for variable lengths: at a step where one
  example is left, its normalized values are 0 (a batch of one has no spread).
- `instance` is refused: statistics over an example's whole sequence do not fit a recurrence.

`compute_dtype=bfloat16`: the three matmuls (input-to-hidden, hidden-to-hidden, head) compute in
bfloat16; their results, the norms, the gates, the cell and hidden state stay float32, as do the
parameters and the running averages (mixed precision as in the Transformer).

The recurrence runs with `nn.scan` over time (one compiled loop). At padded steps the state is
carried unchanged, so each example's last valid output does not depend on its padding.
`residual` adds the layer's input to its output (x + LSTM(x)) between stacked layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from errors import ConfigError
from models import backend, norms
from models import residual as residual_lib
from models.spec import Family, Key
from models.sequence import (
  InputEmbedding,
  check_length,
  full_mask,
  last_valid,
)


def _gate_bias_init(key, shape, dtype=jnp.float32):
  """Zeros, except the forget gate's bias of 1 (Gers et al. 2000)."""
  del key
  hidden = shape[0] // 4
  return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)


def _step_batch_norm(v, valid, stats, train, epsilon, grouping: norms.Grouping):
  """BatchNorm of (batch, features) at one time step, grouped as the registry's BatchNorm
  (`grouping`: global, per-device or ghost groups of the batch). Train: statistics over the
  examples of each group valid at this step (none valid: harmless zeros, never used: those
  rows are carried over). Eval: the running averages given for this step. Returns
  (normalized, (mean, var, count) pooled over the groups, for the running averages)."""
  if train:
    groups = grouping.count(v.shape[0], train)
    g, shift, mean, var, count = norms.group_moments(v, valid, groups, per_position=True)
    y = ((g - shift - mean) * jax.lax.rsqrt(var + epsilon)).reshape(v.shape)
    mean, var, total = norms.pooled_statistics(shift, mean, var, count)
    return y, (mean[0], var[0], total[0, 0])
  (mean, var), count = stats, jnp.zeros(())
  return (v - mean) * jax.lax.rsqrt(var + epsilon), (mean, var, count)


class CellBody(nn.Module):
  """One time step after its hidden-to-hidden matmul: (carry, hw = W_h h_{t-1}, xw = normalized
  W_x x_t + b, m = mask_t, stat_m, stats = running stats for step t) -> (carry, (h, stats used)).

  recurrent_bn (Cooijmans et al. 2016): the hidden-to-hidden pre-activations and the cell are
  batch-normalized with this step's statistics over the valid examples (train) or this step's
  running averages (eval); scales start at 0.1 as in the paper. The statistics used are
  returned so the layer can update the per-step running averages. It holds only parameters
  (no state), so `recurrence` can differentiate it as a pure function.
  """
  hidden: int
  cell_norm: Callable[..., nn.Module]
  recurrent_bn: norms.Grouping | None = None   # recurrent BN, its statistics grouped so
  train: bool = False
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, carry, hw, xw, m, stat_m, stats):
    """stat_m: the examples whose values enter this step's batch statistics (normally m)."""
    c, h = carry
    hh_stats, c_stats = stats
    step_stats = ()
    if self.recurrent_bn is not None:
      hw, hh_used = _step_batch_norm(hw, stat_m, hh_stats, self.train, self.epsilon,
                                     self.recurrent_bn)
      hw = hw * self.param('hh_scale', nn.initializers.constant(0.1), (4 * self.hidden,))
      step_stats += (hh_used,)
    else:
      hw = self.cell_norm(name='norm_hh')(hw, train=False)
    i, f, g, o = jnp.split(xw + hw, 4, axis=-1)
    c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    if self.recurrent_bn is not None:
      c_normed, c_used = _step_batch_norm(c_new, stat_m, c_stats, self.train, self.epsilon,
                                          self.recurrent_bn)
      c_normed = (c_normed * self.param('c_scale', nn.initializers.constant(0.1), (self.hidden,))
                  + self.param('c_bias', nn.initializers.zeros, (self.hidden,)))
      step_stats += (c_used,)
    else:
      c_normed = self.cell_norm(name='norm_c')(c_new, train=False)
    h_new = jax.nn.sigmoid(o) * jnp.tanh(c_normed)
    m = m[:, None]
    c, h = jnp.where(m, c_new, c), jnp.where(m, h_new, h)  # padding: carry the state on
    return (c, h), (h, step_stats)


class LSTMCell(CellBody):
  """One time step: hw = W_h h_{t-1} (in `dtype`, returned as float32), then `CellBody` (whose
  parameters live in this scope)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, xw, m, stat_m, stats):
    hw = nn.Dense(4 * self.hidden, use_bias=False, dtype=self.dtype,
                  name='hidden_to_hidden')(carry[1]).astype(jnp.float32)
    body = CellBody(self.hidden, self.cell_norm, self.recurrent_bn, self.train, self.epsilon)
    nn.share_scope(self, body)
    return body(carry, hw, xw, m, stat_m, stats)


class LSTMLayer(nn.Module):
  hidden: int
  input_norm: Callable[..., nn.Module]
  cell_norm: Callable[..., nn.Module]
  recurrent_bn: norms.Grouping | None = None
  max_steps: int = 512          # per-step running averages; later steps share the last one
  momentum: float = 0.9
  epsilon: float = 1e-5
  fused: bool = False           # the loop as `backend.recurrence` (hand-written backward)
  dtype: Any = jnp.float32      # of the matmuls (their results, gates and state: float32)

  @nn.compact
  def __call__(self, x, mask, norm_mask, *, train: bool, source=None):
    """source: None, or (raw inputs, the embedding's parameters) when `x` is `InputEmbedding`
    of them: W_x x_t is then computed re-associated (`project_source`)."""
    dense = nn.Dense(4 * self.hidden, use_bias=False, dtype=self.dtype, name='input_to_hidden')
    if source is None or self.is_initializing():
      xw = dense(x).astype(jnp.float32)
    else:
      xw = backend.project_source(*source, self.variables['params']['input_to_hidden']['kernel'],
                                  self.dtype)
    xw = self.input_norm(name='norm_ih')(xw, train=train, mask=norm_mask)
    xw = xw + self.param('bias', _gate_bias_init, (4 * self.hidden,))
    steps = jnp.minimum(jnp.arange(x.shape[1]), self.max_steps - 1)
    if self.recurrent_bn is not None:
      ra = {name: (self.variable('batch_stats', f'{name}_mean', jnp.zeros, (self.max_steps, n)),
                   self.variable('batch_stats', f'{name}_var', jnp.ones, (self.max_steps, n)))
            for name, n in (('hh', 4 * self.hidden), ('c', self.hidden))}
      # (time, batch-independent) running stats, scanned over time next to the inputs
      per_step = tuple((mean.value[steps], var.value[steps]) for mean, var in ra.values())
    else:
      per_step = ((jnp.zeros(x.shape[1]),) * 2,) * 2
    stat_mask = mask if norm_mask is not None else jnp.ones_like(mask)  # norm_uses_mask=False
    zeros = jnp.zeros((x.shape[0], self.hidden), x.dtype)
    cell = (self.hidden, self.cell_norm, self.recurrent_bn, train, self.epsilon)
    if self.fused and not self.is_initializing():
      params = dict(self.variables['params']['cell'])
      w = params.pop('hidden_to_hidden')['kernel']
      body = lambda theta, *args: CellBody(*cell, parent=None).apply({'params': theta}, *args)
      _, (hs, used) = backend.recurrence(body, w, params, xw, (mask.T, stat_mask.T, per_step),
                                         (zeros, zeros), self.dtype)
    else:
      scan = nn.scan(LSTMCell, variable_broadcast='params', split_rngs={'params': False},
                     in_axes=(1, 1, 1, 0), out_axes=(1, 0))
      _, (hs, used) = scan(*cell, dtype=self.dtype, name='cell')((zeros, zeros), xw, mask,
                                                                 stat_mask, per_step)
    if self.recurrent_bn is not None and train and not self.is_initializing():
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
  recurrent_bn: norms.Grouping | None = None   # a norm with running statistics: recurrent
  #                                BN in the recurrence (Cooijmans et al.), grouped as the norm
  momentum: float = 0.9
  epsilon: float = 1e-5
  norm_uses_mask: bool = True    # False: padding enters the norms' statistics (for comparison)
  per_token_outputs: bool = False  # True: a language model (logits at every step)
  vocab_size: int = 0
  max_length: int = 512
  skipinit: bool = False   # each stacked layer's output times a learnable 0-init scalar
  fused: bool = False      # the loop over time as `backend.recurrence` (`LSTMLayer.fused`)
  fold_input: bool = False  # the first layer's W_x x_t re-associated (`backend.project_source`)
  dtype: Any = jnp.float32  # compute dtype of the matmuls (params, state, logits: float32)

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    check_length(x.shape[1], self.max_length)
    mask = full_mask(x, mask)
    norm_mask = mask if self.norm_uses_mask else None
    embed = InputEmbedding(self.hidden, self.vocab_size)
    h = embed(x)   # unused (and not computed) when folded into a first layer without a skip
    source = None
    if self.fold_input and not self.is_initializing() and backend.fold_pays(x, self.vocab_size):
      source = (x, self.variables['params'][embed.name])
    for layer in range(self.num_layers):
      y = LSTMLayer(self.hidden, self.input_norm, self.cell_norm, self.recurrent_bn,
                    self.max_length, self.momentum, self.epsilon, self.fused, self.dtype,
                    name=f'lstm{layer + 1}')(
          h, mask, norm_mask, train=train, source=source if layer == 0 else None)
      h = h + residual_lib.gated(self, y, self.skipinit, f'lstm{layer + 1}_gain') \
          if self.residual else y
    if not self.per_token_outputs:
      h = last_valid(h, mask)
    return nn.Dense(self.num_outputs, dtype=self.dtype, name='head')(h).astype(jnp.float32)


def build(cfg, dataset, *, devices: int = 1, speed: dict) -> LSTM:
  spec = norms.NORMS[cfg.norm]
  if not spec.causal_ok or not spec.recurrent:
    valid = [n for n, s in norms.NORMS.items() if s.causal_ok and s.recurrent]
    why = ('does not fit an LSTM (statistics over a whole sequence inside a recurrence)'
           if not spec.causal_ok else 'is not implemented inside the LSTM\'s recurrence (its '
           'recurrent BatchNorm is plain BatchNorm)')
    raise ConfigError(f'norm {cfg.norm} {why}; valid norms for lstm: {", ".join(valid)}')
  # No statistic pools over time, in the classifier as in the LM: every step sees only the past.
  # A norm with running statistics is recurrent BN (Cooijmans et al.): per-step statistics on
  # the input and recurrent projections and on the cell, grouped as the norm's own scope says
  # (`norms.recurrent_grouping`); the cell and the recurrence then use it, not `cell_norm`.
  grouping = norms.recurrent_grouping(cfg.norm, cfg, devices)
  norm = norms.make_norm(cfg.norm, layout='causal', devices=devices,
                         max_positions=cfg.max_length, values=cfg)
  return LSTM(num_outputs=dataset.num_classes, hidden=cfg.width, num_layers=cfg.num_layers,
              residual=cfg.residual, input_norm=norm, cell_norm=norm,
              recurrent_bn=grouping, momentum=cfg.bn_momentum, epsilon=cfg.norm_epsilon,
              norm_uses_mask=cfg.norm_uses_mask,
              per_token_outputs=dataset.task == 'language_model',
              vocab_size=dataset.vocab_size, max_length=cfg.max_length, skipinit=cfg.skipinit,
              fused=speed['recurrence'] == 'custom_vjp', fold_input=speed['fold_input'] == 'on',
              dtype=jnp.dtype(cfg.compute_dtype))


FAMILIES = (Family(
    'lstm', 'stacked LSTM, classifier or next-token LM; LN inside the cell (Ba et al. 2016), '
    'recurrent BN (Cooijmans et al. 2016)', build, data=('sequence', 'tokens'),
    keys=(Key('num_layers', 1, 'stacked LSTM layers', low=0, low_ok=False),
          Key('max_length', 512, 'the longest sequence (per-step BN running averages)', low=0,
              low_ok=False),
          Key('norm_uses_mask', True, 'False: padding enters the norms\' statistics (for '
              'comparison)')),
    options=('skipinit',), speed={'recurrence': True, 'fold_input': True},
    branches=r'^lstm\d+/', compute_dtypes=('float32', 'bfloat16')),)
