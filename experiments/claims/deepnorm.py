"""Wang et al. 2022 (DeepNet): DeepNorm post-LN (N(α·x + f(x)), α = (2N)^¼, value/output/MLP
init × (8N)^−¼) trains at depth 12 without warm-up where plain post-LN does not.

CPU scale: the character-level Transformer LM on tiny_text (configs/transformer_lm.py), 12
layers, width 64, 4 heads, AdamW (optax's β = (0.9, 0.999)) with no warm-up and a constant lr
{1e-3, 3e-3, 1e-2}, 300 steps, {post-LN, post-LN + DeepNorm}, 3 seeds: a slice of the warm-up claim's regime
map (post-LN × depth × lr × warm-up) at its deepest point. Full scale (`:full`): lm1b (TFDS),
18 layers, 10k steps.

Rule (written before the sweep ran): at an lr, post-LN "fails" when at least 2 of its 3 seeds
diverged, or its final train loss exceeds DeepNorm's by at least MARGIN (0.1 nats) with a
one-sided Welch p < 0.05; DeepNorm "trains" there when none of its seeds diverged and its final
train loss is below GATE × ln(vocabulary). Reproduced if at some lr post-LN fails and DeepNorm
trains; not reproduced if post-LN fails somewhere and DeepNorm fails or does not train at every
such lr. Gate: post-LN fails at some lr (the regime the claim is about); else inconclusive.
"""

import math

from configs import transformer_lm
from experiments.claims.common import finish
from experiments.sweeps import product
from experiments.stats import compare, diverged, lookup, values

MARGIN, GATE = 0.1, 0.75
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
  config.eval_every_steps = config.checkpoint_every_steps = config.num_train_steps
  axes = [product('optimizer.learning_rate', LRS), product('model.deepnorm', [False, True])]
  smoke = [product('optimizer.learning_rate', LRS[:1]), product('model.deepnorm', [False, True])]
  if arg == 'smoke':
    config.model.num_layers = 2
  return finish(config, axes, arg, smoke)


def _vocab() -> int:
  import data
  return data.load_dataset(transformer_lm.get_config().data).vocab_size


def _at(group_keys, groups, lr):
  r = lambda deep: lookup(group_keys, groups, **{'optimizer.learning_rate': lr,
                                                  'model.deepnorm': deep})
  post, deep = r(False), r(True)
  bad, ended = diverged(post)
  c = compare(deep, post, 'train_loss', MARGIN, higher_is_better=False)
  post_fails = (ended > 0 and bad >= 2) or c.greater
  deep_bad, deep_ended = diverged(deep)
  loss = values(deep, 'train_loss')
  deep_trains = (deep_ended > 0 and deep_bad == 0 and len(loss) > 0 and
                 loss.mean() < GATE * math.log(_vocab()))
  text = (f'lr {lr:g}: post-LN {bad}/{ended} diverged, DeepNorm {deep_bad}/{deep_ended}; '
          f'{c.text("DeepNorm", "post-LN")} (train loss, positive: DeepNorm lower)')
  return post_fails, deep_trains, text


def _lrs(group_keys, groups):
  i = group_keys.index('optimizer.learning_rate')
  return sorted({k[i] for k in groups})


def gate(group_keys, groups):
  cells = [_at(group_keys, groups, lr) for lr in _lrs(group_keys, groups)]
  if not any(fails for fails, _, _ in cells):
    return ['post-LN without warm-up does not fail at any lr swept ('
            + '; '.join(text for _, _, text in cells) + ')']
  return []


def verdict(group_keys, groups):
  cells = [_at(group_keys, groups, lr) for lr in _lrs(group_keys, groups)]
  numbers = '; '.join(f'{text}: post-LN {"fails" if f else "does not fail"}, DeepNorm '
                      f'{"trains" if t else "does not train"}' for f, t, text in cells)
  if any(f and t for f, t, _ in cells):
    return 'reproduced', numbers + '.'
  return 'not reproduced', numbers + '.'
