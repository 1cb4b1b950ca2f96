"""Brock, De & Smith 2021 (NF-ResNets, NFNets): a Normalizer-Free ResNet with adaptive gradient
clipping trains as well as a BatchNorm ResNet at the same depth and batch size, and keeps
training at batch sizes where BatchNorm degrades.

CPU scale: ResNet-8 (width 16) on digits_hard32, {BatchNorm, NF-ResNet (norm=none, nf_alpha=0.2,
optimizer.agc=0.1)} × batch {4, 64}, SGD 0.9 with lr 0.1 × b / 128 (linear scaling, as the
batch-size claim), the same 12 epochs for every batch (cosine), 5 seeds. AGC's clip 0.1: the
NFNets paper uses 0.01 at batch 4096 and reports that smaller batches tolerate larger clips.
Full scale (`:full`): ResNet-20 on CIFAR-10, batch {8, 128}, 30 epochs. (First run on the plain
digits: inconclusive, BN did not degrade at batch 4 there (99.1 % vs 98.5 % at 64); moved to
digits_hard, where it did in `batch_size_wu_he`, with the rule below unchanged.)

Rule (written before the sweep ran; experiments/stats.py): metric the final test accuracy;
alpha 0.05; tests shifted one-sided (Welch; exact permutation without spread). (a) "As well as"
at batch 64 (non-inferiority): NF − BN is shown above −MARGIN (1 point), its one-sided lower
bound above −MARGIN; ruled out when its upper bound lies below −MARGIN. (b) "BN degrades" at
batch 4: BN at 64 exceeds BN at 4 by more than MARGIN; "NF keeps training": NF at 4 is above BN
at 4 by more than MARGIN and NF's own drop from 64 to 4 is shown smaller than MARGIN (its
excess ruled out); (b) is ruled out when either of these is. Reproduced if (a) and (b); partly
if one after Holm over the two; not reproduced if neither and one is ruled out; else
inconclusive (underpowered). Gate: BN degrades at batch 4 (the regime the second half is
about); if not, inconclusive, with (a) stated.
"""

from configs import default, resnet_cifar10
from experiments.claims.common import cnn_images, finish
from experiments.sweeps import product, zipped
from experiments.stats import all_of, compare, lookup, outcome

MARGIN = 0.01
ARMS = {'model.norm': ['batch', 'none'], 'model.nf_alpha': [0.0, 0.2], 'optimizer.agc': [0.0, 0.1]}
EPOCHS = 12


def get_sweep(arg=None):
  if arg == 'full':
    config, examples, batches, epochs = resnet_cifar10.get_config(), 50000, [8, 128], 30
    config.optimizer.schedule = 'cosine'
  else:
    config, examples, batches, epochs = default.get_config('8'), 1437, [4, 64], EPOCHS
    config.data.name = 'digits_hard'
    cnn_images(config, arg)
  steps = [epochs * examples // b for b in batches]
  config.eval_every_steps = config.checkpoint_every_steps = 10 ** 9   # final only
  axes = [zipped({'data.batch_size': batches, 'num_train_steps': steps,
                  'log_every_steps': [max(1, s // 20) for s in steps],
                  'optimizer.learning_rate': [0.1 * b / 128 for b in batches]}),
          zipped(ARMS)]
  smoke = [product('data.batch_size', [4]), zipped(ARMS)]
  return finish(config, axes, arg, smoke)


def _runs(group_keys, groups, norm, batch):
  return lookup(group_keys, groups, **{'model.norm': norm, 'data.batch_size': batch})


def _batches(group_keys, groups):
  i = group_keys.index('data.batch_size')
  return sorted({k[i] for k in groups})


def _bn_degrades(group_keys, groups):
  small, large = _batches(group_keys, groups)
  return compare(_runs(group_keys, groups, 'batch', large),
                 _runs(group_keys, groups, 'batch', small), 'test_accuracy', MARGIN)


def gate(group_keys, groups):
  c = _bn_degrades(group_keys, groups)
  small, large = _batches(group_keys, groups)
  if not c.greater:
    return [f'BatchNorm does not degrade at batch {small}: {c.text(f"BN@{large}", f"BN@{small}")}']
  return []


def verdict(group_keys, groups):
  small, large = _batches(group_keys, groups)
  r = lambda norm, b: _runs(group_keys, groups, norm, b)
  same = compare(r('none', large), r('batch', large), 'test_accuracy', -MARGIN)
  bn_drop = _bn_degrades(group_keys, groups)
  nf_above = compare(r('none', small), r('batch', small), 'test_accuracy', MARGIN)
  nf_drop = compare(r('none', large), r('none', small), 'test_accuracy', MARGIN)
  keeps = all_of([bn_drop, nf_above, nf_drop.absent])
  numbers = (f'test accuracy. (a) batch {large}, non-inferiority: {same.text("NF", "BN")}. (b) '
             f'{bn_drop.text(f"BN@{large}", f"BN@{small}")}; '
             f'{nf_above.text(f"NF@{small}", f"BN@{small}")}; NF\'s own drop: '
             f'{nf_drop.text(f"NF@{large}", f"NF@{small}")}; (a) {same.status}, (b) {keeps.status}')
  return outcome([same, keeps]), numbers + '.'
