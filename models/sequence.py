"""Pieces shared by the sequence models: input embedding, masked pooling, length checks."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from errors import ConfigError


class InputEmbedding(nn.Module):
  """Token ids (batch, time) -> Embed; real-valued (batch, time, features) -> Dense."""
  features: int
  vocab_size: int = 0   # > 0: inputs are token ids

  @nn.compact
  def __call__(self, x):
    if self.vocab_size:
      return nn.Embed(self.vocab_size, self.features, name='embed')(x)
    return nn.Dense(self.features, name='input_proj')(x)


def full_mask(x, mask):
  """The given mask, or all-True (batch, time) when there is none."""
  return jnp.ones(x.shape[:2], bool) if mask is None else mask.astype(bool)


def check_length(length: int, max_length: int) -> None:
  if length > max_length:
    raise ConfigError(f'sequence length {length} exceeds the model\'s maximum length '
                      f'{max_length} (model.max_length); raise it or shorten the data')


def masked_mean(x, mask):
  """Mean over the valid time steps: (batch, time, d), (batch, time) -> (batch, d)."""
  w = mask.astype(x.dtype)[..., None]
  return (x * w).sum(1) / jnp.maximum(w.sum(1), 1.0)


def last_valid(x, mask):
  """The output at each example's last valid step (right padding): (batch, d)."""
  last = jnp.maximum(mask.sum(1).astype(jnp.int32) - 1, 0)
  return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
