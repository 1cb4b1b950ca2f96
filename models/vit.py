"""Vision Transformer (Dosovitskiy et al. 2021) with a switchable norm, norm position and skip.

Patches of `patch_size` x `patch_size` pixels, each linearly embedded (a conv with stride =
kernel = patch), plus learned position embeddings, go through the Transformer's own blocks
(`transformer.encode`: pre-/post-LN, every norm in the registry with per-token statistics for
layer/rms/group/scale, batch pooling over the batch and all patches, SkipInit/ReZero, QK-norm,
DeepNorm), then the mean over patches (global average pooling, as big_vision's simple ViT:
Beyer, Zhai & Kolesnikov 2022) and a linear head. Images have no padding: every patch is real.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from errors import ConfigError
from models import transformer
from models.spec import Family, Key


class ViT(transformer.Stack):
  patch_size: int = 2

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    del mask  # images have no padding
    p = self.patch_size
    h = nn.Conv(self.d_model, (p, p), strides=(p, p), padding='VALID', name='patch_embed')(x)
    h = h.reshape(h.shape[0], -1, self.d_model)   # (batch, patches, d_model), row-major
    pos = self.param('pos_embedding', nn.initializers.normal(0.02), h.shape[1:])
    h = (h + pos).astype(self.dtype)
    every = jnp.ones(h.shape[:2], bool)
    h = transformer.encode(self, h, nn.make_attention_mask(every, every), every, train=train)
    return self.head(h.mean(axis=1))


def build(cfg, dataset, *, devices: int = 1, speed: dict) -> ViT:
  del speed   # no speed fields
  height, width = dataset.input_shape[:2]
  if height % cfg.patch_size or width % cfg.patch_size:
    raise ConfigError(f'vit: model.patch_size {cfg.patch_size} must divide the image size '
                      f'{height}x{width}')
  transformer.check_blocks(cfg, classifier=True)
  patches = (height // cfg.patch_size) * (width // cfg.patch_size)
  return ViT(num_outputs=dataset.num_classes, patch_size=cfg.patch_size,
             **transformer.block_fields(cfg, 'sequence', devices, patches))


FAMILIES = (Family(
    'vit', 'Vision Transformer: patch embedding + the Transformer\'s blocks, mean-pooled '
    '(Dosovitskiy et al. 2021)', build, data=('image',),
    keys=(Key('patch_size', 2, 'pixels per patch side (dividing the image size)', low=0,
              low_ok=False), *transformer.BLOCK_KEYS),
    options=transformer.BLOCK_OPTIONS, branches=transformer.BRANCHES,
    compute_dtypes=('float32', 'bfloat16')),)
