"""Brock, De & Smith 2021 (NF-ResNets, NFNets): a Normalizer-Free ResNet with adaptive gradient
clipping trains as well as a BatchNorm ResNet at the same depth and batch size, and keeps
training at batch sizes where BatchNorm degrades.

CPU scale: ResNet-8 (width 16) on digits_hard32, {BatchNorm, NF-ResNet (norm=none, nf_alpha=0.2,
optimizer.agc=0.1)} × batch {2, 64} × lr {0.05, 0.1, 0.2} × b / 128 (linear scaling), the same
12 epochs for every batch (cosine), 5 seeds. Each (arm, batch) is read at its own best lr by
validation accuracy (287 training digits held out): the sweep before ran one untuned lr and
found the NF net 41 points below BN, far beyond the papers' gap. Batch 2 (not 4): where BN's
statistics are weakest. AGC's clip 0.1: the NFNets paper uses 0.01 at batch 4096 and reports
that smaller batches tolerate larger clips. Before any verdict, the NF net's signal propagation
at init is checked on a batch of the training images (32x32): the residual stream's second
moment after block i should be β_i² + α² (reset to 1 + α² after a transition block) within 25 %,
on maps of 8x8 and up (tests/test_resnet.py checks the same on Gaussian inputs). Full scale
(`:full`): ResNet-20 on CIFAR-10, batch {8, 128}, 30 epochs.

Rule (written before the sweep ran; experiments/stats.py): metric the final test accuracy at
each (arm, batch)'s best lr; alpha 0.05; tests shifted one-sided (Welch; exact permutation
without spread). (a) "As well as" at batch 64 (non-inferiority): NF − BN is shown above −MARGIN
(1 point), its one-sided lower bound above −MARGIN; ruled out when its upper bound lies below
−MARGIN. (b) "BN degrades" at batch 2: BN at 64 exceeds BN at 2 by more than MARGIN; "NF keeps
training": NF at 2 is above BN at 2 by more than MARGIN and NF's own drop from 64 to 2 is shown
smaller than MARGIN (its excess ruled out); (b) is ruled out when either of these is. Reproduced
if (a) and (b); partly if one after Holm over the two; not reproduced if neither and one is
ruled out; else inconclusive (underpowered). Gates: the NF net's init variances follow the
schedule (else it is not the net the papers' bookkeeping describes); BN degrades at batch 2 (the
regime the second half is about); no best lr at an end of the grid; else inconclusive.
"""

import re

import numpy as np

from configs import default, resnet_cifar10
from experiments.claims.common import at_grid_edge, cnn_images, evaluated, finish
from experiments.sweeps import product, zipped
from experiments.stats import all_of, compare, outcome, values

MARGIN = 0.01
ALPHA = 0.2
ARMS = {'model.norm': ['batch', 'none'], 'model.nf_alpha': [0.0, ALPHA],
        'optimizer.agc': [0.0, 0.1]}
EPOCHS = 12
SCALES = [0.05, 0.1, 0.2]    # lr at batch 128; lr = scale × b / 128
TOLERANCE = 0.25


def get_sweep(arg=None):
  if arg == 'full':
    config, examples, batches, epochs = resnet_cifar10.get_config(), 50000, [8, 128], 30
    config.optimizer.schedule = 'cosine'
  else:
    config, examples, batches, epochs = default.get_config('8'), 1437 - 287, [2, 64], EPOCHS
    config.data.name = 'digits_hard'
    cnn_images(config, arg)
    config.data.validation_examples = 287
  config.eval_every_steps = config.checkpoint_every_steps = 10 ** 9   # final only
  cells = [(b, s) for b in batches for s in SCALES]
  steps = [epochs * examples // b for b, _ in cells]
  axes = [zipped({'data.batch_size': [b for b, _ in cells], 'num_train_steps': steps,
                  'log_every_steps': [max(1, n // 20) for n in steps],
                  'optimizer.learning_rate': [s * b / 128 for b, s in cells]}),
          zipped(ARMS)]
  smoke = [product('data.batch_size', [4]), zipped(ARMS)]
  return finish(config, axes, arg, smoke)


def signal_propagation(batch_size: int = 64) -> list[tuple[str, float, float]]:
  """(block, measured second moment, expected) of the residual stream of the sweep's NF net at
  init on its first `batch_size` training images, on maps of 8x8 and up."""
  import jax

  import data as data_lib
  import models
  config = get_sweep().base
  dataset = data_lib.load_dataset(config.data)
  cfg = config.model.copy_and_resolve_references()
  cfg.norm, cfg.nf_alpha = 'none', ALPHA
  model = models.build_model(cfg, dataset)
  x = dataset.train.get(np.arange(batch_size))['inputs']
  variables = model.init(jax.random.key(0), x, train=False)
  _, inter = model.apply(variables, x, train=False, capture_intermediates=True,
                         mutable=['intermediates'])
  blocks = sorted((k for k in inter['intermediates'] if k.startswith('stage')),
                  key=lambda k: tuple(int(n) for n in re.findall(r'\d+', k)))
  out, var = [], 1.0
  for name in blocks:
    y = np.asarray(inter['intermediates'][name]['__call__'][0], np.float64)
    stage, index = (int(n) for n in re.findall(r'\d+', name))
    if index == 1 and (stage > 1 or y.shape[-1] != cfg.width):
      var = 1.0
    var += ALPHA ** 2
    if y.shape[1] >= 8:
      out.append((name, float((y ** 2).mean()), var))
  return out


def _arm(key, group_keys) -> str:
  return key[group_keys.index('model.norm')]


def analyze(directory, group_keys, groups):
  """Validation accuracy of every finished run, each (arm, batch)'s best lr, and the NF net's
  signal propagation at init."""
  ib, il = group_keys.index('data.batch_size'), group_keys.index('optimizer.learning_rate')
  scores = {}
  for key, members in groups.items():
    for r in members:
      if r['state'] == 'finished':
        r['val_accuracy'] = evaluated(directory, r, 'validation')['rows'][0]['accuracy']
    v = values(members, 'val_accuracy')
    if len(v):
      scores.setdefault((_arm(key, group_keys), key[ib]), []).append(
          (v.mean(), key[il] * 128 / key[ib]))
  best = {cell: max(s)[1] for cell, s in scores.items()}
  signal = signal_propagation()
  lines = ['Best lr scale (lr × 128 / batch) by validation accuracy: '
           + ', '.join(f'{arm} at batch {b}: {s:g}' for (arm, b), s in sorted(best.items())), '',
           'NF net at init, residual stream second moment (measured / expected): '
           + ', '.join(f'{n} {m:.3f}/{e:.3f}' for n, m, e in signal), '']
  return {'lines': lines, 'best': best, 'signal': signal}


def _runs(group_keys, groups, analysis, norm, batch):
  scale = analysis['best'].get((norm, batch))
  lr = None if scale is None else scale * batch / 128
  return [r for key, members in groups.items() for r in members
          if _arm(key, group_keys) == norm and key[group_keys.index('data.batch_size')] == batch
          and lr is not None and np.isclose(key[group_keys.index('optimizer.learning_rate')], lr)]


def _batches(group_keys, groups):
  i = group_keys.index('data.batch_size')
  return sorted({k[i] for k in groups})


def _bn_degrades(group_keys, groups, analysis):
  small, large = _batches(group_keys, groups)
  return compare(_runs(group_keys, groups, analysis, 'batch', large),
                 _runs(group_keys, groups, analysis, 'batch', small), 'test_accuracy', MARGIN)


def gate(group_keys, groups, analysis):
  unmet = [f'the NF net\'s init second moment at {n} is {m:.3f}, not within {TOLERANCE:.0%} of '
           f'the schedule\'s {e:.3f}' for n, m, e in analysis['signal']
           if abs(m / e - 1) > TOLERANCE]
  c = _bn_degrades(group_keys, groups, analysis)
  small, large = _batches(group_keys, groups)
  if not c.greater:
    unmet.append(f'BatchNorm does not degrade at batch {small}: '
                 f'{c.text(f"BN@{large}", f"BN@{small}")}')
  return unmet + at_grid_edge({f'{a} at batch {b}': s for (a, b), s in analysis['best'].items()},
                              SCALES, 'lr scale')


def verdict(group_keys, groups, analysis):
  small, large = _batches(group_keys, groups)
  r = lambda norm, b: _runs(group_keys, groups, analysis, norm, b)
  same = compare(r('none', large), r('batch', large), 'test_accuracy', -MARGIN)
  bn_drop = _bn_degrades(group_keys, groups, analysis)
  nf_above = compare(r('none', small), r('batch', small), 'test_accuracy', MARGIN)
  nf_drop = compare(r('none', large), r('none', small), 'test_accuracy', MARGIN)
  keeps = all_of([bn_drop, nf_above, nf_drop.absent])
  numbers = (f'test accuracy at each best lr. (a) batch {large}, non-inferiority: '
             f'{same.text("NF", "BN")}. (b) {bn_drop.text(f"BN@{large}", f"BN@{small}")}; '
             f'{nf_above.text(f"NF@{small}", f"BN@{small}")}; NF\'s own drop: '
             f'{nf_drop.text(f"NF@{large}", f"NF@{small}")}; (a) {same.status}, (b) {keeps.status}')
  return outcome([same, keeps]), numbers + '.'
