"""He et al. 2016: deep plain nets train worse than shallow ones; residual nets do not degrade.

He et al.'s quantity is the training error at convergence, so this sweep uses their recipe and
trains to convergence. CPU scale: BatchNorm ResNets of depth {20, 56} on digits with a 1-pixel
shift augmentation (`data.augment=shift1`: their crop, scaled to 8x8 images), SGD momentum 0.9,
weight decay 1e-4, lr 0.1 divided by 10 at 50 % and 75 % of 1000 steps of batch 64 (45 epochs;
He et al. used batch 128), residual and plain; the plain nets also at lr 0.01, to tell an
intrinsic handicap from a learning-rate effect (plain BN-56's gradient is ~1000x larger at the
input than at the output at init: the gradients claim). 5 seeds, 30 runs. The final metric is
the loss on the whole training set (the 1,437 stored digits, no augmentation) in eval mode,
after training (`eval.py --split=train`). Full scale (`:full`, GPU + TFDS): CIFAR-10, depth
{20, 56, 110}, 64k steps of batch 128 (configs/resnet_cifar10.py), the same arms.

Rule (written before this sweep ran; experiments/stats.py): metric the final training-set loss
(eval mode); MIN_EFFECT 0.02 nats; alpha 0.05. Each plain depth is taken at its best lr of
{0.1, 0.01} (the lower mean loss), so a learning-rate effect cannot make the verdict. The plain
net "degrades" when plain-56's loss exceeds plain-20's by more than MIN_EFFECT (the shifted
one-sided test rejects: Welch, or exact permutation without spread); the residual net "does not
degrade" when the same excess at lr 0.1 is ruled out (its upper bound below MIN_EFFECT).
Reproduced if the plain net degrades and the residual net does not; partly if the plain net
degrades and the residual's absence of degradation is not shown (Holm over the two); not
reproduced if the plain net's degradation is ruled out; else inconclusive (underpowered). Also
stated: the same comparison for the plain nets at lr 0.1 alone, and the training-set error.
Gate: both residual nets converged (mean training-set loss at most 0.05); else inconclusive.
"""

from configs import default, resnet_cifar10
from experiments.claims.common import evaluated, finish
from experiments.sweeps import product, zipped
from experiments.stats import (NOT_REPRODUCED, PARTLY, REPRODUCED, UNDERPOWERED, compare, lookup,
                               outcome, values)

MIN_EFFECT = 0.02
CONVERGED = 0.05
ARMS = {'model.residual': [True, False, False], 'optimizer.learning_rate': [0.1, 0.1, 0.01]}
LOW_LR = 0.01


def get_sweep(arg=None):
  if arg == 'full':
    config, depths = resnet_cifar10.get_config(), [20, 56, 110]
    config.diagnostics_every_steps = 2000
  else:
    config, depths = default.get_config(), [20, 56]
    config.data.batch_size, config.data.augment = 64, 'shift1'
    config.num_train_steps, config.log_every_steps = 1000, 50
    config.optimizer.schedule = 'piecewise'
    config.optimizer.boundaries = (500, 750)
    config.optimizer.weight_decay, config.optimizer.momentum = 1e-4, 0.9
    config.eval_every_steps = config.checkpoint_every_steps = 1000
    config.diagnostics_every_steps = 250
  axes = [product('model.depth', depths), zipped(ARMS)]
  smoke = [product('model.depth', [8]), product('model.residual', [True, False])]
  return finish(config, axes, arg, smoke)


def analyze(directory, group_keys, groups):
  """The whole training set's loss and error in eval mode for every finished run (cached in its
  eval_train.json), as 'train_set_loss' and 'train_set_error'."""
  for members in groups.values():
    for r in members:
      if r['state'] == 'finished':
        row = evaluated(directory, r, 'train')['rows'][0]
        r['train_set_loss'], r['train_set_error'] = row['loss'], 1.0 - row['accuracy']
  lines = ['Whole training set in eval mode after training (mean over seeds):', '',
           '| ' + ' | '.join(k.rsplit('.', 1)[-1] for k in group_keys)
           + ' | training-set loss | training-set error |', '|' + '---|' * (len(group_keys) + 2)]
  for key, members in groups.items():
    lines.append('| ' + ' | '.join(map(str, key)) + f' | '
                 f'{values(members, "train_set_loss").mean():.4f} | '
                 f'{values(members, "train_set_error").mean():.4f} |')
  return {'lines': lines + ['']}


def _runs(group_keys, groups, depth, residual, lr):
  return lookup(group_keys, groups, **{'model.depth': depth, 'model.residual': residual,
                                       'optimizer.learning_rate': lr})


def _depths(groups, group_keys):
  return sorted({k[group_keys.index('model.depth')] for k in groups})


def _best_plain(group_keys, groups, depth):
  """(lr, runs) of the plain net at its best lr (the lower mean training-set loss)."""
  options = [(values(_runs(group_keys, groups, depth, False, lr), 'train_set_loss'), lr)
             for lr in (0.1, LOW_LR)]
  options = [(v.mean(), lr) for v, lr in options if len(v)]
  lr = min(options)[1] if options else 0.1
  return lr, _runs(group_keys, groups, depth, False, lr)


def gate(group_keys, groups, analysis):
  unmet = []
  for depth in _depths(groups, group_keys):
    loss = values(_runs(group_keys, groups, depth, True, 0.1), 'train_set_loss')
    if not len(loss) or loss.mean() > CONVERGED:
      unmet.append(f'residual-{depth} did not converge (training-set loss '
                   f'{loss.mean() if len(loss) else float("nan"):.4f} > {CONVERGED})')
  return unmet


def verdict(group_keys, groups, analysis):
  depths = _depths(groups, group_keys)
  lo, hi = depths[0], depths[-1]
  (lr_lo, plain_lo), (lr_hi, plain_hi) = (_best_plain(group_keys, groups, d) for d in (lo, hi))
  loss = lambda a, b: compare(a, b, 'train_set_loss', MIN_EFFECT, higher_is_better=False)
  plain = loss(plain_lo, plain_hi)
  residual = loss(_runs(group_keys, groups, lo, True, 0.1), _runs(group_keys, groups, hi, True, 0.1))
  at_high = loss(_runs(group_keys, groups, lo, False, 0.1), _runs(group_keys, groups, hi, False, 0.1))
  error = lambda runs: values(runs, 'train_set_error').mean()
  reason = (f'training-set loss, the shallow net below the deep one: plain (best lr: {lr_lo:g} '
            f'at {lo}, {lr_hi:g} at {hi}): {plain.text(f"plain-{lo}", f"plain-{hi}")}; residual: '
            f'{residual.text(f"residual-{lo}", f"residual-{hi}")}; plain at lr 0.1 alone: '
            f'{at_high.text(f"plain-{lo}", f"plain-{hi}")}. Training-set error: plain-{lo} '
            f'{error(plain_lo):.4f}, plain-{hi} {error(plain_hi):.4f}, residual-{lo} '
            f'{error(_runs(group_keys, groups, lo, True, 0.1)):.4f}, residual-{hi} '
            f'{error(_runs(group_keys, groups, hi, True, 0.1)):.4f}')
  result = outcome([residual.absent], needs=plain)
  said = {REPRODUCED: '.', PARTLY: '; the residual net is not shown free of degradation.',
          NOT_REPRODUCED: '; a degradation of the plain net of the stated size is ruled out.',
          UNDERPOWERED: '; the plain net\'s degradation is neither shown nor ruled out.'}
  return result, reason + said[result]
