"""Wu & He 2018: BatchNorm degrades at tiny batch sizes; GroupNorm and LayerNorm do not.

CPU scale: ResNet-8 on digits (ResNet-20 would take ~40 min here), per-device batch
{2, 4, 8, 32, 128} × norm {batch, group, layer}, the same number of epochs (30) for every batch
size, learning rate scaled linearly with the batch (0.1 × b / 128, as Wu & He do), 3 seeds.
Full scale (`:full`, GPU + TFDS): ResNet-20 on CIFAR-10, the same axes, 30 epochs.
"""

from configs import default, resnet_cifar10
from experiments.claims.common import finish
from experiments.sweeps import product, zipped
from experiments.stats import clearly_greater, group_stat, lookup

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


def verdict(group_keys, groups):
  """Reproduced if BN's test accuracy at the smallest batch is below its accuracy at batch 32 by
  more than the seed spread, while GN's and LN's are not."""
  lo, ref = BATCHES[0], 32
  acc = lambda norm, b: group_stat(lookup(group_keys, groups, **{'data.batch_size': b,
                                                                  'model.norm': norm}),
                                   'test_accuracy')
  drops = {n: clearly_greater(acc(n, ref), acc(n, lo)) for n in ['batch', 'group', 'layer']}
  numbers = '; '.join(f'{n}: {acc(n, lo)[0]:.4f} ± {acc(n, lo)[1]:.4f} at batch {lo} vs '
                      f'{acc(n, ref)[0]:.4f} ± {acc(n, ref)[1]:.4f} at batch {ref}'
                      for n in drops)
  numbers = 'test accuracy, ' + numbers
  bn_curve = ', '.join(f'{acc("batch", b)[0]:.4f}' for b in BATCHES)
  numbers += (f'. BN at every batch size {BATCHES}: {bn_curve}; the size of the effect is what '
              f'to weigh (Wu & He report about 10 points on ImageNet at batch 2)')
  if drops['batch'] and not (drops['group'] or drops['layer']):
    return 'reproduced', numbers + '.'
  if drops['batch']:
    return 'partly', numbers + '; GN or LN also lose accuracy at the smallest batch.'
  return 'not reproduced', numbers + '; BN shows no measurable drop at this scale.'
