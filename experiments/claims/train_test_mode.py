"""LayerNorm computes the same at train and test time; BatchNorm does not.

CPU scale: ResNet-8 on digits_hard32, 500 steps, every norm in the registry, 5 seeds (batch_renorm's
corrections start at step 50 and reach their limits at 250, the paper's 5k/40k of a longer run
scaled to this one: at the default 5,000 they never started and batch_renorm was BN); then, for each
trained run, eval.py's two modes on the 360 test digits: eval mode (BN uses its running
averages) and train mode (every norm uses the statistics of the batch it is given) at test
batch sizes 1, 2, 8, 32, 128. The table below the sweep's shows the accuracy gap
(train mode − eval mode). Full scale (`:full`): ResNet-20 on CIFAR-10.

Rule (written before this sweep ran; experiments/stats.py): two halves. (1) Identity: every norm
of the registry without running averages (`NormSpec.running_stats` False) gives exactly the
same test accuracy in both modes at every test batch size and seed (the two modes compute the
same function, so any difference, even one image, is a bug, not noise; an exact check, true by
construction of the norms: it tests the code, not a finding). (2) BatchNorm differs: its
accuracy in train mode at test batch 1 is shown below its eval-mode accuracy by more than
MIN_EFFECT (5 points): a one-sided one-sample t-test over the seeds' gaps, α 0.05 (exact when
every seed's gap is the same); ruled out when the opposite test rejects. Reproduced if both
hold; partly if one does (Holm); not reproduced if neither and one is ruled out; else
inconclusive (underpowered). Gate: BN's eval-mode
accuracy at least 90 % (a trained net; the gap of an untrained one says nothing).
"""

import os

import numpy as np

from configs import default, resnet_cifar10
from experiments.claims.common import cnn_images, finish, save_figure, subplots
from experiments.sweeps import product
from experiments.stats import exact, lookup, one_sample, outcome, values
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
    cnn_images(config, arg)
    config.model.renorm_start, config.model.renorm_ramp = 50, 200
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
  differs = one_sample(bn1, -MIN_EFFECT)
  numbers = (f'BN\'s accuracy with batch statistics minus with its running averages: '
             f'{bn1.mean():+.4f} at test batch 1 (n = {len(bn1)}, one-sided t-test of a gap below '
             f'-{MIN_EFFECT}: p = {differs.p:.3f}, {differs.status}), '
             f'{np.mean(gaps["batch"][128]):+.4f} at 128; {", ".join(same) or "no norm"} '
             'give identical accuracy in both modes at every batch size and seed')
  identity = exact(len(same) == len(others))
  differing = sorted(set(others) - set(same))
  return (outcome([identity, differs]),
          numbers + (f'; differing: {differing}.' if differing else '.'))
