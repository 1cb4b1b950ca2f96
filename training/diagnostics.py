"""Per-layer statistics of any model, without the model knowing: gradient norm, parameter norm,
update-to-weight ratio, and the RMS / mean / std of each layer's output activations.

A "layer" is a direct child of the model's root module (a ResNet block, an LSTM layer, a
Transformer block, the stem, the head), so the statistics line up with depth. Activations come
from Flax's `capture_intermediates` (outputs of those children); gradients and updates from the
same loss and optimizer as the train step. `diagnose` is a separate jitted function, run only on
diagnostic steps: the train step itself is unchanged (the same HLO) whether or not diagnostics
are on.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


def _is_layer(module: nn.Module, method_name: str) -> bool:
  return method_name == '__call__' and len(module.scope.path) == 1


def layer_norms(tree) -> dict[str, jax.Array]:
  """{top-level name: global L2 norm of that subtree}."""
  return {name: optax.global_norm(sub) for name, sub in tree.items()}


def diagnose_fn(model: nn.Module, task: Callable, tx: optax.GradientTransformation):
  """The pure `diagnose(state, batch) -> {stat: {layer: value}}` (it does not step)."""

  def diagnose(state, batch):
    def loss_fn(params):
      (logits, updates) = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, batch['inputs'], train=True,
          mask=batch.get('mask'), mutable=['batch_stats', 'intermediates'],
          capture_intermediates=_is_layer)
      return task(logits, batch)[0], updates['intermediates']

    (_, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, _ = tx.update(grads, state.opt_state, state.params)
    grad_norm, param_norm = layer_norms(grads), layer_norms(state.params)
    update_norm = layer_norms(updates)
    out = {'grad_norm': grad_norm, 'param_norm': param_norm,
           'update_ratio': {k: update_norm[k] / (param_norm[k] + 1e-12) for k in grad_norm},
           'act_rms': {}, 'act_mean': {}, 'act_std': {}}
    for name, captured in acts.items():
      y = jnp.asarray(captured['__call__'][0], jnp.float32)
      out['act_rms'][name] = jnp.sqrt(jnp.mean(y ** 2))
      out['act_mean'][name] = jnp.mean(y)
      out['act_std'][name] = jnp.std(y)
    return out

  return diagnose


def heatmap(history: list[np.ndarray], layers: list[str]) -> np.ndarray:
  """log10 gradient norm as an RGB image: rows = layers (input at the top), columns = diagnostic
  steps, so vanishing gradients show as dark rows near the input."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import cm
  values = np.log10(np.maximum(np.stack(history, axis=1), 1e-12))   # (layers, steps)
  lo, hi = np.percentile(values, 1), np.percentile(values, 99)
  scaled = np.clip((values - lo) / max(hi - lo, 1e-6), 0, 1)
  rgb = (cm.viridis(scaled)[..., :3] * 255).astype(np.uint8)
  # Make each cell at least 6x6 pixels so small models are visible.
  return np.repeat(np.repeat(rgb, 6, axis=0), max(1, 60 // max(1, len(history))), axis=1)
