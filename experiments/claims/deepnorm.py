"""Wang et al. 2022 (DeepNet): DeepNorm post-LN (N(α·x + f(x)), α = (2N)^¼, value/output/MLP
init × (8N)^−¼) trains at depth 12 without warm-up where plain post-LN does not.

CPU scale: the character-level Transformer LM on docs_text (data/text.py: numpy's and scipy's
docstrings; configs/transformer_lm.py), 12 layers, width 64, 4 heads, AdamW (optax's β = (0.9,
0.999)) with no warm-up and a constant lr {1e-3, 3e-3, 1e-2}, 300 steps, {post-LN, post-LN +
DeepNorm}, 5 seeds: a slice of the warm-up claim's regime map (post-LN × depth × lr × warm-up) at
its deepest point. Full scale (`:full`): lm1b (TFDS), 18 layers, 10k steps.

Rule (written before the sweep ran; experiments/stats.py): at an lr, post-LN "fails" when more
than half its seeds diverged, or its final train loss exceeds DeepNorm's by more than MARGIN
(0.1 nats: the shifted one-sided test rejects at α 0.05); DeepNorm "trains" there when none of
its seeds diverged and its final train loss is shown below the unigram entropy of the training
text (one-sided one-sample t-test; it learned more than the characters' frequencies: the
0.75 × ln 257 of the rule before lay above that entropy and could not fail). A cell's p is the
larger of its two tests' (0 for a majority diverged). Reproduced if some lr's cell holds after
Holm's correction over the lrs; not reproduced if at every lr where post-LN fails DeepNorm's
training is ruled out (a seed diverged, or its loss is shown above the entropy); else
inconclusive (underpowered). Gate: post-LN fails at some lr (the regime the claim is about);
else inconclusive.
"""

from configs import transformer_lm
from experiments.claims.common import char_corpus, finish
from experiments.sweeps import product
from experiments.stats import (NOT_REPRODUCED, REPRODUCED, RULED_OUT, SHOWN, UNDERPOWERED,
                               compare, diverged, holm, lookup, one_sample, values)

MARGIN = 0.1
LRS = [1e-3, 3e-3, 1e-2]


def get_sweep(arg=None):
  config = transformer_lm.get_config('post')
  config.model.width, config.model.num_heads = 64, 4
  config.model.num_layers = 18 if arg == 'full' else 12
  config.optimizer.warmup_steps, config.optimizer.schedule = 0, 'constant'
  if arg == 'full':
    config.data.name, config.num_train_steps = 'lm1b', 10000
  else:
    config.num_train_steps, config.log_every_steps = 300, 20
    char_corpus(config, arg)
  config.eval_every_steps = config.checkpoint_every_steps = config.num_train_steps
  axes = [product('optimizer.learning_rate', LRS), product('model.deepnorm', [False, True])]
  smoke = [product('optimizer.learning_rate', LRS[:1]), product('model.deepnorm', [False, True])]
  if arg == 'smoke':
    config.model.num_layers = 2
  return finish(config, axes, arg, smoke)


def _unigram() -> float:
  from experiments.claims.common import corpus_entropies
  return corpus_entropies()[0]


def _at(group_keys, groups, lr):
  r = lambda deep: lookup(group_keys, groups, **{'optimizer.learning_rate': lr,
                                                  'model.deepnorm': deep})
  post, deep = r(False), r(True)
  bad, ended = diverged(post)
  c = compare(deep, post, 'train_loss', MARGIN, higher_is_better=False)
  majority = ended > 0 and 2 * bad > ended
  post_fails = majority or c.greater
  deep_bad, deep_ended = diverged(deep)
  below = one_sample(values(deep, 'train_loss'), _unigram())
  trains = below.status if deep_ended and not deep_bad else RULED_OUT
  p = max(0.0 if majority else c.p, below.p if trains == SHOWN else 1.0)
  text = (f'lr {lr:g}: post-LN {bad}/{ended} diverged, DeepNorm {deep_bad}/{deep_ended}; '
          f'{c.text("DeepNorm", "post-LN")} (train loss, positive: DeepNorm lower); DeepNorm '
          f'below the unigram entropy {_unigram():.3f}: {trains}')
  return post_fails, trains, p, text


def _lrs(group_keys, groups):
  i = group_keys.index('optimizer.learning_rate')
  return sorted({k[i] for k in groups})


def gate(group_keys, groups):
  cells = [_at(group_keys, groups, lr) for lr in _lrs(group_keys, groups)]
  if not any(cell[0] for cell in cells):
    return ['post-LN without warm-up does not fail at any lr swept ('
            + '; '.join(cell[-1] for cell in cells) + ')']
  return []


def verdict(group_keys, groups):
  cells = [_at(group_keys, groups, lr) for lr in _lrs(group_keys, groups)]
  held = holm([p if fails and trains == SHOWN else 1.0 for fails, trains, p, _ in cells])
  numbers = '; '.join(f'{text}: post-LN {"fails" if f else "does not fail"}, DeepNorm '
                      f'{"trains" if t == SHOWN else "does not train" if t == RULED_OUT else "open"}'
                      f'{" (holds after Holm)" if h else ""}'
                      for (f, t, _, text), h in zip(cells, held))
  if any(held):
    return REPRODUCED, numbers + '.'
  if all(t == RULED_OUT for f, t, _, _ in cells if f):
    return NOT_REPRODUCED, numbers + '.'
  return UNDERPOWERED, numbers + '.'
