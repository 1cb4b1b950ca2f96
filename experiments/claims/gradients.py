"""Without skips and normalization, gradients vanish or explode with depth.

Reads the depth sweep's runs (ResNet {8, 20, 56} × residual × norm {batch, none} on digits,
3 seeds), which record per-layer gradient norms (`grad_norm/<layer>` in TensorBoard) at
initialization and every 100 steps (`diagnostics_every_steps`). A "layer" is a residual-or-plain
block (plus the stem and the head). Shown: the gradient norm of every block of the 56-layer nets
at init and at step 200, and, for every depth, the ratio of the first block's gradient norm to
the last block's at init (1 means gradients reach the input undiminished). Full scale: the depth
sweep's `:full` variant.
"""

import os
import re

import numpy as np

from experiments.claims import depth
from experiments.claims.common import save_figure, subplots

SWEEP = 'depth'
get_sweep = depth.get_sweep


def _blocks(scalars) -> list[str]:
  """Block tags in order from the input to the output."""
  tags = [t for t in scalars if re.fullmatch(r'grad_norm/stage\d+_block\d+', t)]
  return sorted(tags, key=lambda t: tuple(int(n) for n in re.findall(r'\d+', t)))


def _at(scalars, tag, step):
  return dict(scalars[tag]).get(step, np.nan)


def analyze(directory, group_keys, groups):

  from training import workdir as wd
  ratios = {}    # (residual, norm) -> {depth: [log10 first/last block grad norm at init]}
  by_style = {}  # (residual, norm) -> {depth: runs}
  for members in groups.values():
    for r in members:
      if not _blocks(r['scalars']):
        continue
      model = wd.read_config(os.path.join(directory, r['name'])).model
      by_style.setdefault((model.residual, model.norm), {}).setdefault(model.depth, []).append(r)
  fig, (left, right) = subplots(1, 2, figsize=(11, 4.5))
  colors = {style: f'C{i}' for i, style in enumerate(by_style)}
  deepest = max(d for runs in by_style.values() for d in runs)
  for style, by_depth in by_style.items():
    for d, runs in by_depth.items():
      for r in runs:
        blocks = _blocks(r['scalars'])
        first, last = _at(r['scalars'], blocks[0], 0), _at(r['scalars'], blocks[-1], 0)
        ratios.setdefault(style, {}).setdefault(d, []).append(np.log10(first / last))
    runs = by_depth.get(deepest, [])
    if not runs:
      continue
    blocks = _blocks(runs[0]['scalars'])
    steps = sorted(s for s, _ in runs[0]['scalars'][blocks[0]])
    for step, ls in ((steps[0], '-'), (steps[-1], '--')):
      logs = np.array([[np.log(_at(r['scalars'], b, step)) for b in blocks] for r in runs])
      if not np.isfinite(logs).any():    # e.g. the loss went NaN before this step
        continue
      left.plot(range(1, len(blocks) + 1), np.exp(np.nanmean(logs, axis=0)), ls,
                color=colors[style], label=f'residual={style[0]}, norm={style[1]}, step {step}')
  left.set_yscale('log')
  left.set_xlabel(f'block (input → output), depth {deepest}')
  left.set_ylabel('gradient norm (geometric mean over seeds)')
  left.legend(fontsize=6)
  left.grid(alpha=0.3)
  for style, by_depth in ratios.items():
    ds = sorted(by_depth)
    right.errorbar(ds, [10 ** np.mean(by_depth[d]) for d in ds], marker='o', capsize=3,
                   color=colors[style], label=f'residual={style[0]}, norm={style[1]}',
                   yerr=None)
  right.set_yscale('log')
  right.set_xlabel('depth')
  right.set_ylabel('first block / last block gradient norm at init')
  right.axhline(1, color='k', lw=0.5)
  right.legend(fontsize=7)
  right.grid(alpha=0.3)
  path = save_figure(fig, directory, 'gradients.png')
  depths = sorted({d for v in ratios.values() for d in v})
  lines = ['First-block / last-block gradient norm at initialization (geometric mean over seeds; '
           '×10^±std of the log10 in brackets):', '',
           '| residual | norm | ' + ' | '.join(f'depth {d}' for d in depths) + ' |',
           '|---|---|' + '---|' * len(depths)]
  for (res, norm), by_depth in ratios.items():
    lines.append(f'| {res} | {norm} | ' + ' | '.join(
        f'{10 ** np.mean(by_depth[d]):.3g} (×10^±{np.std(by_depth[d], ddof=1):.2f})'
        if d in by_depth else '–' for d in depths) + ' |')
  return {'lines': lines + [''], 'ratios': ratios, 'plot': path}


def verdict(group_keys, groups, analysis):
  """Reproduced if, without skips and without normalization, |log10(first/last)| at init grows
  from the shallowest to the deepest net by more than the seed spread and ends above 1 (a factor
  of 10 between the ends of the net), while with skips and BN it stays below 1."""
  ratios = analysis['ratios']
  if (False, 'none') not in ratios or (True, 'batch') not in ratios:
    return 'not run', 'the depth sweep has no plain net without norm or no residual BN net.'
  plain, resnet = ratios[(False, 'none')], ratios[(True, 'batch')]
  lo, hi = min(plain), max(plain)
  grows = (abs(np.mean(plain[hi])) - abs(np.mean(plain[lo])) >
           max(np.std(plain[hi], ddof=1), np.std(plain[lo], ddof=1)))
  big = abs(np.mean(plain[hi])) > 1
  healthy = abs(np.mean(resnet[hi])) < 1
  reason = (f'first/last block gradient norm at init: plain without norm '
            f'{10 ** np.mean(plain[lo]):.3g} at depth {lo}, {10 ** np.mean(plain[hi]):.3g} at '
            f'depth {hi}; residual with BN {10 ** np.mean(resnet[lo]):.3g} / '
            f'{10 ** np.mean(resnet[hi]):.3g}')
  others = [f'{"residual" if res else "plain"} {norm} {10 ** np.mean(by_depth[hi]):.3g}'
            for (res, norm), by_depth in ratios.items() if hi in by_depth]
  reason += f'. All four at depth {hi}: {", ".join(others)}'
  if grows and big and healthy:
    return 'reproduced', reason + '.'
  if (grows or big) and healthy:
    return 'partly', reason + '.'
  return 'not reproduced', reason + '.'
