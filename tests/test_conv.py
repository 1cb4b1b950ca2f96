"""The chunked convolution weight gradient (models/backend.py) against the plain convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import backend as conv_lib


@pytest.mark.parametrize('strides,padding,n,dtype', [
    ((1, 1), 'SAME', 13, jnp.float32),    # 13 images in chunks of 4: a short last chunk
    ((2, 2), 'SAME', 8, jnp.float32),     # the stride-2 convs of stage 2 and 3
    ((1, 1), 'VALID', 5, jnp.float32),
    ((1, 1), 'SAME', 8, jnp.bfloat16)])
def test_chunked_weight_gradient_equals_the_plain_convolution(strides, padding, n, dtype):
  """models/backend.py sums the weight gradient over chunks of images; against lax's own
  convolution: same output, same input gradient, same weight gradient (and a numpy one)."""
  x = jax.random.normal(jax.random.key(0), (n, 6, 6, 3)).astype(dtype)
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 5)).astype(dtype)
  dn = ('NHWC', 'HWIO', 'NHWC')
  plain = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
  per_image = 6 * 6 * 5 * jnp.dtype(dtype).itemsize      # the output gradient is the larger
  chunked = lambda x, w: conv_lib.chunked_wgrad_conv(4 * per_image)(
      x, w, strides, padding, dimension_numbers=dn)
  y = plain(x, w)
  dy = jax.random.normal(jax.random.key(2), y.shape).astype(dtype)
  (yc, vjp_c), (_, vjp_p) = jax.vjp(chunked, x, w), jax.vjp(plain, x, w)
  close = lambda a, b: np.testing.assert_allclose(  # bfloat16: 8-bit mantissa, other sum order
      np.float32(a), b, rtol=1e-5 if dtype == jnp.float32 else 0.05,
      atol=(1e-5 if dtype == jnp.float32 else 0.02) * float(np.max(np.abs(np.float32(b)))))
  close(yc, np.float32(y))
  for a, b in zip(vjp_c(dy), vjp_p(dy)):
    close(a, np.float32(b))
  # independent check of the weight gradient: sum over images and positions of patch x dy
  xs, dys = np.float64(np.float32(x)), np.float64(np.float32(dy))
  s = strides[0]
  ho, wo = dys.shape[1:3]
  if padding == 'SAME':   # XLA's SAME: total padding (out - 1) * stride + 3 - in, low half first
    total = (ho - 1) * s + 3 - 6
    xs = np.pad(xs, ((0, 0), (total // 2, total - total // 2), (total // 2, total - total // 2),
                     (0, 0)))
  want = np.zeros((3, 3, 3, 5))
  for i in range(3):
    for j in range(3):
      patch = xs[:, i:i + s * ho:s, j:j + s * wo:s, :]
      want[i, j] = np.einsum('nhwc,nhwd->cd', patch, dys)
  close(vjp_c(dy)[1], want)


def test_chunks_per_convolution_are_capped():
  """64 images of 1 KiB in chunks of 1 KiB would be 64 weight-gradient convolutions (and as
  many for the compiler); the cap makes it 16 chunks of 4."""
  x = jnp.ones((64, 4, 4, 16))
  w = jnp.ones((3, 3, 16, 16))

  def convolutions(max_chunks):   # in the weight gradient (the unused input gradient is dropped)
    conv = conv_lib.chunked_wgrad_conv(chunk_bytes=1024, max_chunks=max_chunks)
    f = lambda w: jnp.sum(conv(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    return jax.jit(jax.grad(f)).lower(w).as_text().count('stablehlo.convolution')

  assert convolutions(max_chunks=1000) == 64
  assert convolutions(max_chunks=16) == 16
