"""Without skips and normalization, gradients vanish with depth (He et al. 2016; Glorot & Bengio
2010); skips keep them alive. And what each norm does to them at initialization.

Measured at initialization, not trained: CIFAR ResNets of depth {8, 20, 56} on digits_hard32
(32x32: on the 8x8 digits of the measurement before, the last stages' 3x3 convolutions saw 4x4
and 2x2 maps, 69 % and 44 % of their taps on zero padding, which alone predicts decades of decay
over 56 layers), plain and residual, norm {batch, layer, group, rms, none}, 5 seeds
(parameters and the first training batch of 128 drawn from the seed). For each net,
the gradient norm of every block of the loss on that batch (train mode), and the ratio of the
first block's to the last block's (1: gradients reach the input undiminished; < 1: they vanish
toward the input; > 1: they explode toward it). The training-time view is the depth sweep's
`grad_norm/*` curves and heat map.

Rule (written before the measurement ran; experiments/stats.py): on log10(first / last) per
seed, α 0.05. Plain without norm "vanishes" when its log10 ratio at depth 56 is shown below -1
(one-sided one-sample t-test) and below its value at depth 8 by more than MIN_DECADES (0.5; the
shifted one-sided Welch test); ruled out when either is. The residual net without norm (the
skips alone: the measurement before used residual with BN, which mixes the two) is "healthy"
when its |log10 ratio| at depth 56 is shown below 1 (one-sample). Reproduced if the plain net
without norm vanishes and the residual no-norm net is healthy; partly if one holds (Holm); not reproduced if
neither and one is ruled out; else inconclusive (underpowered).
Every other cell is stated beside (in particular whether BN without skips explodes toward the
input: mean log10 ratio at 56 of at least 1), not part of the rule.
"""

import os

import numpy as np

from experiments.claims.common import (IMAGES, blocks, cached_rows, init_diagnostics, save_figure,
                                       seeds as claim_seeds, subplots)
from experiments.stats import Comparison, all_of, one_sample, outcome

DEPTHS = [8, 20, 56]
NORMS = ['batch', 'layer', 'group', 'rms', 'none']
MIN_DECADES = 0.5
FILE = 'init_gradients.json'


def init_ratio(depth: int, residual: bool, norm: str, seed: int, data: str = IMAGES) -> dict:
  """Per-block gradient norms at init of one net on its seed's first batch of `data`."""
  from configs import default
  config = default.get_config(str(depth))
  config.data.name = data
  config.model.residual, config.model.norm = residual, norm
  stats = init_diagnostics(config, seed)
  norms = stats['grad_norm']
  names = blocks(norms)
  return {'depth': depth, 'residual': residual, 'norm': norm, 'seed': seed, 'data': data,
          'blocks': [norms[n] for n in names],
          'log10_ratio': float(np.log10(norms[names[0]] / norms[names[-1]]))}


def measure(directory, depths=DEPTHS, norms=NORMS, seeds=None, data=IMAGES):
  seeds = claim_seeds() if seeds is None else seeds
  os.makedirs(directory, exist_ok=True)
  rows = cached_rows(os.path.join(directory, FILE),
                     [{'depth': d, 'residual': residual, 'norm': norm, 'seed': seed, 'data': data}
                      for d in depths for residual in (True, False) for norm in norms
                      for seed in seeds], init_ratio)
  cell = lambda d, res, norm: np.array([r['log10_ratio'] for r in rows if
                                        (r['depth'], r['residual'], r['norm']) == (d, res, norm)
                                        and r['seed'] in seeds and r.get('data') == data])
  lines = ['First-block / last-block gradient norm at initialization (10^mean of log10 over '
           'seeds, [lowest, highest] seed):', '',
           '| skips | norm | ' + ' | '.join(f'depth {d}' for d in depths) + ' |',
           '|---|---|' + '---|' * len(depths)]
  for residual in (True, False):
    for norm in norms:
      cells = []
      for d in depths:
        v = cell(d, residual, norm)
        cells.append(f'{10 ** v.mean():.3g} [{10 ** v.min():.3g}, {10 ** v.max():.3g}]'
                     if len(v) else '–')
      lines.append(f'| {"residual" if residual else "plain"} | {norm} | ' + ' | '.join(cells)
                   + ' |')
  return {'lines': lines + [''], 'rows': rows, 'cell': cell, 'depths': depths,
          'norms': norms, 'plot': _plot(directory, rows, depths, norms),
          'command': f'init-only, {len(rows)} nets; cached in {FILE}'}


def _plot(directory, rows, depths, norms):
  fig, axes = subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for ax, residual in zip(axes, (True, False)):
    for i, norm in enumerate(norms):
      runs = [r for r in rows if (r['depth'], r['residual'], r['norm']) ==
              (max(depths), residual, norm)]
      if runs:
        g = np.exp(np.mean([np.log(r['blocks']) for r in runs], axis=0))
        ax.plot(range(1, len(g) + 1), g, color=f'C{i}', label=norm)
    ax.set_yscale('log')
    ax.set_title(f'{"residual" if residual else "plain"}, depth {max(depths)}, at init',
                 fontsize=9)
    ax.set_xlabel('block (input → output)')
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('gradient norm (geometric mean over seeds)')
  axes[1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  return save_figure(fig, directory, 'gradients.png')


def verdict(analysis):
  cell, depths = analysis['cell'], analysis['depths']
  lo, hi = min(depths), max(depths)
  plain_lo, plain_hi = cell(lo, False, 'none'), cell(hi, False, 'none')
  res_hi = cell(hi, True, 'none')
  if not (len(plain_lo) and len(plain_hi) and len(res_hi)):
    return 'not run', 'the measurement lacks the plain or the residual no-norm nets.'
  falls = Comparison(plain_lo, plain_hi, MIN_DECADES)
  vanishes = all_of([one_sample(plain_hi, -1.0), falls])
  healthy = one_sample(np.abs(res_hi), 1.0)
  bn_plain = cell(hi, False, 'batch')
  others = '; '.join(
      f'{"residual" if res else "plain"} {norm} {10 ** cell(hi, res, norm).mean():.3g}'
      for res in (True, False) for norm in analysis['norms'] if len(cell(hi, res, norm)))
  reason = (f'first/last block gradient norm at init: plain without norm '
            f'{10 ** plain_lo.mean():.3g} at depth {lo}, {10 ** plain_hi.mean():.3g} at {hi} '
            f'(log10: {falls.text(f"depth {lo}", f"depth {hi}", 2)}); residual without norm '
            f'{10 ** res_hi.mean():.3g} at {hi}. Beside the rule: BN without skips '
            f'{"explodes" if len(bn_plain) and bn_plain.mean() >= 1 else "does not explode"} '
            f'toward the input ({10 ** bn_plain.mean():.3g} at depth {hi}); at depth {hi}: '
            f'{others}')
  reason += (f'; plain without norm vanishes: {vanishes.status}; residual without norm healthy: '
             f'{healthy.status}')
  return outcome([vanishes, healthy]), reason + '.'
