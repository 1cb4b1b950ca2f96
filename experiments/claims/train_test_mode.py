"""LayerNorm computes the same at train and test time; BatchNorm does not.

CPU scale: ResNet-8 on digits, 500 steps, every norm in the registry, 3 seeds; then, for each
trained run, eval.py's two modes on the 360 test digits: eval mode (BN uses its running
averages) and train mode (every norm uses the statistics of the batch it is given) at test
batch sizes 1, 2, 8, 32, 128. The table below the sweep's shows the accuracy gap
(train mode − eval mode). Full scale (`:full`): ResNet-20 on CIFAR-10.

Rule (written before this sweep ran): two halves. (1) Identity: every norm of the registry
without running averages (`NormSpec.running_stats` False) gives exactly the same test accuracy
in both modes at every test batch size and seed (the two modes compute the same function, so
any difference, even one image, is a bug, not noise). (2) BatchNorm differs: its accuracy in
train mode at test batch 1 is below its eval-mode accuracy by at least MIN_EFFECT (5 points)
on average over seeds, with a one-sided one-sample t-test over the seeds' gaps p < 0.05.
Reproduced if both hold; partly if one does; not reproduced if neither. Gate: BN's eval-mode
accuracy at least 90 % (a trained net; the gap of an untrained one says nothing).
"""

import os

import numpy as np
from scipy import stats as scipy_stats

from configs import default, resnet_cifar10
from experiments.claims.common import finish, save_figure, subplots
from experiments.sweeps import product
from experiments.stats import lookup, values
from models import norms

NORMS = list(norms.NORMS)   # every norm in the registry
BATCH_SIZES = [1, 2, 8, 32, 128]


def get_sweep(arg=None):
  if arg == 'full':
    config = resnet_cifar10.get_config()
    config.num_train_steps, config.optimizer.schedule = 20000, 'cosine'
  else:
    config = default.get_config()
    config.model.depth = 8
  axes = [product('model.norm', NORMS)]
  smoke = [product('model.norm', ['batch', 'layer'])]
  return finish(config, axes, arg, smoke)


def analyze(directory, group_keys, groups):
  """Runs eval.py's evaluation on every finished run (cached in its eval.json)."""
  from training import evaluation
  from training import workdir as wd
  gaps = {}     # norm -> {batch size: [accuracy gap per seed]}
  for key, members in groups.items():
    norm = key[group_keys.index('model.norm')]
    for r in members:
      if r['state'] != 'finished':
        continue
      workdir = os.path.join(directory, r['name'])
      path = os.path.join(workdir, 'eval.json')
      if os.path.exists(path):
        result = wd.read_json(path)
      else:
        result = evaluation.evaluate_workdir(workdir, BATCH_SIZES)
        wd.write_json_atomic(path, result)
      base = result['rows'][0]['accuracy']
      for row in result['rows'][1:]:
        gaps.setdefault(norm, {}).setdefault(row['batch_size'], []).append(row['accuracy'] - base)
  lines = ['Accuracy in train mode (batch statistics) minus eval mode, by test batch size '
           '(mean ± std over seeds; 0 means the norm computes the same in both modes):', '',
           '| norm | ' + ' | '.join(f'batch {b}' for b in BATCH_SIZES) + ' |',
           '|---|' + '---|' * len(BATCH_SIZES)]
  for norm, by_bs in gaps.items():
    lines.append(f'| {norm} | ' + ' | '.join(
        f'{np.mean(by_bs[b]):+.4f} ± {np.std(by_bs[b], ddof=1) if len(by_bs[b]) > 1 else 0:.4f}'
        for b in BATCH_SIZES) + ' |')
  return {'lines': lines + [''], 'gaps': gaps, 'plot': _plot(directory, gaps)}


def _plot(directory, gaps):
  fig, ax = subplots(figsize=(7, 4.5))
  for norm, by_bs in gaps.items():
    ax.errorbar(BATCH_SIZES, [np.mean(by_bs[b]) for b in BATCH_SIZES],
                yerr=[np.std(by_bs[b]) for b in BATCH_SIZES], marker='o', capsize=3, label=norm)
  ax.set_xscale('log', base=2)
  ax.set_xlabel('test batch size (train-mode normalization)')
  ax.set_ylabel('accuracy: train mode − eval mode')
  ax.axhline(0, color='k', lw=0.5)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  path = save_figure(fig, directory, 'mode_gap.png')
  return path


MIN_EFFECT = 0.05


def gate(group_keys, groups, analysis):
  acc = values(lookup(group_keys, groups, **{'model.norm': 'batch'}), 'test_accuracy')
  if not len(acc) or acc.mean() < 0.9:
    return [f'BN\'s eval-mode accuracy is {acc.mean() if len(acc) else float("nan"):.4f}, '
            'below 90 % (not a trained net)']
  return []


def verdict(group_keys, groups, analysis):
  gaps = analysis['gaps']
  others = [n for n in gaps if not norms.NORMS[n].running_stats]
  same = [n for n in others if max(abs(g) for gs in gaps[n].values() for g in gs) == 0.0]
  bn1 = np.asarray(gaps['batch'][1])
  p = (float(scipy_stats.ttest_1samp(bn1, 0.0, alternative='less').pvalue) if len(bn1) > 1
       and bn1.std() > 0 else float(bn1.mean() >= 0) if len(bn1) > 1 else float('nan'))
  bn_differs = len(bn1) > 1 and -bn1.mean() >= MIN_EFFECT and p < 0.05
  numbers = (f'BN\'s accuracy with batch statistics minus with its running averages: '
             f'{bn1.mean():+.4f} at test batch 1 (n = {len(bn1)}, one-sided t-test p = '
             f'{p:.3f}; minimum effect {MIN_EFFECT}: {"shown" if bn_differs else "not shown"}), '
             f'{np.mean(gaps["batch"][128]):+.4f} at 128; {", ".join(same) or "no norm"} '
             'give identical accuracy in both modes at every batch size and seed')
  identity = len(same) == len(others)
  if bn_differs and identity:
    return 'reproduced', numbers + '.'
  if bn_differs or identity:
    return 'partly', numbers + f'; differing: {sorted(set(others) - set(same))}.'
  return 'not reproduced', numbers + '.'
