"""Zhu et al. 2025: DyT (γ·tanh(αx) + β) matches LayerNorm in a Transformer at equal steps.

CPU scale: the character-level Transformer LM on tiny_text (configs/transformer_lm.py: pre-LN,
2 layers, width 128, AdamW 1e-3, 200 warm-up steps, cosine), 600 steps, norm {layer, dyt}
(α₀ = 0.5, the paper's), 4 seeds. Full scale (`:full`): lm1b (TFDS), 6 layers, 20k steps.

Rule (written before the sweep ran): the metric is the final test loss (NLL, nats per
character). DyT "matches" LayerNorm when the 95 % Welch interval of (DyT − LN) lies inside
±MARGIN (0.05 nats). Reproduced if it does; not reproduced if DyT is worse by at least MARGIN
with a one-sided Welch p < 0.05; otherwise not reproduced as "no equivalence shown" (the
interval is wider than the margin). Gate: LayerNorm's test loss is below GATE × ln(vocabulary)
(it learned beyond a uniform guess); else inconclusive.
"""

import math

from configs import transformer_lm
from experiments.claims.common import finish
from experiments.sweeps import product
from experiments.stats import compare, lookup, values

MARGIN = 0.05
GATE = 0.75
NORMS = ['layer', 'dyt']


def get_sweep(arg=None):
  config = transformer_lm.get_config()
  if arg == 'full':
    config.data.name, config.model.num_layers, config.num_train_steps = 'lm1b', 6, 20000
  else:
    config.num_train_steps = 600
  config.eval_every_steps = config.checkpoint_every_steps = config.num_train_steps
  return finish(config, [product('model.norm', NORMS)], arg, [product('model.norm', NORMS)])


def _runs(group_keys, groups, norm):
  return lookup(group_keys, groups, **{'model.norm': norm})


def _vocab() -> int:
  import data
  return data.load_dataset(transformer_lm.get_config().data).vocab_size


def gate(group_keys, groups):
  ln = values(_runs(group_keys, groups, 'layer'), 'test_loss')
  limit = GATE * math.log(_vocab())
  if not len(ln) or ln.mean() >= limit:
    return [f'LayerNorm did not learn: test loss {ln.mean() if len(ln) else float("nan"):.3f} '
            f'≥ {limit:.3f} ({GATE} × ln vocabulary)']
  return []


def verdict(group_keys, groups):
  # "how much better DyT is" in test loss (lower is better): DyT − LN = −diff
  c = compare(_runs(group_keys, groups, 'dyt'), _runs(group_keys, groups, 'layer'), 'test_loss',
              MARGIN, higher_is_better=False)
  worse = compare(_runs(group_keys, groups, 'layer'), _runs(group_keys, groups, 'dyt'),
                  'test_loss', MARGIN, higher_is_better=False)
  numbers = (f'final test loss: {c.text("DyT", "LN")} (positive: DyT lower); equivalence margin '
             f'±{MARGIN}')
  if c.within(MARGIN):
    return 'reproduced', numbers + ': the interval lies inside it.'
  if worse.greater:
    return 'not reproduced', numbers + f'; DyT is worse by at least {MARGIN} nats.'
  return 'not reproduced', (numbers + '; no equivalence shown: the interval is wider than the '
                            'margin, and DyT is not shown worse either.')
