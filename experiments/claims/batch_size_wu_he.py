"""Wu & He 2018: BatchNorm degrades at tiny batch sizes; GroupNorm does not. (b) Their
protocol: the batch size changes, the learning rate scales linearly with it, the number of
epochs stays the same.

CPU scale: ResNet-8 (width 16) on digits_hard32 (data/digits.py), batch {2, 4, 8, 32}, SGD 0.9 with
lr 0.05 × b / 64 (cosine), 8 epochs for every batch size, norm {batch, group, layer}, 5 seeds
(LayerNorm for "trains consistently across batch sizes"). The mechanism at fixed optimization is
`batch_size` (ghost groups). Full scale (`:full`): ResNet-20 on CIFAR-10, batch {2, 4, 8, 32}, 30
epochs.

Rule (written before the sweep ran; experiments/stats.py): metric test accuracy (eval mode);
MIN_EFFECT 2 points; α 0.05. A norm "drops" when its accuracy at batch 32 beats its accuracy at
batch 2 by more than MIN_EFFECT (the shifted one-sided test rejects: Welch, or exact permutation
without spread) and Spearman's rho of accuracy against log batch size over its runs is positive
with p < 0.05. A norm "does not drop" when it is flat: the 90 % interval of its accuracy at 32
minus at 2 lies inside ±MIN_EFFECT (equivalence, two one-sided tests). Reproduced if BN drops
and GN and LN are flat; partly if BN drops and one of them is flat (Holm); not reproduced if
BN's drop is ruled out (its upper bound below MIN_EFFECT); else inconclusive (underpowered).
Gate, for every arm (norm × batch): test accuracy between 50 % and 99 % and the train loss on a
plateau (common.plateaued: the last 10 % of the logged steps within 10 % of the 10 % before);
else inconclusive (regime not reached).
"""

import numpy as np

from configs import default, resnet_cifar10
from experiments.claims.common import cnn_images, finish, plateaued
from experiments.sweeps import product, zipped
from experiments.stats import (SHOWN, UNDERPOWERED, compare, lookup, outcome, trend, values,
                               with_trend)

MIN_EFFECT = 0.02
BATCHES = [2, 4, 8, 32]
NORMS = ['batch', 'group', 'layer']
EPOCHS = 8


def get_sweep(arg=None):
  if arg == 'full':
    config, examples, epochs, base = resnet_cifar10.get_config(), 50000, 30, 0.1
    config.optimizer.schedule = 'cosine'
  else:
    config, examples, epochs, base = default.get_config('8'), 1437, EPOCHS, 0.05
    config.data.name = 'digits_hard'
    cnn_images(config, arg)
  steps = [epochs * examples // b for b in BATCHES]
  config.eval_every_steps = config.checkpoint_every_steps = 10 ** 9   # final only
  axes = [zipped({'data.batch_size': BATCHES, 'num_train_steps': steps,
                  'log_every_steps': [max(1, s // 20) for s in steps],
                  'optimizer.learning_rate': [base * b / 64 for b in BATCHES]}),
          product('model.norm', NORMS)]
  smoke = [product('data.batch_size', [2]), product('model.norm', ['batch', 'group'])]
  return finish(config, axes, arg, smoke)


def _runs(group_keys, groups, norm, batch):
  return lookup(group_keys, groups, **{'data.batch_size': batch, 'model.norm': norm})


def gate(group_keys, groups):
  unmet = []
  for norm in NORMS:
    for batch in BATCHES:
      runs = [r for r in _runs(group_keys, groups, norm, batch) if r['state'] == 'finished']
      acc = values(runs, 'test_accuracy')
      flat = sum(plateaued(r) for r in runs)
      if not len(acc) or not 0.5 <= acc.mean() <= 0.99:
        unmet.append(f'{norm} at batch {batch}: test accuracy '
                     f'{acc.mean() if len(acc) else float("nan"):.4f}, outside 50-99 %')
      elif flat < len(runs):
        unmet.append(f'{norm} at batch {batch}: train loss still falling in '
                     f'{len(runs) - flat}/{len(runs)} seeds')
  return unmet


def _drop(group_keys, groups, norm):
  c = compare(_runs(group_keys, groups, norm, max(BATCHES)),
              _runs(group_keys, groups, norm, min(BATCHES)), 'test_accuracy', MIN_EFFECT)
  xs, ys = [], []
  for b in BATCHES:
    v = values(_runs(group_keys, groups, norm, b), 'test_accuracy')
    xs += [np.log2(b)] * len(v)
    ys += list(v)
  rho, p = trend(xs, ys)
  curve = ', '.join(f'{values(_runs(group_keys, groups, norm, b), "test_accuracy").mean():.4f}'
                    for b in BATCHES)
  text = (f'{norm} at batch {BATCHES}: {curve}; '
          f'{c.text(f"{norm}@{max(BATCHES)}", f"{norm}@{min(BATCHES)}")}; '
          f'Spearman rho {rho:.2f}, one-sided p {p:.3f}')
  return with_trend(c, rho, p), c.equivalence(MIN_EFFECT), text


def verdict(group_keys, groups):
  parts = {n: _drop(group_keys, groups, n) for n in NORMS}
  flat = {n: parts[n][1] for n in ('group', 'layer')}
  numbers = 'test accuracy: ' + '; '.join(text for _, _, text in parts.values())
  numbers += '; flat within ±MIN_EFFECT (equivalence): ' + ', '.join(
      f'{n} {part.status}' for n, part in flat.items())
  result = outcome(flat.values(), needs=parts['batch'][0])
  said = {'reproduced': '.', 'partly': '; GN and LN are not both shown flat.',
          'not reproduced': '; a BN drop of the stated size is ruled out.',
          UNDERPOWERED: '; BN\'s drop is neither shown with its trend nor ruled out.'}
  if result == UNDERPOWERED and parts['batch'][0].status == SHOWN:
    return result, numbers + ('; BN drops, but neither GN nor LN is shown flat, which "partly" '
                              'needs (the rule has no clause for flatness ruled out: its "else").')
  return result, numbers + said[result]
