"""Wu & He 2018: BatchNorm degrades at tiny batch sizes; GroupNorm and LayerNorm do not.

CPU scale: ResNet-8 on digits (ResNet-20 would take ~40 min here), per-device batch
{2, 4, 8, 32, 128} × norm {batch, group, layer}, the same number of epochs (30) for every batch
size, learning rate scaled linearly with the batch (0.1 × b / 128, as Wu & He do), 3 seeds.
Full scale (`:full`, GPU + TFDS): ResNet-20 on CIFAR-10, the same axes, 30 epochs.
"""

from configs import default, resnet_cifar10
from experiments.claims.common import finish
from experiments.sweeps import product, zipped
from experiments.stats import compare, lookup, values

BATCHES = [2, 4, 8, 32, 128]
EPOCHS = 30


def get_sweep(arg=None):
  if arg == 'full':
    config, examples = resnet_cifar10.get_config(), 50000
    config.optimizer.schedule = 'cosine'   # piecewise boundaries would not scale with the steps
  else:
    config, examples = default.get_config(), 1437
    config.model.depth = 8
  steps = [EPOCHS * examples // b for b in BATCHES]
  config.eval_every_steps = config.checkpoint_every_steps = 10 ** 9   # final only
  axes = [zipped({'data.batch_size': BATCHES, 'num_train_steps': steps,
                  'log_every_steps': [max(1, s // 20) for s in steps],
                  'optimizer.learning_rate': [0.1 * b / 128 for b in BATCHES]}),
          product('model.norm', ['batch', 'group', 'layer'])]
  smoke = [product('data.batch_size', [2]), product('model.norm', ['batch', 'group'])]
  return finish(config, axes, arg, smoke)


MIN_EFFECT = 0.01   # one point of test accuracy


def verdict(group_keys, groups):
  """Rule: a norm "drops" when its test accuracy at batch 32 exceeds its accuracy at the
  smallest batch by at least MIN_EFFECT (1 point) with a one-sided Welch p < 0.05 over the 3
  seeds. Reproduced if BN drops while GN and LN do not; partly if BN and another drop."""
  lo, ref = BATCHES[0], 32
  runs = lambda norm, b: lookup(group_keys, groups, **{'data.batch_size': b, 'model.norm': norm})
  acc = lambda norm, b: values(runs(norm, b), 'test_accuracy')
  tests = {n: compare(runs(n, ref), runs(n, lo), 'test_accuracy', MIN_EFFECT)
           for n in ['batch', 'group', 'layer']}
  drops = {n: t.greater for n, t in tests.items()}
  numbers = 'test accuracy, ' + '; '.join(t.text(f'{n} at batch {ref}', f'at batch {lo}')
                                          for n, t in tests.items())
  bn_curve = ', '.join(f'{acc("batch", b).mean():.4f}' for b in BATCHES)
  numbers += (f'. BN at every batch size {BATCHES}: {bn_curve}; the size of the effect is what '
              f'to weigh (Wu & He report about 10 points on ImageNet at batch 2)')
  if drops['batch'] and not (drops['group'] or drops['layer']):
    return 'reproduced', numbers + '.'
  if drops['batch']:
    return 'partly', numbers + '; GN or LN also lose accuracy at the smallest batch.'
  return 'not reproduced', numbers + '; BN shows no measurable drop at this scale.'
