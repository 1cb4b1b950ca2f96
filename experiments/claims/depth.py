"""He et al. 2016: deep plain nets train worse than shallow ones; residual nets do not degrade.

CPU scale: ResNets of depth {8, 20, 56} on digits, 300 steps, × residual × norm {batch, none},
3 seeds. Full scale (`:full`, GPU + TFDS): He et al.'s CIFAR-10 recipe (configs/resnet_cifar10.py,
64k steps) at depth {20, 56, 110}, the same other axes.
"""

from configs import default, resnet_cifar10
from experiments.claims.common import finish
from experiments.sweeps import product
from experiments.stats import compare, group_stat


def get_sweep(arg=None):
  if arg == 'full':
    config, depths = resnet_cifar10.get_config(), [20, 56, 110]
    config.diagnostics_every_steps = 2000
  else:
    config, depths = default.get_config(), [8, 20, 56]
    config.num_train_steps = 300
    config.eval_every_steps = config.checkpoint_every_steps = 100
    config.diagnostics_every_steps = 100
  axes = [product('model.depth', depths), product('model.residual', [True, False]),
          product('model.norm', ['batch', 'none'])]
  smoke = [product('model.depth', [8]), product('model.residual', [True, False])]
  return finish(config, axes, arg, smoke)


MIN_EFFECT = 0.02   # final train loss


def verdict(group_keys, groups):
  """Rule: a net "degrades" when its deepest version's final train loss exceeds its shallowest
  version's by at least MIN_EFFECT with a one-sided Welch p < 0.05 over the seeds (BatchNorm).
  Reproduced if the plain net degrades while the residual net does not."""
  index = {k: i for i, k in enumerate(group_keys)}
  def runs(depth, residual, norm='batch'):
    for key, members in groups.items():
      norm_ok = 'model.norm' not in index or key[index['model.norm']] == norm
      if norm_ok and (key[index['model.depth']], key[index['model.residual']]) == (depth, residual):
        return members
    return []
  stat = lambda depth, residual: group_stat(runs(depth, residual))
  depths = sorted({k[index['model.depth']] for k in groups})
  lo, hi = depths[0], depths[-1]
  plain = compare(runs(lo, False), runs(hi, False), 'train_loss', MIN_EFFECT,
                  higher_is_better=False)
  residual = compare(runs(lo, True), runs(hi, True), 'train_loss', MIN_EFFECT,
                     higher_is_better=False)
  plain_worse, residual_worse = plain.greater, residual.greater
  numbers = (f'final train loss with BN: plain {lo}: {stat(lo, False)[0]:.4f}, plain {hi}: '
             f'{stat(hi, False)[0]:.4f}; residual {lo}: {stat(lo, True)[0]:.4f}, residual {hi}: '
             f'{stat(hi, True)[0]:.4f}; loss advantage of the shallow net: plain: '
             f'{plain.text(str(lo), str(hi))}; residual: {residual.text(str(lo), str(hi))}')
  if plain_worse and not residual_worse:
    return 'reproduced', numbers + '.'
  if plain_worse or not residual_worse:
    return 'partly', numbers + ('.' if plain_worse else
                                '; the plain net does not degrade measurably at this scale.')
  return 'not reproduced', numbers + '.'
