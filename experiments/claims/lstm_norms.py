"""Ba et al. 2016: layer-normalized LSTMs train faster than plain LSTMs (and recurrent BN,
Cooijmans et al. 2016, too).

CPU scale: 1-layer LSTM (width 128, Adam 3e-3) on mnist1d, fixed length (40) and variable length
(20–40, padded and masked), norm {none, layer, batch}, 1000 steps, test accuracy every 100
steps, 3 seeds. "Trains faster" is measured as the number of steps until the test accuracy first
reaches 50 % (a target fixed before the runs; runs that never reach it count as not reached),
and as the mean train loss over the run (area under the loss curve). Full scale (`:full`):
3000 steps, 5 seeds.
"""


import numpy as np

from configs import lstm_mnist1d
from experiments.claims.common import finish, save_figure, subplots
from experiments.sweeps import product

TARGET = 0.5


def get_sweep(arg=None):
  config = lstm_mnist1d.get_config()
  config.num_train_steps = 3000 if arg == 'full' else 1000
  config.eval_every_steps = 100
  config.checkpoint_every_steps = config.num_train_steps
  axes = [product('model.norm', ['none', 'layer', 'batch']),
          product('data.variable_length', [False, True])]
  smoke = [product('model.norm', ['layer', 'batch']), product('data.variable_length', [True])]
  if arg == 'smoke':
    config.model.width = 16
  sweep = finish(config, axes, arg, smoke)
  if arg == 'full':
    sweep.axes[-1] = product('seed', [0, 1, 2, 3, 4])
  return sweep


def steps_to_target(run) -> float:
  for step, acc in run['scalars'].get('eval/accuracy', []):
    if acc >= TARGET:
      return float(step)
  return float('inf')


def mean_loss(run) -> float:
  return float(np.mean([v for _, v in run['scalars'].get('train/loss', [])] or [np.nan]))


def analyze(directory, group_keys, groups):

  from experiments.report import label
  stats, lines = {}, [f'Steps until test accuracy first reaches {TARGET:.0%} and mean train loss '
                      'over the run (mean ± std over seeds):', '',
                      '| ' + ' | '.join(k.rsplit('.', 1)[-1] for k in group_keys)
                      + ' | steps to target | reached | mean train loss |',
                      '|' + '---|' * (len(group_keys) + 3)]
  fig, ax = subplots(figsize=(7, 4.5))
  for key, members in groups.items():
    done = [r for r in members if r['state'] == 'finished']
    steps = [steps_to_target(r) for r in done]
    reached = [s for s in steps if np.isfinite(s)]
    losses = [mean_loss(r) for r in done]
    stats[key] = {'steps': steps, 'losses': losses}
    spread = lambda v: f'{np.mean(v):.0f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.0f}'
    lines.append('| ' + ' | '.join(map(str, key)) + f' | {spread(reached) if reached else "–"} | '
                 f'{len(reached)}/{len(done)} | {np.mean(losses):.4f} ± '
                 f'{np.std(losses, ddof=1) if len(losses) > 1 else 0:.4f} |')
    curves = [dict(r['scalars'].get('eval/accuracy', [])) for r in done]
    if curves:
      xs = sorted(set.intersection(*(set(c) for c in curves)))
      ax.plot(xs, [np.mean([c[x] for c in curves]) for x in xs], marker='.',
              label=label(group_keys, key), ls='-' if key[-1] else '--')
  ax.axhline(TARGET, color='k', lw=0.5)
  ax.set_xlabel('step')
  ax.set_ylabel('test accuracy (mean over seeds)')
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  path = save_figure(fig, directory, 'eval_accuracy.png')
  return {'lines': lines + [''], 'stats': stats, 'plot': path}


def verdict(group_keys, groups, analysis):
  """Reproduced if, at both fixed and variable length, LN reaches the target in fewer steps than
  no norm by more than the seed spread (a run that never reaches it counts as slower than any
  that does), or, when neither reaches it, ends with a lower mean train loss beyond the spread."""
  index = {k: i for i, k in enumerate(group_keys)}
  faster, parts = [], []
  for variable in (False, True):
    get = lambda norm: next(v for k, v in analysis['stats'].items()
                            if k[index['model.norm']] == norm
                            and k[index['data.variable_length']] == variable)
    ln, none = get('layer'), get('none')
    n_steps = max(max(ln['steps'] + none['steps']), 0)
    cap = lambda s: [x if np.isfinite(x) else 10 * (n_steps if np.isfinite(n_steps) else 1e4)
                     for x in s]
    ln_s, none_s = cap(ln['steps']), cap(none['steps'])
    spread = max(np.std(ln_s, ddof=1), np.std(none_s, ddof=1))
    if np.isfinite(ln['steps']).any() or np.isfinite(none['steps']).any():
      faster.append(np.mean(none_s) - np.mean(ln_s) > spread and
                    np.isfinite(ln['steps']).all())
    else:
      faster.append(np.mean(none['losses']) - np.mean(ln['losses']) >
                    max(np.std(ln['losses'], ddof=1), np.std(none['losses'], ddof=1)))
    parts.append(f'{"variable" if variable else "fixed"} length: steps to {TARGET:.0%} LN '
                 f'{_fmt(ln["steps"])}, none {_fmt(none["steps"])}, BN {_fmt(get("batch")["steps"])}')
  reason = '; '.join(parts) + '.'
  if all(faster):
    return 'reproduced', reason
  return ('partly' if any(faster) else 'not reproduced'), reason


def _fmt(steps):
  reached = [s for s in steps if np.isfinite(s)]
  text = f'{np.mean(reached):.0f}' if reached else 'never'
  return text + (f' ({len(reached)}/{len(steps)} seeds reached it)' if len(reached) < len(steps)
                 else '')
