"""Backend speed code: every formulation that computes the same function differently, so that
the model files read like their papers and call each of these once.

- `conv_wgrad`: a convolution whose weight gradient is summed over chunks of images
  (`chunked_wgrad_conv`);
- `fusion_barriers`: `materialize`, a boundary XLA does not fuse across, after each ResNet block;
- `recurrence`: the LSTM's loop over time with a hand-written backward pass (`recurrence`);
- `fold_input`: the LSTM's first projection re-associated with the embedding (`project_source`).

Each is a `SpeedField` (models/spec.py): `auto` picks the fast choice only on the backend where
it was measured to help, and a family says which fields it takes (and whether its `auto` may
pick the fast one). The measured numbers live in benchmarks/RESULTS.md
(`python -m benchmarks.run`); tests check each formulation against the plain one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from models.spec import Key, SpeedField

SPEED: dict[str, SpeedField] = {f.key.name: f for f in (
    SpeedField(Key('conv_wgrad', 'auto', 'ResNet conv weight gradients: XLA\'s own, or summed '
                   'over chunks of images (`chunked_wgrad_conv`)',
                   choices=('auto', 'xla', 'chunked'), before='auto'),
               fast='chunked', portable='xla', one_device=True),   # chunks would cut across
    #                                                             a sharded batch
    SpeedField(Key('fusion_barriers', 'auto', 'ResNet: a fusion barrier after each block '
                   '(`materialize`)', choices=('auto', 'on', 'off'), before='auto'),
               fast='on', portable='off'),   # off elsewhere until measured (a GPU may pay a
    #                                          host round trip per block for the conditional)
    SpeedField(Key('recurrence', 'auto', 'LSTM loop over time: nn.scan, or a hand-written '
                   'backward (`recurrence`)', choices=('auto', 'scan', 'custom_vjp'),
                   before='auto'), fast='custom_vjp', portable='scan'),
    SpeedField(Key('fold_input', 'auto', 'LSTM: the first projection re-associated with the '
                   'embedding (`project_source`)', choices=('auto', 'on', 'off'), before='auto'),
               fast='on', portable='off'),
)}


def resolve(values, family_speed: dict, backend: str, devices: int) -> dict:
  """{field: concrete choice} for the speed fields a family takes (`family_speed`: field ->
  whether its `auto` may pick the fast choice), on `backend` with `devices`."""
  return {name: SPEED[name].resolve(values[name], backend, devices, measured)
          for name, measured in family_speed.items()}


# ------------------------------------------------------------------------------ fusion_barriers

def materialize(x, token):
  """The identity on `x`, as a boundary XLA does not fuse across, so that `x` is computed once.

  A residual stream is a chain of cheap elementwise ops (norm, add, ReLU) from block to block;
  XLA's fusion duplicates cheap producers into each consumer, and it duplicated the whole chain
  back to the stage's first block into each block's backward fusions (O(depth²) work).
  `lax.optimization_barrier` would say this, but XLA:CPU removes barriers before fusion; a
  conditional is kept. Its predicate comes from `token`, a replicated parameter scalar, so that
  under data parallelism deciding it needs no communication (a predicate read from the
  batch-sharded `x` cost an all-reduce per block). The taken branch returns `x` itself; the
  other (`x + 0.0`, taken only if the parameter is NaN or inf, and equal to x but for the sign
  of zeros) exists because XLA removes a conditional whose branches are identical. Under vmap
  over seeds the predicate is batched and the cond becomes a select.
  """
  return jax.lax.cond(jnp.isfinite(token), lambda v: v, lambda v: v + 0.0, x)



# ---------------------------------------------------------------------------------- conv_wgrad
# XLA:CPU computes a convolution's weight gradient as one convolution that contracts over the
# whole batch: it transposes the input and the output gradient so that the batch becomes the
# feature dimension, then runs one kernel whose small output (kh x kw x C_in x C_out) leaves
# little to split across threads. Summing the weight gradients of chunks of about `CHUNK_BYTES`
# of activations keeps each chunk's transposes and kernel in cache; at most `MAX_CHUNKS` chunks
# per convolution, so that large images or batches do not multiply the program's size (and
# compile time). The forward pass and the input gradient are `lax.conv_general_dilated`'s own;
# the weight gradient is the same sum in a different order (tests/test_backend.py).

CHUNK_BYTES = 512 * 1024   # of the larger of (input, output gradient) per chunk; ~ a core's L2
MAX_CHUNKS = 16            # per convolution, so large images or batches do not blow up compile time


def chunked_wgrad_conv(chunk_bytes: int = CHUNK_BYTES, max_chunks: int = MAX_CHUNKS):
  """A drop-in for `lax.conv_general_dilated` (flax `nn.Conv(conv_general_dilated=...)`)."""

  def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
           dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
           preferred_element_type=None):
    settings = _hashable(dict(
        window_strides=window_strides, padding=padding,
        lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type))
    f = functools.partial(lax.conv_general_dilated, **dict(settings))
    if batch_group_count != 1:   # the batch is already grouped: leave it to XLA
      return f(lhs, rhs)

    @jax.custom_vjp
    def chunked(x, w):
      return f(x, w)

    def fwd(x, w):
      return f(x, w), (x, w)

    def bwd(res, dy):
      return _conv_grads(*res, dy, settings=settings, chunk_bytes=chunk_bytes,
                         max_chunks=max_chunks)

    chunked.defvjp(fwd, bwd)
    return chunked(lhs, rhs)

  return conv


def _hashable(v):
  """`v` with lists as tuples and dicts as sorted item tuples, so that it can be a static
  argument of `jax.jit`."""
  if isinstance(v, dict):
    return tuple(sorted((k, _hashable(e)) for k, e in v.items()))
  if isinstance(v, list) or type(v) is tuple:   # not namedtuples (ConvDimensionNumbers)
    return tuple(_hashable(e) for e in v)
  return v


@functools.partial(jax.jit, static_argnames=('settings', 'chunk_bytes', 'max_chunks'))
def _conv_grads(x, w, dy, *, settings, chunk_bytes, max_chunks):
  """(dx, dw) of `lax.conv_general_dilated(x, w, **dict(settings))` for the output gradient `dy`;
  dw summed over batch chunks. Jitted with the convolution's settings as static arguments, so it
  is traced once per shape and setting, not once per layer (faster tracing of deep nets:
  benchmarks/RESULTS.md; the compiled program is the same)."""
  conv = functools.partial(lax.conv_general_dilated, **dict(settings))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, dict(settings)['dimension_numbers'])
  lhs_batch, out_batch = dn.lhs_spec[0], dn.out_spec[0]
  dx = jax.vjp(lambda x_: conv(x_, w), x)[1](dy)[0]
  n = x.shape[lhs_batch]
  per_image = max(x.size * x.dtype.itemsize, dy.size * dy.dtype.itemsize) // max(n, 1)
  k = max(1, chunk_bytes // max(per_image, 1), -(-n // max_chunks))
  dw = None
  for start in range(0, max(n, 1), k):
    stop = min(start + k, n)
    xc = lax.slice_in_dim(x, start, stop, axis=lhs_batch)
    dyc = lax.slice_in_dim(dy, start, stop, axis=out_batch)
    part = jax.vjp(lambda w_, xc=xc: conv(xc, w_), w)[1](dyc)[0]
    dw = part if dw is None else dw + part
  return dx, dw


# ---------------------------------------------------------------------------------- recurrence

def recurrence(body: Callable, w, theta, xw, rest, carry0, dtype=jnp.float32):
  """The LSTM's loop over time with a hand-written backward pass; the same function as
  `nn.scan(LSTMCell)` (tested), computed differently:

  carry_t, (h_t, stats_t) = body(theta, carry_{t-1}, h_{t-1} @ w, xw[:, t], rest_t): `xw` is
  batch-major (batch, time, 4H) and is read (and its gradient written) in place at each step,
  so no (time, batch) copy of it is made; `rest` (masks, running statistics; no gradient) is
  time-major. The forward keeps each step's carry and h_{t-1} @ w; the backward loop recomputes
  `body`'s cheap elementwise and norm work per step (jax.vjp) and does one matmul per step
  (dh = dhw @ wᵀ), and the gradient of w is one (T·B, H)ᵀ @ (T·B, 4H) matmul after the loop,
  instead of a small matmul and an accumulation inside every backward step.
  `dtype`: of the matmuls with w (forward h @ w, backward dhw @ wᵀ and the gradient of w, which
  accumulates in float32); their results and everything else stay float32, as in `nn.Dense(dtype=)`.
  Returns (last carry, (h: (batch, time, H), stats: time-major)).
  """
  mm = lambda a, b: jnp.matmul(a.astype(dtype), b.astype(dtype)).astype(jnp.float32)
  steps = jnp.arange(xw.shape[1])
  at = lambda a, t: jax.lax.dynamic_index_in_dim(a, t, axis=1, keepdims=False)
  put = lambda a, v, t: jax.lax.dynamic_update_index_in_dim(a, v, t, axis=1)

  def run(w, theta, xw, carry0):
    def step(state, inputs):
      carry, hs = state
      t, r = inputs
      hw = mm(carry[1], w)
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
      return ((d_c, d_h + mm(d_hw, w.T)), d_theta, put(d_xw, d_x, t)), d_hw

    zeros = jax.tree.map(jnp.zeros_like, theta)
    (d_carry0, d_theta, d_xw), d_hws = jax.lax.scan(
        step, (d_last, zeros, jnp.zeros_like(xw)), (steps, carries, hws, rest, d_stats),
        reverse=True)
    h_prev = carries[1]
    d_w = jnp.matmul(h_prev.reshape(-1, h_prev.shape[-1]).T.astype(dtype),
                     d_hws.reshape(-1, d_hws.shape[-1]).astype(dtype),
                     preferred_element_type=jnp.float32)
    return d_w, d_theta, d_xw, d_carry0

  loop.defvjp(forward, backward)
  return loop(w, theta, xw, carry0)


# ---------------------------------------------------------------------------------- fold_input

def project_source(raw, embedding: dict, kernel, dtype=jnp.float32):
  """`InputEmbedding` (with parameters `embedding`) of `raw`, times `kernel`, re-associated:
  two linear maps in a row are one. Token ids: rows of (E @ kernel) (a vocabulary-sized matmul
  instead of a batch·time-sized one); features: raw @ (W_e @ kernel) + b_e @ kernel (a
  features-wide matmul instead of a hidden-wide one). The same function up to float rounding.
  `dtype`: of the matmul with `kernel`, as the layer's own (the result is float32)."""
  mm = lambda a, b: jnp.matmul(a.astype(dtype), b.astype(dtype)).astype(jnp.float32)
  if 'embed' in embedding:
    return jnp.take(mm(embedding['embed']['embedding'], kernel), raw, axis=0)
  proj = embedding['input_proj']
  return mm(raw, proj['kernel'] @ kernel) + mm(proj['bias'], kernel)


def fold_pays(raw, vocab_size: int) -> bool:
  """Whether `project_source` does fewer flops than embedding then projecting: its table has
  fewer rows (vocabulary, or input features) than the batch has positions."""
  rows = vocab_size or raw.shape[-1]
  return rows < raw.shape[0] * raw.shape[1]
