"""Xiong et al. 2020: post-LN Transformers need learning-rate warm-up; pre-LN do not.

CPU scale: Transformer encoder (4 layers, width 64, AdamW, cosine decay) on mnist1d, 600 steps,
norm position {pre, post} × linear warm-up {0, 150 steps} × peak lr {1e-3, 3e-3}, 3 seeds.
Full scale (`:full`): 3000 steps, warm-up {0, 600}.
"""

from configs import transformer_mnist1d
from experiments.claims.common import finish
from experiments.sweeps import product
from experiments.stats import compare, lookup


def get_sweep(arg=None):
  config = transformer_mnist1d.get_config()
  config.num_train_steps = 3000 if arg == 'full' else 600
  config.eval_every_steps = config.checkpoint_every_steps = config.num_train_steps
  axes = [product('model.norm_position', ['pre', 'post']),
          product('optimizer.warmup_steps', [0, config.num_train_steps // 4]),
          product('optimizer.learning_rate', [1e-3, 3e-3])]
  smoke = [product('model.norm_position', ['pre', 'post']), product('optimizer.warmup_steps', [0])]
  if arg == 'smoke':
    config.model.width, config.model.num_layers = 16, 1
  return finish(config, axes, arg, smoke)


MIN_EFFECT = 0.02   # final train loss


def verdict(group_keys, groups):
  """Rule: a position "needs" warm-up at an lr when its final train loss without warm-up
  exceeds its loss with warm-up by at least MIN_EFFECT with a one-sided Welch p < 0.05.
  Reproduced if post-LN needs it at some lr and pre-LN at none; every comparison is stated."""
  parts, post_needs, pre_needs = [], [], []
  lrs = sorted({k[group_keys.index('optimizer.learning_rate')] for k in groups})
  warm = max(k[group_keys.index('optimizer.warmup_steps')] for k in groups)
  for lr in lrs:
    runs = lambda pos, w: lookup(group_keys, groups, **{
        'model.norm_position': pos, 'optimizer.warmup_steps': w, 'optimizer.learning_rate': lr})
    gain = {pos: compare(runs(pos, warm), runs(pos, 0), 'train_loss', MIN_EFFECT,
                         higher_is_better=False) for pos in ('pre', 'post')}
    post_needs.append(gain['post'].greater)
    pre_needs.append(gain['pre'].greater)
    parts.append(f'lr {lr:g}: train loss gained by warm-up: post-LN '
                 f'{gain["post"].text("with", "without")}; pre-LN '
                 f'{gain["pre"].text("with", "without")}')
  reason = '; '.join(parts) + '.'
  if any(post_needs) and not any(pre_needs):
    return 'reproduced', reason
  if any(post_needs):
    return 'partly', reason + ' Pre-LN also does better with warm-up at some lr.'
  return 'not reproduced', reason + ' Post-LN does not measurably need warm-up at this scale.'
