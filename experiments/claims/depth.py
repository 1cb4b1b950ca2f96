"""He et al. 2016: deep plain nets train worse than shallow ones; residual nets do not degrade,
and they perform better.

He et al.'s quantity is the training error at convergence, so this sweep uses their recipe and
trains to convergence. CPU scale: BatchNorm ResNets of depth {20, 32, 44, 56} on digits_hard32
(data/digits.py: 32x32, its own per-step rotation, shift, bar and noise), SGD momentum 0.9,
weight decay 1e-4, He et al.'s lr 0.1 at their batch 128 (the sweep before ran 0.1 at batch 64,
twice their lr per example), divided by 10 at 50 % and 75 % of 4000 steps, residual and plain;
the plain nets also at lr 0.01, to tell an intrinsic handicap from a learning-rate effect
(plain BN-56's gradient is ~1000x larger at the input than at the output at init: the
gradients claim). 5 seeds, 60 runs. The training metric is the final train loss as logged
(the mean over the last 50-step window of training batches, train mode: He et al.'s curves);
the whole stored training set's loss in eval mode is reported beside. Full scale (`:full`, GPU
+ TFDS): CIFAR-10, depth {20, 56, 110}, 64k steps of batch 128 (configs/resnet_cifar10.py).

Rule (written before this sweep ran; experiments/stats.py): alpha 0.05; tests shifted
one-sided (Welch; exact permutation without spread). Each plain depth is taken at its best lr of
{0.1, 0.01} (the lower mean final train loss), so a learning-rate effect cannot make the
verdict. (1) The plain net "degrades": plain-56's final train loss exceeds plain-20's by more
than MIN_EFFECT (0.02 nats) and Spearman's rho of train loss against depth over the plain runs
at their best lrs is positive (p < 0.05). (2) The residual net "does not degrade": residual-56's
excess over residual-20 at lr 0.1 is ruled out (its upper bound below MIN_EFFECT). (3) Residual
"performs better" (the seed documents' "residual connections improve performance"):
residual-56's test accuracy exceeds plain-56's (at its best lr) by more than ACCURACY (1 point).
Reproduced if all three; partly if (1) and one of the others (Holm); not reproduced if (1) is
ruled out; else inconclusive (underpowered). Gate: every residual net's train loss reached a
plateau (common.plateaued: the last 10 % of the logged steps within 10 % of the 10 % before);
else inconclusive (not converged).
"""

from configs import default, resnet_cifar10
from experiments.claims.common import cnn_images, evaluated, finish, plateaued
from experiments.sweeps import product, zipped
from experiments.stats import (NOT_REPRODUCED, PARTLY, REPRODUCED, SHOWN, UNDERPOWERED, compare,
                               lookup, outcome, trend, values, with_trend)

MIN_EFFECT = 0.02
ACCURACY = 0.01
ARMS = {'model.residual': [True, False, False], 'optimizer.learning_rate': [0.1, 0.1, 0.01]}
LOW_LR = 0.01
DEPTHS = [20, 32, 44, 56]


def get_sweep(arg=None):
  if arg == 'full':
    config, depths = resnet_cifar10.get_config(), [20, 56, 110]
    config.diagnostics_every_steps = 2000
  else:
    config, depths = default.get_config(), DEPTHS
    cnn_images(config, arg)
    config.data.batch_size = 128
    config.num_train_steps, config.log_every_steps = 4000, 50
    config.optimizer.schedule = 'piecewise'
    config.optimizer.boundaries = (2000, 3000)
    config.optimizer.weight_decay, config.optimizer.momentum = 1e-4, 0.9
    config.eval_every_steps = config.checkpoint_every_steps = 4000
    config.diagnostics_every_steps = 1000
  axes = [product('model.depth', depths), zipped(ARMS)]
  smoke = [product('model.depth', [8]), product('model.residual', [True, False])]
  return finish(config, axes, arg, smoke)


def analyze(directory, group_keys, groups):
  """The whole stored training set's loss and error in eval mode for every finished run (cached
  in its eval_train.json), as 'train_set_loss' and 'train_set_error' (reported beside)."""
  for members in groups.values():
    for r in members:
      if r['state'] == 'finished':
        row = evaluated(directory, r, 'train')['rows'][0]
        r['train_set_loss'], r['train_set_error'] = row['loss'], 1.0 - row['accuracy']
  lines = ['After training (mean over seeds): the final logged train loss (the rule\'s metric), '
           'the stored training set in eval mode, the test accuracy:', '',
           '| ' + ' | '.join(k.rsplit('.', 1)[-1] for k in group_keys)
           + ' | final train loss | training-set loss | training-set error | test accuracy |',
           '|' + '---|' * (len(group_keys) + 4)]
  for key, members in groups.items():
    lines.append('| ' + ' | '.join(map(str, key)) + f' | '
                 f'{values(members, "train_loss").mean():.4f} | '
                 f'{values(members, "train_set_loss").mean():.4f} | '
                 f'{values(members, "train_set_error").mean():.4f} | '
                 f'{values(members, "test_accuracy").mean():.4f} |')
  return {'lines': lines + ['']}


def _runs(group_keys, groups, depth, residual, lr):
  return lookup(group_keys, groups, **{'model.depth': depth, 'model.residual': residual,
                                       'optimizer.learning_rate': lr})


def _depths(groups, group_keys):
  return sorted({k[group_keys.index('model.depth')] for k in groups})


def _best_plain(group_keys, groups, depth):
  """(lr, runs) of the plain net at its best lr (the lower mean final train loss)."""
  options = [(values(_runs(group_keys, groups, depth, False, lr), 'train_loss'), lr)
             for lr in (0.1, LOW_LR)]
  options = [(v.mean(), lr) for v, lr in options if len(v)]
  lr = min(options)[1] if options else 0.1
  return lr, _runs(group_keys, groups, depth, False, lr)


def gate(group_keys, groups, analysis):
  unmet = []
  for depth in _depths(groups, group_keys):
    runs = [r for r in _runs(group_keys, groups, depth, True, 0.1) if r['state'] == 'finished']
    flat = sum(plateaued(r) for r in runs)
    if not runs or flat < len(runs):
      unmet.append(f'residual-{depth} did not converge (train loss still falling in '
                   f'{len(runs) - flat}/{len(runs)} seeds)')
  return unmet


def verdict(group_keys, groups, analysis):
  depths = _depths(groups, group_keys)
  lo, hi = depths[0], depths[-1]
  best = {d: _best_plain(group_keys, groups, d) for d in depths}
  plain_lo, plain_hi = best[lo][1], best[hi][1]
  loss = lambda a, b: compare(a, b, 'train_loss', MIN_EFFECT, higher_is_better=False)
  xs, ys = [], []
  for d in depths:
    v = values(best[d][1], 'train_loss')
    xs, ys = xs + [d] * len(v), ys + list(v)
  rho, p = trend(xs, ys)
  plain = loss(plain_lo, plain_hi)
  degrades = with_trend(plain, rho, p)
  res = lambda d: _runs(group_keys, groups, d, True, 0.1)
  residual = loss(res(lo), res(hi))
  better = compare(res(hi), plain_hi, 'test_accuracy', ACCURACY)
  at_high = loss(_runs(group_keys, groups, lo, False, 0.1), _runs(group_keys, groups, hi, False, 0.1))
  mean = lambda runs, key: values(runs, key).mean()
  reason = ('final train loss, the shallow net below the deep one: plain (best lr: '
            + ', '.join(f'{best[d][0]:g} at {d}' for d in depths)
            + f'): {plain.text(f"plain-{lo}", f"plain-{hi}")}; Spearman rho of loss against '
            f'depth {rho:.2f}, one-sided p {p:.3f}; residual: '
            f'{residual.text(f"residual-{lo}", f"residual-{hi}")}; test accuracy at depth {hi}: '
            f'{better.text(f"residual-{hi}", f"plain-{hi}")}; plain at lr 0.1 alone: '
            f'{at_high.text(f"plain-{lo}", f"plain-{hi}")}. Beside the rule, training-set error '
            f'in eval mode: plain-{lo} {mean(plain_lo, "train_set_error"):.4f}, plain-{hi} '
            f'{mean(plain_hi, "train_set_error"):.4f}, residual-{lo} '
            f'{mean(res(lo), "train_set_error"):.4f}, residual-{hi} '
            f'{mean(res(hi), "train_set_error"):.4f}')
  result = outcome([residual.absent, better], needs=degrades)
  said = {REPRODUCED: '.', PARTLY: '; the residual net is not shown both free of degradation '
          'and better on the test set.',
          NOT_REPRODUCED: '; a degradation of the plain net of the stated size is ruled out.',
          UNDERPOWERED: '; the plain net\'s degradation is neither shown nor ruled out.'}
  if result == UNDERPOWERED and degrades.status == SHOWN:
    return result, reason + ('; the plain net degrades, but the residual net is shown neither '
                             'free of degradation nor better on the test set.')
  return result, reason + said[result]
