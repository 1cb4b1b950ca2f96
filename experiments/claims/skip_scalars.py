"""De & Smith 2020 (SkipInit); Zhang, Dauphin & Ma 2019 (Fixup): a deep residual net without
normalization trains at the learning rate the BatchNorm net uses when each residual branch starts
at zero (a 0-initialized scalar; Fixup's rescaled init), where the plain no-norm residual net
fails.

CPU scale: residual ResNet-32 (width 16) on digits, SGD 0.9 at BatchNorm's lr 0.1, batch 128,
400 steps (cosine), arms {BatchNorm, no norm, no norm + SkipInit, no norm + Fixup}, 3 seeds.
Full scale (`:full`): ResNet-110 on CIFAR-10 with He et al.'s recipe.

Rule (written before the sweep ran): an arm "trains" when none of its seeds diverged (train loss
above 100 or not finite stops a run) and its mean final train loss is at most TRAINS (0.3
nats; chance is ln 10 = 2.30). An arm "fails" when at least 2 of its 3 seeds diverged, or its
final train loss exceeds BatchNorm's by at least MARGIN (0.2 nats) with a one-sided Welch
p < 0.05. Reproduced if the no-norm net fails and both SkipInit and Fixup train; partly if it
fails and one of them trains; not reproduced otherwise. Gate: the BatchNorm net trains at this
lr (else it is not BatchNorm's working lr) and the no-norm net fails (the regime the claim is
about); else inconclusive.
"""

from configs import default, resnet_cifar10
from experiments.claims.common import finish
from experiments.sweeps import zipped
from experiments.stats import compare, diverged, lookup, values

TRAINS, MARGIN = 0.3, 0.2
ARMS = {'model.norm': ['batch', 'none', 'none', 'none'],
        'model.skipinit': [False, False, True, False], 'model.fixup': [False, False, False, True]}
NAMES = ['BatchNorm', 'no norm', 'SkipInit', 'Fixup']


def get_sweep(arg=None):
  if arg == 'full':
    config = resnet_cifar10.get_config('110')
  else:
    config = default.get_config('32')
    config.num_train_steps, config.log_every_steps = 400, 20
  config.eval_every_steps = config.checkpoint_every_steps = config.num_train_steps
  smoke = [zipped({k: v[2:] for k, v in ARMS.items()})]
  return finish(config, [zipped(ARMS)], arg, smoke)


def _arms(group_keys, groups):
  return {name: lookup(group_keys, groups, **{k: v[i] for k, v in ARMS.items()})
          for i, name in enumerate(NAMES)}


def _describe(members) -> tuple[bool, str]:
  bad, ended = diverged(members)
  loss = values(members, 'train_loss')
  trains = ended > 0 and bad == 0 and loss.mean() <= TRAINS
  mean = f'{loss.mean():.4f}' if len(loss) else 'none finished'
  return trains, f'{bad}/{ended} diverged, final train loss {mean}'


def _fails(arms, name) -> tuple[bool, str]:
  bad, ended = diverged(arms[name])
  c = compare(arms['BatchNorm'], arms[name], 'train_loss', MARGIN, higher_is_better=False)
  return (ended > 0 and bad >= 2) or c.greater, c.text('BatchNorm', name)


def gate(group_keys, groups):
  arms = _arms(group_keys, groups)
  unmet = []
  trains, text = _describe(arms['BatchNorm'])
  if not trains:
    unmet.append(f'BatchNorm does not train at this lr ({text})')
  fails, text = _fails(arms, 'no norm')
  if not fails:
    unmet.append(f'the no-norm residual net does not fail ({_describe(arms["no norm"])[1]}; '
                 f'{text})')
  return unmet


def verdict(group_keys, groups):
  arms = _arms(group_keys, groups)
  facts = {name: _describe(members) for name, members in arms.items()}
  fails, vs_bn = _fails(arms, 'no norm')
  numbers = '; '.join(f'{name}: {text} ({"trains" if ok else "does not train"})'
                      for name, (ok, text) in facts.items())
  numbers += f'; no norm vs BatchNorm: {vs_bn} ({"fails" if fails else "does not fail"})'
  rescued = [n for n in ('SkipInit', 'Fixup') if facts[n][0]]
  if fails and len(rescued) == 2:
    return 'reproduced', numbers + '.'
  if fails and rescued:
    return 'partly', numbers + f'; only {rescued[0]} trains.'
  return 'not reproduced', numbers + '.'
