"""Transformer encoder (classifier) and decoder-only LM with a switchable norm, norm position
and skip connections.

Each block has two sub-layers, attention and MLP, combined in `_sublayer` (the one place where
norm position and skip live):
    pre-LN  (Xiong et al. 2020):  x + f(N(x))        residual=False:  f(N(x))
    post-LN (Vaswani et al. 2017): N(x + f(x))        residual=False:  N(f(x))
Pre-LN models end with a final norm before the head.

Norms come from the registry with per-token statistics for layer/rms/group. In the classifier
`batch` pools over the batch and the valid (unpadded) tokens; in the language model it pools
over the batch at each position separately (per-position running averages), so that no
position sees a later one. `instance` is refused: in the LM it would see the future, in the
classifier the mean pooling of its output is its bias whatever the input. The padding mask
also masks attention keys, and the classifier mean-pools valid tokens only.
"""

from __future__ import annotations

import functools
from typing import Any
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from errors import ConfigError
from models import norms
from models import residual as residual_lib
from models.spec import Family, Key
from models.sequence import (
  InputEmbedding,
  check_length,
  full_mask,
  masked_mean,
)

NORM_POSITIONS = ('pre', 'post')
# The MLP's nonlinearity. flax's nn.gelu defaults to the tanh approximation (as GPT-2);
# PyTorch's nn.GELU defaults to the exact erf form.
ACTIVATIONS = {'gelu_tanh': functools.partial(nn.gelu, approximate=True),
               'gelu': functools.partial(nn.gelu, approximate=False),
               'relu': nn.relu}


def lecun_normal(scale: float = 1.0):
  """flax's default Dense init (LeCun normal), its standard deviation times `scale`."""
  return nn.initializers.variance_scaling(scale ** 2, 'fan_in', 'truncated_normal')


class MLP(nn.Module):
  hidden: int
  activation: str = 'gelu_tanh'
  init_scale: float = 1.0   # DeepNorm's beta on both kernels' (LeCun normal) initialization
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = lecun_normal(self.init_scale)
    # constructed output layer first, as always: Dense_0 is the output, Dense_1 the hidden layer
    # (parameter names of existing checkpoints)
    out = nn.Dense(x.shape[-1], kernel_init=init, dtype=self.dtype)
    hidden = nn.Dense(self.hidden, kernel_init=init, dtype=self.dtype)
    return out(ACTIVATIONS[self.activation](hidden(x)))


def deepnorm_constants(num_layers: int) -> tuple[float, float]:
  """DeepNorm (Wang et al. 2022) for an N-layer encoder-only or decoder-only model:
  alpha = (2N)^(1/4) up-weights the residual, beta = (8N)^(-1/4) scales the initialization."""
  return (2 * num_layers) ** 0.25, (8 * num_layers) ** -0.25


def _qkv_init(beta: float):
  """flax's attention initializes its query, key and value kernels with one `kernel_init`, in that
  order: this one keeps LeCun normal for the first two and scales the third (the value) by
  `beta`, as DeepNorm prescribes (tests/test_beyond_six.py checks each kernel)."""
  base = lecun_normal()
  calls = [0]

  def init(key, shape, dtype=jnp.float32):
    calls[0] += 1
    return base(key, shape, dtype) * (beta if calls[0] % 3 == 0 else 1.0)
  return init


class Block(nn.Module):
  num_heads: int
  mlp_dim: int
  norm: Callable[..., nn.Module]
  norm_position: str = 'pre'
  residual: bool = True
  activation: str = 'gelu_tanh'
  skipinit: bool = False   # ReZero: each branch times a learnable 0-init scalar
  qk_norm: bool = False    # flax's normalize_qk: LayerNorm on each head's queries and keys
  deepnorm: tuple = ()     # (alpha, beta): post-LN N(alpha * x + f(x)), beta-scaled init
  dtype: Any = jnp.float32   # of the matmuls (norms compute in float32, softmax too)

  def _sublayer(self, x, f, norm_name, *, train, norm_mask):
    norm = self.norm(name=norm_name)
    if self.deepnorm:   # post-LN with a residual (the builder checks)
      return norm(self.deepnorm[0] * x + f(x), train=train, mask=norm_mask)
    gain = f'{norm_name.removeprefix("norm_")}_gain'
    if self.norm_position == 'pre':
      y = f(norm(x, train=train, mask=norm_mask))
      return x + residual_lib.gated(self, y, self.skipinit, gain) if self.residual else y
    y = f(x)
    y = residual_lib.gated(self, y, self.skipinit and self.residual, gain)
    return norm(x + y if self.residual else y, train=train, mask=norm_mask)

  @nn.compact
  def __call__(self, x, attn_mask, norm_mask, *, train: bool):
    beta = self.deepnorm[1] if self.deepnorm else 1.0
    attention = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, normalize_qk=self.qk_norm, out_kernel_init=lecun_normal(beta),
        kernel_init=_qkv_init(beta) if self.deepnorm else lecun_normal(), dtype=self.dtype,
        force_fp32_for_softmax=True, name='attention')
    x = self._sublayer(x, lambda y: attention(y, y, mask=attn_mask), 'norm_attention',
                       train=train, norm_mask=norm_mask)
    mlp = MLP(self.mlp_dim, self.activation, beta, self.dtype, name='mlp')
    return self._sublayer(x, mlp, 'norm_mlp', train=train, norm_mask=norm_mask)


def encode(model: 'Stack', h, attn_mask, norm_mask, *, train: bool):
  """`model.num_layers` blocks of `model`'s settings, then (pre-LN) the final norm: the stack a
  Transformer and a ViT share, its parameters in `model`'s own scope (block1, ..., final_norm)."""
  constants = deepnorm_constants(model.num_layers) if model.deepnorm else ()
  for layer in range(model.num_layers):
    h = Block(model.num_heads, model.mlp_dim, model.norm, model.norm_position, model.residual,
              model.activation, model.skipinit, model.qk_norm, constants, model.dtype,
              parent=model, name=f'block{layer + 1}')(h, attn_mask, norm_mask, train=train)
  if model.norm_position == 'pre':
    h = model.norm(parent=model, name='final_norm')(h, train=train, mask=norm_mask)
  return h


class Stack(nn.Module):
  """The fields of a model made of these blocks (`encode` reads them): Transformer, ViT."""
  num_outputs: int = 10
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 128
  norm: Callable[..., nn.Module] = norms.make_norm('layer', layout='sequence')
  norm_position: str = 'pre'
  residual: bool = True
  activation: str = 'gelu_tanh'
  skipinit: bool = False
  qk_norm: bool = False
  deepnorm: bool = False
  dtype: Any = jnp.float32   # compute dtype of the blocks and the head (params stay float32)

  def head(self, h):
    return nn.Dense(self.num_outputs, dtype=self.dtype, name='head')(h).astype(jnp.float32)


class Transformer(Stack):
  norm_uses_mask: bool = True
  causal: bool = False          # True: a decoder-only language model, logits at every step
  vocab_size: int = 0
  max_length: int = 512

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):
    length = x.shape[1]
    check_length(length, self.max_length)
    mask = full_mask(x, mask)
    norm_mask = mask if self.norm_uses_mask else None
    h = InputEmbedding(self.d_model, self.vocab_size)(x)
    pos = self.param('pos_embedding', nn.initializers.normal(0.02), (self.max_length, self.d_model))
    h = (h + pos[:length]).astype(self.dtype)
    attn_mask = nn.make_attention_mask(mask, mask)            # padded keys are never attended
    if self.causal:
      attn_mask = nn.combine_masks(attn_mask, nn.make_causal_mask(mask))
    h = encode(self, h, attn_mask, norm_mask, train=train)
    if not self.causal:
      h = masked_mean(h, mask)
    return self.head(h)


def check_blocks(cfg, *, classifier: bool) -> None:
  """What the blocks need of a config, for every family built of them (Transformer, ViT)."""
  if classifier and norms.NORMS[cfg.norm].erases_position_mean:
    raise ConfigError(f'norm {cfg.norm} would make the {cfg.name} classifier ignore its input: '
                      'the last norm fixes each feature\'s mean over the sequence, and the head '
                      'mean-pools over the sequence, so every input gets the same logits; valid '
                      'norms: ' + ', '.join(n for n, s in norms.NORMS.items()
                                            if not s.erases_position_mean))
  if cfg.width % cfg.num_heads:
    raise ConfigError(f'model.width {cfg.width} must be divisible by model.num_heads {cfg.num_heads}')
  norms.check_plain_gain(cfg, 2 * cfg.num_layers + (cfg.norm_position == 'pre'))
  if cfg.deepnorm and (cfg.norm_position != 'post' or not cfg.residual or cfg.skipinit):
    raise ConfigError('model.deepnorm is post-LN with an up-weighted residual (Wang et al. '
                      ' 2022): it needs norm_position=post, residual=True and no skipinit; got '
                      f'norm_position={cfg.norm_position}, residual={cfg.residual}, '
                      f'skipinit={cfg.skipinit}')


def block_fields(cfg, layout: str, devices: int, max_positions: int) -> dict:
  """The module fields of the blocks, from the config (Transformer, ViT)."""
  return dict(d_model=cfg.width, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
              mlp_dim=cfg.mlp_ratio * cfg.width, norm_position=cfg.norm_position,
              residual=cfg.residual, activation=cfg.activation, skipinit=cfg.skipinit,
              qk_norm=cfg.qk_norm, deepnorm=cfg.deepnorm, dtype=jnp.dtype(cfg.compute_dtype),
              norm=norms.make_norm(cfg.norm, layout=layout, devices=devices,
                                   max_positions=max_positions, values=cfg))


def build(cfg, dataset, *, devices: int = 1, speed: dict) -> Transformer:
  del speed   # no speed fields
  causal = dataset.task == 'language_model'
  check_blocks(cfg, classifier=not causal)
  # a language model's norms never pool over time (make_norm refuses those that must)
  return Transformer(num_outputs=dataset.num_classes,
                     **block_fields(cfg, 'causal' if causal else 'sequence', devices,
                                    cfg.max_length),
                     norm_uses_mask=cfg.norm_uses_mask, causal=causal,
                     vocab_size=dataset.vocab_size, max_length=cfg.max_length)


# the keys of every family built of these blocks
BLOCK_KEYS = (
    Key('num_layers', 2, 'blocks', low=0, low_ok=False),
    Key('num_heads', 4, 'attention heads (dividing width)', low=0, low_ok=False),
    Key('mlp_ratio', 2, 'MLP hidden size / width', low=0, low_ok=False),
    Key('norm_position', 'pre', 'pre-LN x + f(N(x)) (Xiong et al. 2020) or post-LN N(x + f(x)) '
        '(Vaswani et al. 2017)', choices=NORM_POSITIONS),
    Key('activation', 'gelu_tanh', 'the MLP\'s: gelu_tanh (flax, GPT-2), gelu (exact, '
        'PyTorch), relu', choices=tuple(ACTIVATIONS), before='gelu_tanh'),
)
BLOCK_OPTIONS = ('skipinit', 'qk_norm', 'deepnorm')
BRANCHES = r'^block\d+/(attention|mlp)/'
FAMILIES = (Family(
    'transformer', 'encoder classifier or decoder-only LM, pre-/post-LN', build,
    data=('sequence', 'tokens'),
    keys=(*BLOCK_KEYS, Key('max_length', 512, 'the longest sequence (position embeddings; '
                           'per-position BN)', low=0, low_ok=False),
          Key('norm_uses_mask', True, 'False: padding enters the norms\' '
                           'statistics (for comparison)')),
    options=BLOCK_OPTIONS, branches=BRANCHES, compute_dtypes=('float32', 'bfloat16')),)
