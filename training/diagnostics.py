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


# log10 of the gradient norm: one colour scale for every run and step, so heat maps compare
HEATMAP_RANGE = (-6.0, 2.0)


def heatmap(steps: list[int], history: list[np.ndarray], layers: list[str]) -> np.ndarray:
  """log10 gradient norm per layer (rows, input at the top, named) and diagnostic step
  (columns), on the fixed colour scale HEATMAP_RANGE with its colour bar, as an RGB image:
  vanishing gradients show as dark rows near the input, exploding ones as bright rows."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  values = np.log10(np.maximum(np.stack(history, axis=1), 1e-30))   # (layers, steps)
  fig, ax = plt.subplots(figsize=(7, min(12, 1.4 + 0.14 * len(layers))), dpi=80)
  image = ax.imshow(values, aspect='auto', cmap='viridis', vmin=HEATMAP_RANGE[0],
                    vmax=HEATMAP_RANGE[1], interpolation='nearest')
  every = max(1, len(layers) // 40)
  ax.set_yticks(range(0, len(layers), every), layers[::every], fontsize=5)
  xs = list(range(0, len(steps), max(1, len(steps) // 8)))
  ax.set_xticks(xs, [str(steps[i]) for i in xs], fontsize=6)
  ax.set_xlabel('step', fontsize=7)
  bar = fig.colorbar(image, ax=ax, extend='both')
  bar.set_label('log10 gradient norm', fontsize=7)
  bar.ax.tick_params(labelsize=6)
  fig.tight_layout()
  fig.canvas.draw()
  rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return rgb
