"""Ba et al. 2016 and later readings of it: LayerNorm improves generalization, not only
optimization speed.

To separate the two, the test error is compared at matched training loss: the first logged
step at which the train loss (mean over a 10-step window) is at most MATCH (0.05), read from a
test evaluation at that same step. CPU scale: ResNet-8 (width 16) on a small training subset of
digits (300 of the 1,437 training digits; the other 1,137 are held out with
`data.validation_examples` and not used), batch 32, SGD 0.9, lr 0.05 constant, 600 steps (64
epochs), test accuracy every 10 steps, norm {none, layer, batch, group}, 5 seeds (20 runs).
Full scale (`:full`): ResNet-20 on 5,000 CIFAR-10 images, 8k steps.

Rule (written before this sweep ran): metric the test accuracy at the matched step; MIN_EFFECT
1 point; one-sided Welch, alpha 0.05. Reproduced if LayerNorm's accuracy at match exceeds no
norm's by at least MIN_EFFECT with p < 0.05; not reproduced otherwise. Reported beside: BN and
GN against no norm at match, the steps each needed to match, the final test accuracy. Gate:
every norm reaches MATCH in at least 4 of its 5 seeds; else inconclusive.
"""

import numpy as np

from configs import default, resnet_cifar10
from experiments.claims.common import finish
from experiments.sweeps import product
from experiments.stats import compare, lookup, values

NORMS = ['none', 'layer', 'batch', 'group']
MATCH = 0.05
MIN_EFFECT = 0.01


def get_sweep(arg=None):
  if arg == 'full':
    config = resnet_cifar10.get_config()
    config.data.validation_examples, config.num_train_steps = 45000, 8000
    config.eval_every_steps = 100
  else:
    config = default.get_config('8')
    config.data.validation_examples, config.data.batch_size = 1137, 32
    config.num_train_steps, config.eval_every_steps = 600, 10
    config.optimizer.learning_rate = 0.05
  config.optimizer.schedule = 'constant'
  config.log_every_steps = config.eval_every_steps
  config.checkpoint_every_steps = config.num_train_steps
  return finish(config, [product('model.norm', NORMS)], arg,
                [product('model.norm', ['none', 'layer'])])


def at_match(run, level: float = MATCH):
  """(step, test accuracy there) at the first logged train loss <= level; None if never."""
  accuracy = dict(run['scalars'].get('eval/accuracy', []))
  for step, loss in run['scalars'].get('train/loss', []):
    if loss <= level and step in accuracy:
      return step, accuracy[step]
  return None


def analyze(directory, group_keys, groups):
  lines = [f'At the first step with train loss <= {MATCH} (mean over the seeds that reached it):',
           '', '| norm | reached | step | test accuracy there | final test accuracy |',
           '|---|---|---|---|---|']
  for key, members in groups.items():
    hits = []
    for r in members:
      m = at_match(r) if r['state'] == 'finished' else None
      if m:
        r['match_step'], r['match_accuracy'] = m
        hits.append(m)
    norm = key[group_keys.index('model.norm')]
    step = f'{np.mean([h[0] for h in hits]):.0f}' if hits else '–'
    acc = f'{np.mean([h[1] for h in hits]):.4f}' if hits else '–'
    lines.append(f'| {norm} | {len(hits)}/{len(members)} | {step} | {acc} | '
                 f'{values(members, "test_accuracy").mean():.4f} |')
  return {'lines': lines + ['']}


def gate(group_keys, groups, analysis):
  unmet = []
  for norm in NORMS:
    runs = lookup(group_keys, groups, **{'model.norm': norm})
    reached = sum('match_accuracy' in r for r in runs)
    if reached < len(runs) - 1 or not runs:
      unmet.append(f'{norm} reached train loss {MATCH} in {reached}/{len(runs)} seeds')
  return unmet


def verdict(group_keys, groups, analysis):
  at = lambda n: lookup(group_keys, groups, **{'model.norm': n})
  c = {n: compare(at(n), at('none'), 'match_accuracy', MIN_EFFECT) for n in NORMS[1:]}
  steps = ', '.join(f'{n} {values(at(n), "match_step").mean():.0f}' for n in NORMS)
  reason = (f'test accuracy at train loss {MATCH}: {c["layer"].text("LN", "none")}. Beside the '
            f'rule: {c["batch"].text("BN", "none")}; {c["group"].text("GN", "none")}; steps to '
            f'the match: {steps}; final test accuracy: ' +
            ', '.join(f'{n} {values(at(n), "test_accuracy").mean():.4f}' for n in NORMS))
  return ('reproduced' if c['layer'].greater else 'not reproduced'), reason + '.'
