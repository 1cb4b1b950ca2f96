"""Ba et al. 2016 (and common practice since): LayerNorm does not work as well as BatchNorm in
convolutional networks.

CPU scale: ResNet-20 (width 16) on digits_hard32, batch 64, SGD 0.9 with cosine decay, 600
steps, norm {batch, group, layer, none}, lr {0.01, 0.03, 0.1}, 5 seeds (60 runs). 287 of the
1,437 training digits are held out as a validation split (`data.validation_examples`, 5 fixed
transformed copies each); every arm trains on the other 1,150. Each norm is taken at the lr
with its best mean validation accuracy (eval mode), so no arm is handicapped by one shared lr
and the test set chooses nothing. Full scale (`:full`): ResNet-20 on CIFAR-10 with 5,000
validation images, 20k steps.

Rule (written before this sweep ran; experiments/stats.py): metric test accuracy (eval mode) at
each norm's best lr; MIN_EFFECT 2 points; alpha 0.05. Reproduced if BatchNorm's accuracy
exceeds LayerNorm's by more than MIN_EFFECT (the shifted one-sided test rejects: Welch, or
exact permutation without spread); not reproduced if that excess is ruled out (upper bound
below MIN_EFFECT); else inconclusive (underpowered). Reported beside the rule: GroupNorm and no
norm against BN, LN against no norm, the test NLL. Gate: BN at its best lr between 50 % and
99 % (trained, not at the ceiling), and neither BN's nor LN's best lr at an end of the grid
(the optimum may lie beyond it: extend the grid); else inconclusive.

Grid extended (2026-12-07), after the first 60 runs and as the gate asks, with the rule
unchanged: those runs put BN's best lr at the top of {0.01, 0.03, 0.1} (validation 0.950 at 0.1)
and LN's at the bottom (0.534 at 0.01, falling with lr), so BN also runs at 0.3 and LN at 0.001
and 0.003 (15 runs). Each norm's edge is read on its own grid. The first 60 runs are unchanged
and kept; FINDINGS flags this file as committed after the sweep started, which is so.
"""

from configs import default, resnet_cifar10
from experiments.claims.common import (at_grid_edge, best_on_grid, cnn_images, evaluated,
                                       finish)
from experiments.sweeps import product, zipped
from experiments.stats import compare, lookup, outcome, values

NORMS = ['batch', 'group', 'layer', 'none']
LRS = [0.01, 0.03, 0.1]   # every norm's
EXTENDED = {'batch': [0.3], 'layer': [0.001, 0.003]}   # where the gate found an edge (above)
MIN_EFFECT = 0.02


def grid(norm: str) -> list[float]:
  """The lrs `norm` runs at."""
  return sorted(LRS + EXTENDED.get(norm, []))


def get_sweep(arg=None):
  if arg == 'full':
    config = resnet_cifar10.get_config()
    config.num_train_steps, config.data.validation_examples = 20000, 5000
  else:
    config = default.get_config('20')
    config.data.name, config.data.batch_size = 'digits_hard', 64
    cnn_images(config, arg)
    config.data.validation_examples = 287
    config.num_train_steps, config.log_every_steps = 600, 30
  config.optimizer.schedule = 'cosine'
  config.eval_every_steps = config.checkpoint_every_steps = config.num_train_steps
  pairs = [(norm, lr) for norm in NORMS for lr in grid(norm)]
  axes = [zipped({'model.norm': [n for n, _ in pairs],
                  'optimizer.learning_rate': [lr for _, lr in pairs]})]
  smoke = [product('model.norm', ['batch', 'layer'])]
  if arg == 'smoke':
    config.model.depth = 8
  return finish(config, axes, arg, smoke)


def analyze(directory, group_keys, groups):
  """Each finished run's validation accuracy in eval mode (cached in eval_validation.json) as
  'val_accuracy', and each norm's best lr by it."""
  for members in groups.values():
    for r in members:
      if r['state'] == 'finished':
        r['val_accuracy'] = evaluated(directory, r, 'validation')['rows'][0]['accuracy']
  scores = {}
  for norm in NORMS:
    acc = {lr: values(lookup(group_keys, groups, **{'model.norm': norm,
                                                    'optimizer.learning_rate': lr}),
                      'val_accuracy') for lr in grid(norm)}
    scores[norm] = {lr: v.mean() for lr, v in acc.items() if len(v)}
  table, best = best_on_grid(scores, 'norm')
  lines = ['Validation accuracy (eval mode, mean over seeds) by lr; each norm\'s best lr (bold) '
           'is where its test accuracy is read:', '', *table]
  return {'lines': lines + [''], 'best': best}


def _at_best(group_keys, groups, analysis, norm):
  return lookup(group_keys, groups, **{'model.norm': norm,
                                       'optimizer.learning_rate': analysis['best'][norm]})


def gate(group_keys, groups, analysis):
  acc = values(_at_best(group_keys, groups, analysis, 'batch'), 'test_accuracy')
  if not len(acc) or not 0.5 <= acc.mean() <= 0.99:
    return [f'BN at its best lr is at {acc.mean() if len(acc) else float("nan"):.4f}, outside '
            '50-99 %']
  return at_grid_edge({n: analysis['best'][n] for n in ('batch', 'layer')}, grid)


def verdict(group_keys, groups, analysis):
  at = lambda n: _at_best(group_keys, groups, analysis, n)
  main = compare(at('batch'), at('layer'), 'test_accuracy', MIN_EFFECT)
  beside = [compare(at('batch'), at('group'), 'test_accuracy', MIN_EFFECT).text('BN', 'GN'),
            compare(at('batch'), at('none'), 'test_accuracy', MIN_EFFECT).text('BN', 'none'),
            compare(at('layer'), at('none'), 'test_accuracy', MIN_EFFECT).text('LN', 'none'),
            'test NLL: ' + ', '.join(f'{n} {values(at(n), "test_loss").mean():.3f}'
                                     for n in NORMS)]
  best = ', '.join(f'{n} {analysis["best"][n]:g}' for n in NORMS
                   if analysis['best'][n] is not None)
  reason = (f'best lr by validation accuracy: {best}; test accuracy at it: '
            f'{main.text("BN", "LN")}. Beside the rule: ' + '; '.join(beside))
  return outcome([main]), reason + '.'
