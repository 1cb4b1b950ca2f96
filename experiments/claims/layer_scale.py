"""Ba et al. 2016: LayerNorm keeps every layer at the same scale and the gradients stable.

CPU scale: ResNet-56 (width 16, 27 blocks) on digits_hard32, plain and residual, norm {batch, layer,
rms, none} (group left to `:full`: its step costs 1.6x), SGD 0.9, lr 0.02 cosine, batch 64,
200 steps, 5 seeds (40 runs). The train loop's diagnostics measure each block's output RMS and
its parameters' gradient norm on a training batch at step 0 (init) and step 199 (after
training). A net's SPREAD of a quantity is max minus min over its 27 blocks of log10 of it
(decades: 1 = a factor of 10 between the largest and the smallest block). Full scale
(`:full`): CIFAR-10, all the registry's norms, 20k steps.

Rule (written before this sweep ran; experiments/stats.py): 8 cells (activations, gradients) x
(plain, residual) x (init, after training); an after-training cell counts only when both LN
and the no-norm net trained there (every seed finished, mean final train loss below TRAINED,
1 nat; chance is ln 10 = 2.30): a net that did not train says nothing about training. LN "keeps
the scale" in a cell when its SPREAD is shown below 1 decade (one-sided one-sample t-test over
seeds, α 0.05); LN "stabilizes" a cell where no norm's mean SPREAD exceeds 1 decade when LN's
SPREAD is lower by more than MIN_EFFECT (0.3 decades, a factor of 2: the shifted one-sided
test rejects). Reproduced if every part (each counted cell's keeping, each wide cell's
stabilizing) is shown; partly if some part is shown after Holm's correction over all of them;
not reproduced if a part is ruled out and none shown; else inconclusive (underpowered). Gate:
no norm exceeds 1 decade in at least one counted cell (else there is nothing to keep stable
here): inconclusive. BN and RMSNorm are reported beside.
"""

import re

import numpy as np

from configs import default, resnet_cifar10
from experiments.claims.common import cnn_images, finish, save_figure, subplots
from experiments.sweeps import product
from experiments.stats import compare, lookup, one_sample, outcome, values

NORMS = ['batch', 'layer', 'rms', 'none']
QUANTITIES = {'act_rms': 'activations', 'grad_norm': 'gradients'}
WIDE = 1.0          # decades
MIN_EFFECT = 0.3    # decades
TRAINED = 1.0       # nats of final train loss


def get_sweep(arg=None):
  if arg == 'full':
    from models import norms
    config, names = resnet_cifar10.get_config('56'), list(norms.NORMS)
    config.num_train_steps = 20000
  else:
    config, names = default.get_config('56'), NORMS
    cnn_images(config, arg)
    config.data.batch_size, config.num_train_steps, config.log_every_steps = 64, 200, 50
    config.optimizer.learning_rate = 0.02
  config.optimizer.schedule = 'cosine'
  config.diagnostics_every_steps = config.num_train_steps - 1   # at init and at the last step
  config.eval_every_steps = config.checkpoint_every_steps = config.num_train_steps
  axes = [product('model.residual', [False, True]), product('model.norm', names)]
  smoke = [product('model.norm', ['layer', 'none'])]
  if arg == 'smoke':
    config.model.depth = 8
  return finish(config, axes, arg, smoke)


def block_values(run, stat: str) -> dict[int, np.ndarray]:
  """{diagnostic step: the stat of every block, input to output} of a run."""
  names = [t.split('/', 1)[1] for t in run['scalars'] if t.startswith(stat + '/')]
  blocks = sorted((n for n in names if re.fullmatch(r'stage\d+_block\d+', n)),
                  key=lambda n: tuple(int(d) for d in re.findall(r'\d+', n)))
  out = {}
  for n in blocks:
    for step, v in run['scalars'][f'{stat}/{n}']:
      out.setdefault(step, []).append(v)
  return {s: np.array(v) for s, v in out.items() if len(v) == len(blocks)}


def spread(v: np.ndarray) -> float:
  logs = np.log10(np.maximum(v, 1e-30))
  return float(logs.max() - logs.min())


def analyze(directory, group_keys, groups):
  """Adds '<stat>@init' and '<stat>@end' SPREADs to every finished run."""
  for members in groups.values():
    for r in members:
      if r['state'] != 'finished':
        continue
      for stat in QUANTITIES:
        by_step = block_values(r, stat)
        if by_step:
          r[f'{stat}@init'] = spread(by_step[min(by_step)])
          r[f'{stat}@end'] = spread(by_step[max(by_step)])
  lines = ['SPREAD over the blocks, decades (max - min of log10; mean over seeds):', '',
           '| skips | norm | activations, init | activations, end | gradients, init | '
           'gradients, end |', '|---|---|---|---|---|---|']
  for residual in (False, True):
    for norm in NORMS:
      runs = lookup(group_keys, groups, **{'model.residual': residual, 'model.norm': norm})
      if not runs:
        continue
      cells = [values(runs, f'{stat}@{t}') for stat in QUANTITIES for t in ('init', 'end')]
      lines.append(f'| {"residual" if residual else "plain"} | {norm} | ' + ' | '.join(
          f'{c.mean():.2f}' if len(c) else '–' for c in cells) + ' |')
  return {'lines': lines + [''], 'plot': _plot(directory, group_keys, groups)}


def _plot(directory, group_keys, groups):
  fig, axes = subplots(2, 2, figsize=(12, 7), sharex=True)
  for col, residual in enumerate((False, True)):
    for row, stat in enumerate(QUANTITIES):
      ax = axes[row][col]
      for i, norm in enumerate(NORMS):
        runs = [r for r in lookup(group_keys, groups, **{'model.residual': residual,
                                                          'model.norm': norm})
                if r['state'] == 'finished']
        for which, style in ((min, '--'), (max, '-')):
          curves = [v[which(v)] for v in (block_values(r, stat) for r in runs) if v]
          if curves:
            g = np.exp(np.mean(np.log(np.maximum(curves, 1e-30)), axis=0))
            ax.plot(range(1, len(g) + 1), g, style, color=f'C{i}',
                    label=f'{norm}, {"init" if which is min else "end"}')
      ax.set_yscale('log')
      ax.set_title(f'{"residual" if residual else "plain"}: {QUANTITIES[stat]}', fontsize=9)
      ax.grid(alpha=0.3)
  for ax in axes[1]:
    ax.set_xlabel('block (input -> output)')
  axes[0][0].set_ylabel('block output RMS')
  axes[1][0].set_ylabel('gradient norm')
  axes[0][1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  return save_figure(fig, directory, 'layer_scale.png')


def _cells(group_keys, groups):
  for stat in QUANTITIES:
    for residual in (False, True):
      for t in ('init', 'end'):
        at = lambda n: lookup(group_keys, groups, **{'model.residual': residual,
                                                     'model.norm': n})
        name = f'{QUANTITIES[stat]}, {"residual" if residual else "plain"}, {t}'
        if t == 'end' and not all(_trained(at(n)) for n in ('layer', 'none')):
          continue
        yield name, f'{stat}@{t}', at


def _trained(runs) -> bool:
  loss = values(runs, 'train_loss')
  return bool(runs) and len(loss) == len(runs) and loss.mean() < TRAINED


def gate(group_keys, groups, analysis):
  if not any(values(at('none'), key).mean() > WIDE for _, key, at in _cells(group_keys, groups)
             if len(values(at('none'), key))):
    return [f'without a norm every cell stays within {WIDE} decade: nothing to stabilize']
  return []


def verdict(group_keys, groups, analysis):
  keeps, stabilizes, wide, parts = [], [], [], []
  for name, key, at in _cells(group_keys, groups):
    ln, none = values(at('layer'), key), values(at('none'), key)
    if not len(ln):
      continue
    keeps.append(one_sample(ln, WIDE))
    text = (f'{name}: LN {ln.mean():.2f} ({keeps[-1].status} below {WIDE}), BN '
            f'{values(at("batch"), key).mean():.2f}, RMS {values(at("rms"), key).mean():.2f}, '
            f'none {none.mean():.2f}')
    if len(none) and none.mean() > WIDE:
      c = compare(at('layer'), at('none'), key, MIN_EFFECT, higher_is_better=False)
      wide.append(name)
      stabilizes.append(c)
      text += f' ({c.text("LN", "none", 2)})'
    parts.append(text)
  shown = lambda ps: sum(p.status == 'shown' for p in ps)
  reason = (f'SPREAD in decades over the cells counted (an after-training cell only where LN and '
            f'no norm trained); LN shown below {WIDE} in {shown(keeps)}/{len(keeps)}; no norm '
            f'above {WIDE} in {len(wide)} ({", ".join(wide) or "none"}), LN lower there by more '
            f'than {MIN_EFFECT} in {shown(stabilizes)}: ' + '; '.join(parts))
  return outcome(keeps + stabilizes), reason + '.'
