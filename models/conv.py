"""A convolution whose weight gradient is computed a few images at a time (a speed formulation).

XLA:CPU computes a convolution's weight gradient as one convolution that contracts over the whole
batch: it transposes the input and the output gradient so that the batch becomes the feature
dimension, then runs one kernel whose small output (kh x kw x C_in x C_out) leaves little to
split across threads. Summing the weight gradients of chunks of about `CHUNK_BYTES` of
activations keeps each chunk's transposes and kernel in cache; at most `MAX_CHUNKS` chunks per
convolution, so that large images or batches do not multiply the program's size (and compile
time). Where it helps, and by how much, is measured in benchmarks/RESULTS.md
(`python -m benchmarks.run --only=resnet`); `model.conv_wgrad=auto` turns it on only there
(`models.resolve_speed`).

The forward pass and the input gradient are `lax.conv_general_dilated`'s own; the weight gradient
is the same sum in a different order, so results agree to float rounding
(tests/test_conv.py checks outputs and gradients against the plain convolution).
"""

from __future__ import annotations

import functools

import jax
from jax import lax

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
