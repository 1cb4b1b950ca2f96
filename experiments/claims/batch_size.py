"""Wu & He 2018: BatchNorm degrades when its statistics come from few examples; GroupNorm and
LayerNorm, which use none, do not. (a) The mechanism at fixed optimization: ghost BatchNorm.

CPU scale: ResNet-8 (width 16) on digits_hard32 (data/digits.py), batch 64, SGD 0.9 with cosine
decay, 600 steps, BatchNorm with statistics groups of {2, 4, 8, 16, 64} examples (ghost BN; 64 =
the whole batch) against GroupNorm and LayerNorm at the same batch, lr {0.02, 0.05, 0.1}, 5
seeds. Every arm (each group size, GN, LN) is read at its own best lr, the one with its best mean
validation accuracy (eval mode; 287 training digits held out as in ln_cnn): the sweep before ran
every arm at BN's 0.05, where ln_cnn had found GN's and LN's best at 0.03. For every run the
test error is measured in eval mode (running averages) and in train mode with test batches of the group size (the
statistics it trained with), so a train/test statistics mismatch (eval mode worse, train mode fine)
is told apart from damage to training (both worse). The batch-size protocol (lr scaled with the
batch) is `batch_size_wu_he`. Full scale (`:full`): ResNet-20, CIFAR-10.

Rule (written before the sweep ran; experiments/stats.py): metric eval-mode test accuracy;
MIN_EFFECT 2 points; α 0.05; a difference is shown when the one-sided test of "improvement ≤
MIN_EFFECT" rejects (Welch, or the exact permutation test for a group without spread). BN
"degrades" when BN at group 64 beats BN at group 2 by more than MIN_EFFECT so shown and
Spearman's rho of accuracy against log group size over all BN runs is positive with p < 0.05 (a
trend, not two points); the degradation is ruled out when its upper bound lies below MIN_EFFECT.
Reproduced if BN degrades and GroupNorm and LayerNorm each beat BN at group 2 by more than
MIN_EFFECT; partly if BN degrades and one of them is shown (Holm); not reproduced if the
degradation is ruled out; else inconclusive (underpowered). The train-mode numbers are reported
beside (mismatch vs damage) and are not part of the rule. Gate: BN at group 64 between 50 % and
99 % (trained, not at the ceiling), and no compared arm's best lr at an end of the grid; else
inconclusive.

Grid extended (2026-12-07), as the gate asks and with the rule unchanged, after the BN runs of
the first grid had ended and before GN's and LN's had: every BN arm's best validation accuracy
was at the top, lr 0.1 (groups 2 / 4 / 8 / 16 / 64: 0.814 / 0.862 / 0.873 / 0.878 / 0.884, each
rising from 0.05), so every BN arm also runs at 0.2 and 0.4 (two steps, so that one more round
is unlikely; 50 runs). When GN's and LN's runs had ended, GN's best was at the top too (0.459 /
0.551 / 0.590 at 0.02 / 0.05 / 0.1), so it also runs at 0.2 and 0.4 (10 runs); LN's was inside
(0.431 / 0.496 / 0.433). Each arm's edge is read on its own grid; the runs before keep their
names.
"""

import os

import numpy as np

from configs import default, resnet_cifar10
from experiments.claims.common import (at_grid_edge, best_on_grid, cnn_images, evaluated, finish,
                                       save_figure, subplots)
from experiments.sweeps import zipped
from experiments.stats import (SHOWN, UNDERPOWERED, compare, lookup, outcome, trend, values,
                               with_trend)

MIN_EFFECT = 0.02
GROUPS = [2, 4, 8, 16, 64]
ARMS = {'model.norm': ['batch'] * 5 + ['group', 'layer'],
        'model.bn_scope': ['ghost'] * 4 + ['global'] * 3,
        'model.bn_ghost_size': [2, 4, 8, 16, 0, 0, 0]}
LRS = [0.02, 0.05, 0.1]
NAMES = [f'BN@{g}' for g in GROUPS] + ['group', 'layer']   # one per column of ARMS
EXTENDED = {**{f'BN@{g}': [0.2, 0.4] for g in GROUPS}, 'group': [0.2, 0.4]}   # the gate's edges


def grid(arm: str) -> list[float]:
  """The lrs `arm` runs at."""
  return sorted(LRS + EXTENDED.get(arm, []))


def get_sweep(arg=None):
  if arg == 'full':
    config = resnet_cifar10.get_config()
    config.num_train_steps, config.optimizer.schedule = 20000, 'cosine'
  else:
    config = default.get_config('8')
    config.data.name, config.num_train_steps = 'digits_hard', 600
    cnn_images(config, arg)
    config.optimizer.learning_rate, config.log_every_steps = 0.05, 30
    config.data.validation_examples = 287
  config.data.batch_size = 64
  config.eval_every_steps = config.checkpoint_every_steps = config.num_train_steps
  smoke = [zipped({k: v[:1] + v[5:6] for k, v in ARMS.items()})]
  cells = [(i, lr) for i, arm in enumerate(NAMES) for lr in grid(arm)]
  axis = zipped({**{k: [v[i] for i, _ in cells] for k, v in ARMS.items()},
                 'optimizer.learning_rate': [lr for _, lr in cells]})
  return finish(config, [axis], arg, smoke)


def arm_of(key, group_keys) -> str:
  norm = key[group_keys.index('model.norm')]
  return f'BN@{group_of(key, group_keys)}' if norm == 'batch' else norm


def validation_by_lr(group_keys, groups) -> tuple[list[str], dict]:
  """Each arm's mean validation accuracy by lr ('val_accuracy' on each run) as a table, and
  {arm: its lr with the best}."""
  if 'optimizer.learning_rate' not in group_keys:
    return [], {}
  i = group_keys.index('optimizer.learning_rate')
  scores = {}
  for key, members in groups.items():
    v = values(members, 'val_accuracy')
    arm = scores.setdefault(arm_of(key, group_keys), {})
    if len(v):
      arm[key[i]] = v.mean()
  return best_on_grid(scores)


def best_lrs(group_keys, groups) -> dict:
  """{arm: its lr with the best mean validation accuracy}."""
  return validation_by_lr(group_keys, groups)[1]


def group_of(key, group_keys) -> int:
  """The statistics group size of a BN arm (64 = the whole batch)."""
  size = key[group_keys.index('model.bn_ghost_size')]
  return size or 64


def analyze(directory, group_keys, groups):
  """Each finished run's test accuracy in train mode with test batches of its group size
  (cached in its eval_group.json); 'train_mode_accuracy' is added to the run."""
  from training import evaluation
  from training import workdir as wd
  for key, members in groups.items():
    size = group_of(key, group_keys)
    for r in members:
      if r['state'] != 'finished':
        continue
      if 'optimizer.learning_rate' in group_keys:
        r['val_accuracy'] = evaluated(directory, r, 'validation')['rows'][0]['accuracy']
      workdir = os.path.join(directory, r['name'])
      path = os.path.join(workdir, 'eval_group.json')
      if not os.path.exists(path):
        wd.write_json_atomic(path, evaluation.evaluate_workdir(workdir, [size]))
      r['train_mode_accuracy'] = wd.read_json(path)['rows'][1]['accuracy']
  table, best = validation_by_lr(group_keys, groups)
  lines = ['Validation accuracy (eval mode, mean over seeds) by lr; each arm\'s best (bold) is '
           'where it is read:', '', *table, ''] if table else []
  lines += ['Test accuracy by mode (mean over seeds) at each arm\'s best lr (by validation '
           'accuracy): eval mode uses the running averages; train mode normalizes test batches '
           'of the arm\'s group size with their own statistics.', '',
           '| arm | best lr | eval mode | train mode, batches of the group size |',
           '|---|---|---|---|']
  chosen = {}
  for key, members in groups.items():
    arm = arm_of(key, group_keys)
    if 'optimizer.learning_rate' in group_keys and \
        key[group_keys.index('optimizer.learning_rate')] != best.get(arm):
      continue
    chosen[key] = members
    lines.append(f'| {arm} | {best.get(arm)} | {values(members, "test_accuracy").mean():.4f} | '
                 f'{values(members, "train_mode_accuracy").mean():.4f} |')
  return {'lines': lines + [''], 'best': best, 'plot': _plot(directory, group_keys, chosen)}


def _plot(directory, group_keys, groups):
  fig, ax = subplots(figsize=(7, 4.5))
  bn = [(group_of(k, group_keys), m) for k, m in groups.items()
        if k[group_keys.index('model.norm')] == 'batch']
  for metric, name in (('test_accuracy', 'BN, eval mode'),
                       ('train_mode_accuracy', 'BN, train mode (test batches of the group)')):
    xs = [g for g, _ in bn]
    ys = [values(m, metric) for _, m in bn]
    ax.errorbar(xs, [y.mean() for y in ys], yerr=[[y.mean() - y.min() for y in ys],
                                                  [y.max() - y.mean() for y in ys]],
                marker='o', capsize=3, label=name)
  for k, m in groups.items():
    norm = k[group_keys.index('model.norm')]
    if norm != 'batch':
      ax.axhline(values(m, 'test_accuracy').mean(), ls='--', lw=1, label=f'{norm} (batch 64)')
  ax.set_xscale('log', base=2)
  ax.set_xlabel('examples per BatchNorm statistics group')
  ax.set_ylabel('test accuracy (mean; bars: lowest to highest seed)')
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  ax.grid(alpha=0.3)
  return save_figure(fig, directory, 'ghost_groups.png')


def _at_best(group_keys, groups, analysis, arm, **keys):
  lr = analysis.get('best', {}).get(arm)
  return lookup(group_keys, groups, **keys,
                **({'optimizer.learning_rate': lr} if lr is not None else {}))


def _bn(group_keys, groups, analysis, size):
  return _at_best(group_keys, groups, analysis, f'BN@{size}', **{
      'model.norm': 'batch', 'model.bn_ghost_size': 0 if size == 64 else size})


def gate(group_keys, groups, analysis):
  full = values(_bn(group_keys, groups, analysis, 64), 'test_accuracy')
  if not len(full) or not 0.5 <= full.mean() <= 0.99:
    return [f'BN at group 64 is at {full.mean() if len(full) else float("nan"):.4f}, outside '
            '50-99 % (untrained or at the ceiling)']
  if 'optimizer.learning_rate' not in group_keys:
    return []
  return at_grid_edge(analysis.get('best', {}), grid)


def verdict(group_keys, groups, analysis):
  bn = lambda g: _bn(group_keys, groups, analysis, g)
  other = lambda n: _at_best(group_keys, groups, analysis, n, **{'model.norm': n})
  drop = compare(bn(64), bn(2), 'test_accuracy', MIN_EFFECT)
  xs, ys = [], []
  for g in GROUPS:
    v = values(bn(g), 'test_accuracy')
    xs += [np.log2(g)] * len(v)
    ys += list(v)
  rho, p = trend(xs, ys)
  degrades = with_trend(drop, rho, p)
  vs = {n: compare(other(n), bn(2), 'test_accuracy', MIN_EFFECT) for n in ('group', 'layer')}
  curve = ', '.join(f'{values(bn(g), "test_accuracy").mean():.4f}' for g in GROUPS)
  mode = ', '.join(f'{values(bn(g), "train_mode_accuracy").mean():.4f}' for g in GROUPS)
  numbers = (f'eval-mode test accuracy, BN at groups {GROUPS}: {curve} (train mode with test '
             f'batches of the group: {mode}); {drop.text("BN@64", "BN@2")}; trend over all BN '
             f'runs: Spearman rho {rho:.2f}, one-sided p {p:.3f}; '
             + '; '.join(c.text(n, 'BN@2') for n, c in vs.items()))
  said = {'reproduced': '.', 'partly': '; BN degrades with its group, but not below both GN and LN.',
          'not reproduced': '; a degradation of the stated size is ruled out.',
          UNDERPOWERED: '; neither a degradation of the stated size and trend nor its absence is '
          'shown.'}
  result = outcome(vs.values(), needs=degrades)
  if result == UNDERPOWERED and degrades.status == SHOWN:
    return result, numbers + ('; BN degrades with its group, but neither GN nor LN is shown above '
                              'BN@2, which "partly" needs (the rule has no clause for both ruled '
                              'out: they fall under its "else").')
  return result, numbers + said[result]
