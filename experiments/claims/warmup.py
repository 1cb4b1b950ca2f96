"""Xiong et al. 2020: post-LN Transformers need learning-rate warm-up; pre-LN do not.

CPU scale: Transformer encoder (4 layers, width 64, AdamW, cosine decay) on mnist1d, 600 steps,
norm position {pre, post} × linear warm-up {0, 150 steps} × peak lr {1e-3, 3e-3}, 3 seeds.
Full scale (`:full`): 3000 steps, warm-up {0, 600}.
"""

from configs import transformer_mnist1d
from experiments.claims.common import finish
from experiments.sweeps import product
from experiments.stats import clearly_greater, group_stat, lookup


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


def verdict(group_keys, groups):
  """Reproduced if, at some lr, post-LN without warm-up ends with a higher train loss than
  post-LN with warm-up (beyond the seed spread) while pre-LN without warm-up is not worse than
  pre-LN with it, and at no lr does pre-LN need the warm-up."""
  parts, post_needs, pre_needs = [], [], []
  lrs = sorted({k[group_keys.index('optimizer.learning_rate')] for k in groups})
  warm = max(k[group_keys.index('optimizer.warmup_steps')] for k in groups)
  for lr in lrs:
    loss = {(pos, w): group_stat(lookup(group_keys, groups, **{
        'model.norm_position': pos, 'optimizer.warmup_steps': w,
        'optimizer.learning_rate': lr})) for pos in ('pre', 'post') for w in (0, warm)}
    post_needs.append(clearly_greater(loss[('post', 0)], loss[('post', warm)]))
    pre_needs.append(clearly_greater(loss[('pre', 0)], loss[('pre', warm)]))
    parts.append(f'lr {lr:g}: final train loss post-LN {loss[("post", 0)][0]:.4f} without / '
                 f'{loss[("post", warm)][0]:.4f} with warm-up, pre-LN {loss[("pre", 0)][0]:.4f} '
                 f'/ {loss[("pre", warm)][0]:.4f}')
  reason = '; '.join(parts) + '.'
  if any(post_needs) and not any(pre_needs):
    return 'reproduced', reason
  if any(post_needs):
    return 'partly', reason + ' Pre-LN also does better with warm-up at some lr.'
  return 'not reproduced', reason + ' Post-LN does not measurably need warm-up at this scale.'
