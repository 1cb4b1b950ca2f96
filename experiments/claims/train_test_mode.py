"""LayerNorm computes the same at train and test time; BatchNorm does not.

CPU scale: ResNet-8 on digits, 500 steps, every norm in the registry, 3 seeds; then, for each
trained run, eval.py's two modes on the 360 test digits: eval mode (BN uses its running
averages) and train mode (every norm uses the statistics of the batch it is given) at test
batch sizes 1, 2, 8, 32, 128. The table below the sweep's shows the accuracy gap
(train mode − eval mode). Full scale (`:full`): ResNet-20 on CIFAR-10.
"""

import os

import numpy as np

from configs import default, resnet_cifar10
from experiments.claims.common import finish, save_figure, subplots
from experiments.sweeps import product
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


def verdict(group_keys, groups, analysis):
  """Reproduced if every norm without running statistics has a gap of exactly 0 at every batch
  size and seed, while BN's gap at batch 1 is below 0 by more than its seed spread."""
  gaps = analysis['gaps']
  same = [n for n in gaps if n != 'batch'
          and max(abs(g) for gs in gaps[n].values() for g in gs) == 0.0]
  others = [n for n in gaps if n != 'batch']
  bn1 = gaps['batch'][1]
  bn_differs = -np.mean(bn1) > (np.std(bn1, ddof=1) if len(bn1) > 1 else 0)
  numbers = (f'BN\'s accuracy with batch statistics minus with its running averages: '
             f'{np.mean(bn1):+.4f} at test batch 1, {np.mean(gaps["batch"][128]):+.4f} at 128; '
             f'{", ".join(same)} give identical accuracy in both modes at every batch size')
  if bn_differs and len(same) == len(others):
    return 'reproduced', numbers + '.'
  if bn_differs or same:
    return 'partly', numbers + f'; differing: {sorted(set(others) - set(same))}.'
  return 'not reproduced', numbers + '.'
