"""Zhu et al. 2025: DyT (γ·tanh(αx) + β) matches LayerNorm in a Transformer at equal steps.

CPU scale: the character-level Transformer LM on docs_text (data/text.py: numpy's and scipy's
docstrings; configs/transformer_lm.py: pre-LN, 2 layers, width 128, AdamW 1e-3, 200 warm-up steps,
cosine), 600 steps, norm {layer, dyt} (α₀ = 0.5, the paper's), 5 seeds. Full scale (`:full`): lm1b
(TFDS), 6 layers, 20k steps.

Rule (written before the sweep ran; experiments/stats.py): the metric is the final test loss
(NLL, nats per character). DyT "matches" LayerNorm when the 90 % Welch interval of (DyT − LN)
lies inside ±MARGIN (0.05 nats): two one-sided tests at α 0.05. Reproduced if it does; not
reproduced if the interval lies wholly outside the margin or DyT is worse by more than MARGIN
(the shifted one-sided test rejects); otherwise inconclusive (underpowered: the interval is
wider than the margin). Gate: LayerNorm's test loss is below the unigram entropy of the
training text (it learned more than the characters' frequencies; the 0.75 × ln 257 of the rule
before lay above that entropy and could not fail); else inconclusive.
"""

from configs import transformer_lm
from experiments.claims.common import char_corpus, finish
from experiments.sweeps import product
from experiments.stats import (NOT_REPRODUCED, REPRODUCED, RULED_OUT, SHOWN, UNDERPOWERED,
                               compare, lookup, values)

MARGIN = 0.05
NORMS = ['layer', 'dyt']


def get_sweep(arg=None):
  config = transformer_lm.get_config()
  if arg == 'full':
    config.data.name, config.model.num_layers, config.num_train_steps = 'lm1b', 6, 20000
  else:
    config.num_train_steps = 600
    char_corpus(config, arg)
  config.eval_every_steps = config.checkpoint_every_steps = config.num_train_steps
  return finish(config, [product('model.norm', NORMS)], arg, [product('model.norm', NORMS)])


def _runs(group_keys, groups, norm):
  return lookup(group_keys, groups, **{'model.norm': norm})


def gate(group_keys, groups):
  from experiments.claims.common import corpus_entropies
  ln, limit = values(_runs(group_keys, groups, 'layer'), 'test_loss'), corpus_entropies()[0]
  if not len(ln) or ln.mean() >= limit:
    return [f'LayerNorm did not learn: test loss {ln.mean() if len(ln) else float("nan"):.3f} '
            f'≥ {limit:.3f} (the unigram entropy of the training text)']
  return []


def verdict(group_keys, groups):
  # "how much better DyT is" in test loss (lower is better): DyT − LN = −diff
  c = compare(_runs(group_keys, groups, 'dyt'), _runs(group_keys, groups, 'layer'), 'test_loss',
              MARGIN, higher_is_better=False)
  worse = compare(_runs(group_keys, groups, 'layer'), _runs(group_keys, groups, 'dyt'),
                  'test_loss', MARGIN, higher_is_better=False)
  numbers = (f'final test loss: {c.text("DyT", "LN")} (positive: DyT lower); equivalence margin '
             f'±{MARGIN}')
  same = c.equivalence(MARGIN)
  if same.status == SHOWN:
    return REPRODUCED, numbers + f': the interval lies inside it (TOST p = {same.p:.3f}).'
  if worse.greater or same.status == RULED_OUT:
    return NOT_REPRODUCED, numbers + f'; DyT is worse by more than {MARGIN} nats.'
  return UNDERPOWERED, (numbers + '; the interval is wider than the margin, and DyT is not shown '
                        'worse either.')
