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
  recurrent_bn: bool = False
  train: bool = False
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, carry, hw, xw, m, stat_m, stats):
    """stat_m: the examples whose values enter this step's batch statistics (normally m)."""
    c, h = carry
    hh_stats, c_stats = stats
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


class LSTMCell(CellBody):
  """One time step: hw = W_h h_{t-1}, then `CellBody` (whose parameters live in this scope)."""

  @nn.compact
  def __call__(self, carry, xw, m, stat_m, stats):
    hw = nn.Dense(4 * self.hidden, use_bias=False, name='hidden_to_hidden')(carry[1])
    body = CellBody(self.hidden, self.cell_norm, self.recurrent_bn, self.train, self.epsilon)
    nn.share_scope(self, body)
    return body(carry, hw, xw, m, stat_m, stats)


def recurrence(body: Callable, w, theta, xw, rest, carry0):
  """The LSTM's loop over time with a hand-written backward pass; the same function as
  `nn.scan(LSTMCell)` (tested), computed differently:

  carry_t, (h_t, stats_t) = body(theta, carry_{t-1}, h_{t-1} @ w, xw[:, t], rest_t): `xw` is
  batch-major (batch, time, 4H) and is read (and its gradient written) in place at each step,
  so no (time, batch) copy of it is made; `rest` (masks, running statistics; no gradient) is
  time-major. The forward keeps each step's carry and h_{t-1} @ w; the backward loop recomputes
  `body`'s cheap elementwise and norm work per step (jax.vjp) and does one matmul per step
  (dh = dhw @ wᵀ), and the gradient of w is one (T·B, H)ᵀ @ (T·B, 4H) matmul after the loop,
  instead of a small matmul and an accumulation inside every backward step.
  Returns (last carry, (h: (batch, time, H), stats: time-major)).
  """
  steps = jnp.arange(xw.shape[1])
  at = lambda a, t: jax.lax.dynamic_index_in_dim(a, t, axis=1, keepdims=False)
  put = lambda a, v, t: jax.lax.dynamic_update_index_in_dim(a, v, t, axis=1)

  def run(w, theta, xw, carry0):
    def step(state, inputs):
      carry, hs = state
      t, r = inputs
      hw = carry[1] @ w
      new, (h, stats) = body(theta, carry, hw, at(xw, t), *r)
      return (new, put(hs, h, t)), (stats, carry, hw)
    hs = jnp.zeros((xw.shape[0], xw.shape[1], carry0[1].shape[-1]), xw.dtype)
    (last, hs), (stats, carries, hws) = jax.lax.scan(step, (carry0, hs), (steps, rest))
    return (last, (hs, stats)), (carries, hws)

  @jax.custom_vjp
  def loop(w, theta, xw, carry0):
    return run(w, theta, xw, carry0)[0]

  def forward(w, theta, xw, carry0):
    out, (carries, hws) = run(w, theta, xw, carry0)
    return out, (w, theta, xw, carries, hws)

  def backward(saved, cotangent):
    w, theta, xw, carries, hws = saved
    d_last, (d_hs, d_stats) = cotangent

    def step(acc, inputs):
      d_carry, d_theta, d_xw = acc
      t, carry, hw, r, d_stat = inputs
      _, vjp = jax.vjp(lambda th, ca, hw_, x_: body(th, ca, hw_, x_, *r), theta, carry, hw,
                       at(xw, t))
      d_th, (d_c, d_h), d_hw, d_x = vjp((d_carry, (at(d_hs, t), d_stat)))
      d_theta = jax.tree.map(jnp.add, d_theta, d_th)
      return ((d_c, d_h + d_hw @ w.T), d_theta, put(d_xw, d_x, t)), d_hw

    zeros = jax.tree.map(jnp.zeros_like, theta)
    (d_carry0, d_theta, d_xw), d_hws = jax.lax.scan(
        step, (d_last, zeros, jnp.zeros_like(xw)), (steps, carries, hws, rest, d_stats),
        reverse=True)
    h_prev = carries[1]
    d_w = h_prev.reshape(-1, h_prev.shape[-1]).T @ d_hws.reshape(-1, d_hws.shape[-1])
    return d_w, d_theta, d_xw, d_carry0

  loop.defvjp(forward, backward)
  return loop(w, theta, xw, carry0)


def project_source(raw, embedding: dict, kernel):
  """`InputEmbedding` (with parameters `embedding`) of `raw`, times `kernel`, re-associated:
  two linear maps in a row are one. Token ids: rows of (E @ kernel) (a vocabulary-sized matmul
  instead of a batch·time-sized one); features: raw @ (W_e @ kernel) + b_e @ kernel (a
  features-wide matmul instead of a hidden-wide one). The same function up to float rounding."""
  if 'embed' in embedding:
    return jnp.take(embedding['embed']['embedding'] @ kernel, raw, axis=0)
  proj = embedding['input_proj']
  return raw @ (proj['kernel'] @ kernel) + proj['bias'] @ kernel


def fold_pays(raw, vocab_size: int) -> bool:
  """Whether `project_source` does fewer flops than embedding then projecting: its table has
  fewer rows (vocabulary, or input features) than the batch has positions."""
  rows = vocab_size or raw.shape[-1]
  return rows < raw.shape[0] * raw.shape[1]


class LSTMLayer(nn.Module):
  hidden: int
  input_norm: Callable[..., nn.Module]
  cell_norm: Callable[..., nn.Module]
  recurrent_bn: bool = False
  max_steps: int = 512          # per-step running averages; later steps share the last one
  momentum: float = 0.9
  epsilon: float = 1e-5
  fused: bool = False           # the loop as `recurrence` (hand-written backward; speed only)

  @nn.compact
  def __call__(self, x, mask, norm_mask, *, train: bool, source=None):
    """source: None, or (raw inputs, the embedding's parameters) when `x` is `InputEmbedding`
    of them: W_x x_t is then computed re-associated (`project_source`)."""
    dense = nn.Dense(4 * self.hidden, use_bias=False, name='input_to_hidden')
    if source is None or self.is_initializing():
      xw = dense(x)
    else:
      xw = project_source(*source, self.variables['params']['input_to_hidden']['kernel'])
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
    stat_mask = mask if norm_mask is not None else jnp.ones_like(mask)  # norm_uses_mask=False
    zeros = jnp.zeros((x.shape[0], self.hidden), x.dtype)
    cell = (self.hidden, self.cell_norm, self.recurrent_bn, train, self.epsilon)
    if self.fused and not self.is_initializing():
      params = dict(self.variables['params']['cell'])
      w = params.pop('hidden_to_hidden')['kernel']
      body = lambda theta, *args: CellBody(*cell, parent=None).apply({'params': theta}, *args)
      _, (hs, used) = recurrence(body, w, params, xw, (mask.T, stat_mask.T, per_step),
                                 (zeros, zeros))
    else:
      scan = nn.scan(LSTMCell, variable_broadcast='params', split_rngs={'params': False},
                     in_axes=(1, 1, 1, 0), out_axes=(1, 0))
      _, (hs, used) = scan(*cell, name='cell')((zeros, zeros), xw, mask, stat_mask, per_step)
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
  fused: bool = False      # the loop over time as `recurrence` (`LSTMLayer.fused`)
  fold_input: bool = False  # the first layer's W_x x_t re-associated (`project_source`)

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    check_length(x.shape[1], self.max_length)
    mask = full_mask(x, mask)
    norm_mask = mask if self.norm_uses_mask else None
    embed = InputEmbedding(self.hidden, self.vocab_size)
    h = embed(x)   # unused (and not computed) when folded into a first layer without a skip
    source = None
    if self.fold_input and not self.is_initializing() and fold_pays(x, self.vocab_size):
      source = (x, self.variables['params'][embed.name])
    for layer in range(self.num_layers):
      y = LSTMLayer(self.hidden, self.input_norm, self.cell_norm, self.recurrent_bn,
                    self.max_length, self.momentum, self.epsilon, self.fused,
                    name=f'lstm{layer + 1}')(
          h, mask, norm_mask, train=train, source=source if layer == 0 else None)
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
              skipinit=cfg.get('skipinit', False),
              fused=cfg.get('recurrence', 'scan') == 'custom_vjp',
              fold_input=cfg.get('fold_input', 'off') == 'on')
