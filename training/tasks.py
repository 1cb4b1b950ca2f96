"""Tasks turn (logits, batch) into a loss and summed metrics. The train loop knows no more.

A task returns `(loss, sums)`: `loss` is the mean to differentiate; `sums` are per-batch sums
plus a `count`, so metrics of batches of different sizes (or with padding) aggregate exactly:
metric = sum over batches / count over batches.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from errors import ConfigError


def classification(logits, batch):
  """Softmax cross-entropy over classes, one label per example."""
  labels = batch['targets']
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  count = jnp.asarray(labels.shape[0], jnp.float32)
  return losses.mean(), {'loss': losses.sum(), 'accuracy': correct.sum(), 'count': count}


def language_model(logits, batch):
  """Next-token cross-entropy, averaged over the real (unpadded) target tokens."""
  targets, weights = batch['targets'], batch['mask'].astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * weights
  count = weights.sum()
  return losses.sum() / jnp.maximum(count, 1.0), {
      'loss': losses.sum(), 'accuracy': correct.sum(), 'count': count}


TASKS = {'classification': classification, 'language_model': language_model}


def get_task(name: str):
  if name not in TASKS:
    raise ConfigError(f'unknown task {name!r}; valid tasks: {", ".join(TASKS)}')
  return TASKS[name]


def summarize(sums: dict) -> dict[str, float]:
  """Summed metrics (numpy or jax scalars) -> means per counted item."""
  count = float(sums['count'])
  return {k: float(v) / count for k, v in sums.items() if k != 'count'}
