"""Ba et al. 2016 and later readings of it: LayerNorm improves generalization, not only
optimization speed.

To separate the two, the test error is compared at matched training loss, at several levels:
for each level in MATCHES, the first logged step at which the train loss (mean over a 10-step
window) is at most that level, read from a test evaluation at that same step. CPU scale:
ResNet-8 (width 16) on a small training subset of digits_hard32 (300 of the 1,437 training
digits; the other 1,137 are held out with `data.validation_examples` and not used), batch 32,
SGD 0.9, lr 0.05 constant, 600 steps (64 epochs), test accuracy every 10 steps, norm {none,
layer, batch, group}, 10 seeds (40 runs). Full scale (`:full`): ResNet-20 on 5,000 CIFAR-10
images, 8k steps.

Rule (written before this sweep ran; experiments/stats.py): metric the test accuracy at each
matched level; MIN_EFFECT 1 point; alpha 0.05; at a level, LN "generalizes better" when its
accuracy exceeds no norm's by more than MIN_EFFECT (the shifted one-sided test rejects: Welch,
or exact permutation without spread). Reproduced if it does at every level; partly if at some
level after Holm's correction over the levels; not reproduced if at none and the excess is
ruled out (upper bound below MIN_EFFECT) at some level; else inconclusive (underpowered: the
rule before called +0.8 points with an interval of -1.2 to +2.9 "not reproduced"). Reported
beside: BN and GN against no norm at each level, the steps each needed, the final test
accuracy. Gate: every norm reaches every level in at least 80 % of its seeds; else
inconclusive.
"""

import numpy as np

from configs import default, resnet_cifar10
from experiments.claims.common import cnn_images, finish
from experiments.sweeps import product
from experiments.stats import compare, lookup, outcome, values

NORMS = ['none', 'layer', 'batch', 'group']
MATCHES = (0.3, 0.1, 0.05)
MIN_EFFECT = 0.01
SEEDS = 10


def get_sweep(arg=None):
  if arg == 'full':
    config = resnet_cifar10.get_config()
    config.data.validation_examples, config.num_train_steps = 45000, 8000
    config.eval_every_steps = 100
  else:
    config = default.get_config('8')
    config.data.name = 'digits_hard'
    cnn_images(config, arg)
    config.data.validation_examples, config.data.batch_size = 1137, 32
    config.num_train_steps, config.eval_every_steps = 600, 10
    config.optimizer.learning_rate = 0.05
  config.optimizer.schedule = 'constant'
  config.log_every_steps = config.eval_every_steps
  config.checkpoint_every_steps = config.num_train_steps
  return finish(config, [product('model.norm', NORMS)], arg,
                [product('model.norm', ['none', 'layer'])], count=SEEDS)


def at_match(run, level: float):
  """(step, test accuracy there) at the first logged train loss <= level; None if never."""
  accuracy = dict(run['scalars'].get('eval/accuracy', []))
  for step, loss in run['scalars'].get('train/loss', []):
    if loss <= level and step in accuracy:
      return step, accuracy[step]
  return None


def _key(level):
  return f'match_accuracy@{level:g}'


def analyze(directory, group_keys, groups):
  lines = ['At the first step with train loss at most each level (mean over the seeds that '
           'reached it):', '', '| norm | level | reached | step | test accuracy there | '
           'final test accuracy |', '|---|---|---|---|---|---|']
  for key, members in groups.items():
    norm = key[group_keys.index('model.norm')]
    for level in MATCHES:
      hits = []
      for r in members:
        m = at_match(r, level) if r['state'] == 'finished' else None
        if m:
          r[f'match_step@{level:g}'], r[_key(level)] = m
          hits.append(m)
      step = f'{np.mean([h[0] for h in hits]):.0f}' if hits else '–'
      acc = f'{np.mean([h[1] for h in hits]):.4f}' if hits else '–'
      lines.append(f'| {norm} | {level:g} | {len(hits)}/{len(members)} | {step} | {acc} | '
                   f'{values(members, "test_accuracy").mean():.4f} |')
  return {'lines': lines + ['']}


def gate(group_keys, groups, analysis):
  unmet = []
  for norm in NORMS:
    runs = lookup(group_keys, groups, **{'model.norm': norm})
    for level in MATCHES:
      reached = sum(_key(level) in r for r in runs)
      if not runs or reached < 0.8 * len(runs):
        unmet.append(f'{norm} reached train loss {level:g} in {reached}/{len(runs)} seeds')
  return unmet


def verdict(group_keys, groups, analysis):
  at = lambda n: lookup(group_keys, groups, **{'model.norm': n})
  c = {(n, level): compare(at(n), at('none'), _key(level), MIN_EFFECT)
       for n in NORMS[1:] for level in MATCHES}
  name = {'layer': 'LN', 'batch': 'BN', 'group': 'GN'}
  per = lambda n: '; '.join(f'at {level:g}: {c[n, level].text(name[n], "none")}'
                            for level in MATCHES)
  steps = ', '.join(f'{n} ' + '/'.join(f'{values(at(n), f"match_step@{lv:g}").mean():.0f}'
                                       for lv in MATCHES) for n in NORMS)
  reason = (f'test accuracy at matched train loss: {per("layer")}. Beside the rule: '
            f'{per("batch")}; {per("group")}; steps to the levels {MATCHES}: {steps}; final test '
            'accuracy: ' + ', '.join(f'{n} {values(at(n), "test_accuracy").mean():.4f}'
                                     for n in NORMS))
  return outcome([c['layer', level] for level in MATCHES]), reason + '.'
