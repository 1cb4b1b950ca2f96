"""Wu & He 2018: BatchNorm degrades at tiny batch sizes; GroupNorm does not. (b) Their
protocol: the batch size changes, the learning rate scales linearly with it, the number of
epochs stays the same.

CPU scale: ResNet-8 (width 16) on digits_hard (README), batch {2, 4, 8, 32}, SGD 0.9 with lr
0.05 × b / 64 (cosine), 8 epochs for every batch size, norm {batch, group}, 3 seeds. The
mechanism at fixed optimization is `batch_size` (ghost groups). Full scale (`:full`): ResNet-20
on CIFAR-10, batch {2, 4, 8, 32}, 30 epochs.

Rule (written before the sweep ran): metric test accuracy (eval mode); MIN_EFFECT 2 points;
tests one-sided Welch, α 0.05. A norm "drops" when its accuracy at batch 32 beats its accuracy
at batch 2 by at least MIN_EFFECT and Spearman's rho of accuracy against log batch size over
its runs is positive with p < 0.05. Reproduced if BN drops and GN does not; partly if both drop;
not reproduced if BN does not drop. Gate: BN at batch 32 between 50 % and 99 % (trained, not
at the ceiling); else inconclusive.
"""

import numpy as np

from configs import default, resnet_cifar10
from experiments.claims.common import finish
from experiments.sweeps import product, zipped
from experiments.stats import compare, lookup, trend, values

MIN_EFFECT = 0.02
BATCHES = [2, 4, 8, 32]
EPOCHS = 8


def get_sweep(arg=None):
  if arg == 'full':
    config, examples, epochs, base = resnet_cifar10.get_config(), 50000, 30, 0.1
    config.optimizer.schedule = 'cosine'
  else:
    config, examples, epochs, base = default.get_config('8'), 1437, EPOCHS, 0.05
    config.data.name = 'digits_hard'
  steps = [epochs * examples // b for b in BATCHES]
  config.eval_every_steps = config.checkpoint_every_steps = 10 ** 9   # final only
  axes = [zipped({'data.batch_size': BATCHES, 'num_train_steps': steps,
                  'log_every_steps': [max(1, s // 20) for s in steps],
                  'optimizer.learning_rate': [base * b / 64 for b in BATCHES]}),
          product('model.norm', ['batch', 'group'])]
  smoke = [product('data.batch_size', [2]), product('model.norm', ['batch', 'group'])]
  return finish(config, axes, arg, smoke)


def _runs(group_keys, groups, norm, batch):
  return lookup(group_keys, groups, **{'data.batch_size': batch, 'model.norm': norm})


def gate(group_keys, groups):
  ref = values(_runs(group_keys, groups, 'batch', max(BATCHES)), 'test_accuracy')
  if not len(ref) or not 0.5 <= ref.mean() <= 0.99:
    return [f'BN at batch {max(BATCHES)} is at {ref.mean() if len(ref) else float("nan"):.4f}, '
            'outside 50-99 % (untrained or at the ceiling)']
  return []


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
  text = (f'{norm} at batch {BATCHES}: {curve}; {c.text(f"{norm}@{max(BATCHES)}", f"{norm}@{min(BATCHES)}")}; '
          f'Spearman rho {rho:.2f}, one-sided p {p:.3f}')
  return c.greater and rho > 0 and p < 0.05, text


def verdict(group_keys, groups):
  (bn, bn_text), (gn, gn_text) = (_drop(group_keys, groups, n) for n in ('batch', 'group'))
  numbers = f'test accuracy: {bn_text}; {gn_text}'
  if bn and not gn:
    return 'reproduced', numbers + '.'
  if bn:
    return 'partly', numbers + '; GroupNorm drops too.'
  return 'not reproduced', numbers + '; BN does not drop by the stated size with a trend.'
