"""Report on a sweep directory: reads only what the runs wrote (sweep.json, status.json,
TensorBoard event files) and writes report.md and PNG plots beside them.

  python -m experiments.report sweeps/<name>

Runs are grouped by every swept key except `seed`; each group shows, over its seeds, the mean and
its 95 % t-interval of the final train loss (last logged), the test accuracy and test loss (NLL)
of the final evaluation, steps/s, and how many of its runs diverged, failed or are unfinished.
"""

from __future__ import annotations

import json
import os
import sys
from collections import OrderedDict

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
from tensorboard.backend.event_processing import event_accumulator

from experiments import stats
from training import workdir as wd

SWEEP_FILE = 'sweep.json'
# A run in any other state is still to run or resume. sweep.ENDED, the runs a re-run skips,
# leaves out 'failed' (a re-run retries it); here a failed run is reported, in its own column.
ENDED = ('finished', 'diverged', 'failed')


def read_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={'scalars': 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def read_run(directory: str, run: dict) -> dict:
  workdir = os.path.join(directory, run['name'])
  status = wd.read_status(workdir) or {'state': 'pending'}
  scalars = read_scalars(workdir) if os.path.isdir(workdir) else {}
  train_loss = scalars.get('train/loss', [])
  speeds = [v for _, v in scalars.get('train/steps_per_sec', [])]  # train steps only
  eval_acc = scalars.get('eval/accuracy', [])
  eval_loss = scalars.get('eval/loss', [])
  return {**run, 'state': status['state'], 'step': status.get('step'),
          'error': status.get('error'), 'scalars': scalars,
          'train_loss': train_loss[-1][1] if train_loss else None,
          'test_accuracy': eval_acc[-1][1] if eval_acc else None,   # the final evaluation
          'test_loss': eval_loss[-1][1] if eval_loss else None,
          'steps_per_sec': float(np.median(speeds)) if speeds else None}


def group_key(run: dict, keys: list[str]) -> tuple:
  return tuple(run['overrides'][k] for k in keys)


def mean_ci(values) -> str:
  """'mean [low, high]': the 95 % t-interval of the mean over seeds."""
  values = [v for v in values if v is not None and np.isfinite(v)]
  if not values:
    return '–'
  if len(values) == 1:
    return f'{values[0]:.4f}'
  m, lo, hi = stats.mean_ci(values)
  return f'{m:.4f} [{lo:.4f}, {hi:.4f}]'


# the final metrics a table shows: (column, run key)
METRICS = (('final train loss', 'train_loss'), ('test accuracy', 'test_accuracy'),
           ('test loss (NLL)', 'test_loss'))


def summarize(directory: str) -> tuple[list[str], OrderedDict, list[dict]]:
  with open(os.path.join(directory, SWEEP_FILE)) as f:
    spec = json.load(f)
  group_keys = [k for k in spec['keys'] if k != 'seed']
  runs = [read_run(directory, r) for r in spec['runs']]
  groups = OrderedDict()
  for run in runs:
    groups.setdefault(group_key(run, group_keys), []).append(run)
  return group_keys, groups, runs


def table(group_keys, groups) -> list[str]:
  """One row per group, with each of METRICS."""
  head = [k.rsplit('.', 1)[-1] for k in group_keys] + ['seeds'] + [
      f'{name} (95 % CI)' for name, _ in METRICS] + ['diverged', 'failed', 'unfinished',
                                                     'steps/s']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for key, members in groups.items():
    done = [r for r in members if r['state'] == 'finished']
    count = lambda s: sum(r['state'] == s for r in members)
    unfinished = sum(r['state'] not in ENDED for r in members)
    speeds = [r['steps_per_sec'] for r in members if r['steps_per_sec']]
    cells = [str(v) for v in key] + [str(len(members))] + [
        mean_ci([r.get(k) for r in done]) for _, k in METRICS] + [str(count('diverged')),
        str(count('failed')), str(unfinished), f'{np.mean(speeds):.1f}' if speeds else '–']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def label(group_keys, key) -> str:
  return ', '.join(f'{k.rsplit(".", 1)[-1]}={v}' for k, v in zip(group_keys, key)) or 'all'


def plot_curves(directory, group_keys, groups, tag='train/loss') -> str | None:
  """`tag` against step per group: the mean over seeds, shaded between the lowest and highest
  seed; the legend outside the axes (it never covers a curve). None when no run logged `tag`."""
  fig, ax = plt.subplots(figsize=(9, 4.5))
  colors = plt.cm.tab10.colors if len(groups) <= 10 else plt.cm.tab20.colors
  drawn = False
  for i, (key, members) in enumerate(groups.items()):
    curves = [dict(r['scalars'].get(tag, [])) for r in members if r['scalars'].get(tag)]
    if not curves:
      continue
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    values = np.array([[c[s] for s in steps] for c in curves])
    color = colors[i % len(colors)]
    ax.plot(steps, values.mean(0), color=color, marker='o' if len(steps) < 4 else None,
            label=f'{label(group_keys, key)} (n={len(curves)})')
    if len(curves) > 1:
      ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.15, lw=0)
    drawn = True
  if not drawn:
    plt.close(fig)
    return None
  ax.set_xlabel('step')
  ax.set_ylabel(f'{tag} (mean over seeds; band: lowest to highest seed)', fontsize=8)
  if tag.endswith('loss'):
    ax.set_yscale('log')
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
  ax.grid(alpha=0.3)
  path = os.path.join(directory, tag.replace('/', '_') + '.png')
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def plot_vs_numeric_axis(directory, group_keys, groups, metric='test_accuracy') -> str | None:
  """The final metric against the first numeric swept key, one line per other-key combination."""
  numeric = [i for i, k in enumerate(group_keys)
             if all(isinstance(key[i], (int, float)) and not isinstance(key[i], bool)
                    for key in groups) and len({key[i] for key in groups}) > 1]
  if not numeric:
    return None
  x_i = numeric[0]
  lines = OrderedDict()
  for key, members in groups.items():
    rest = tuple(v for j, v in enumerate(key) if j != x_i)
    values = [r[metric] for r in members if r['state'] == 'finished' and r[metric] is not None]
    if values:
      lines.setdefault(rest, []).append((key[x_i], np.mean(values), np.std(values)))
  rest_keys = [k for j, k in enumerate(group_keys) if j != x_i]
  fig, ax = plt.subplots(figsize=(9, 4.5))
  for rest, points in lines.items():
    points.sort()
    xs, ys, es = zip(*points)
    ax.errorbar(xs, ys, yerr=es, marker='o', capsize=3, label=label(rest_keys, rest))
  ax.set_xlabel(group_keys[x_i])
  ax.set_ylabel(f'{metric.replace("_", " ")} (mean ± std over seeds)')
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
  ax.grid(alpha=0.3)
  path = os.path.join(directory, f'{metric}_vs_{group_keys[x_i].rsplit(".", 1)[-1]}.png')
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def write_report(directory: str, summary=None) -> str:
  """report.md and the plots; `summary`: `summarize(directory)` if the caller has it."""
  group_keys, groups, runs = summary or summarize(directory)
  lines = [f'# Sweep report: {os.path.basename(os.path.normpath(directory))}', '',
           f'{len(runs)} runs; grouped by {", ".join(group_keys) or "nothing"}; mean over seeds '
           'and its 95 % t-interval. Final train loss is the last logged train loss (averaged '
           'over its log interval); test accuracy and loss are the final evaluation\'s.', '']
  lines += table(group_keys, groups)
  bad = [r for r in runs if r['state'] in ('diverged', 'failed')]
  lines += ['', '## Diverged or failed runs', '']
  lines += [f'- {r["name"]}: **{r["state"]}** at step {r["step"]}'
            + (f' ({r["error"]})' if r.get('error') else '') for r in bad] or ['- none']
  pending = [r['name'] for r in runs if r['state'] not in ENDED]
  if pending:
    lines += ['', f'Unfinished runs ({len(pending)}): ' + ', '.join(pending)]
  plots = [plot_curves(directory, group_keys, groups),
           plot_curves(directory, group_keys, groups, 'eval/accuracy'),
           plot_vs_numeric_axis(directory, group_keys, groups)]
  lines += ['', '## Plots', ''] + [f'![{os.path.basename(p)}]({os.path.basename(p)})'
                                   for p in plots if p]
  path = os.path.join(directory, 'report.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path


def main(argv):
  if len(argv) != 2:
    print('usage: python -m experiments.report SWEEP_DIR', file=sys.stderr)
    sys.exit(2)
  if not os.path.exists(os.path.join(argv[1], SWEEP_FILE)):
    print(f'error: {argv[1]} holds no sweep ({SWEEP_FILE} not found)', file=sys.stderr)
    sys.exit(2)
  print(open(write_report(argv[1])).read())


if __name__ == '__main__':
  main(sys.argv)
