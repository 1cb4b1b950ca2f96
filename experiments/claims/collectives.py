"""BatchNorm needs cross-device communication; LayerNorm does not.

Measured, not trained: the train step of ResNet-20 (digits, batch 128) and of the mnist1d
Transformer (batch 64, with BN in place of LN for the BN rows) is compiled data-parallel over 8
devices (simulated on CPU; the HLO is what XLA would run on 8 real devices) for each norm and BN
scope, and the collectives in the optimized HLO are counted with their bytes. "Beyond
gradients" is what a step moves in addition to the gradient all-reduce (4 bytes per parameter)
that every norm pays. The counts are properties of the compiled program, the same for every
seed, so one measurement per row stands in for the 5 seeds of the other claims. (The
Transformer's "beyond gradients" is negative because the rows of its 512-position embedding that
40-step inputs never reach have gradients XLA knows to be zero, and it does not send them.)
`python -m experiments.comm --config=...` prints one table.
"""

import json
import os
import subprocess
import sys

from experiments.claims.common import save_figure, subplots
from experiments.stats import exact, outcome

CONFIGS = ['configs/default.py', 'configs/transformer_mnist1d.py']
NORMS = 'batch:global,batch:per_device,layer,group,rms,none'
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure(directory, configs=CONFIGS, devices=8):
  os.makedirs(directory, exist_ok=True)
  tables = []
  for config in configs:
    path = os.path.join(directory, os.path.basename(config).replace('.py', '.json'))
    if not os.path.exists(path):
      subprocess.run([sys.executable, '-m', 'experiments.comm', f'--config={config}',
                      f'--devices={devices}', f'--norms={NORMS}', f'--json={os.path.abspath(path)}'],
                     check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    with open(path) as f:
      tables.append(json.load(f))
  lines = []
  for t in tables:
    lines += [f'`{t["config"]}` on {t["devices"]} devices ({t["backend"]}):', '',
              '| norm:scope | all-reduces | other collectives | bytes per step | beyond gradients |',
              '|---|---|---|---|---|']
    lines += [f'| {r["norm"]} | {r["all-reduce"]} | {r["other"]} | {r["bytes"]:,} | '
              f'{r["extra_bytes"]:+,} |' for r in t['rows']] + ['']
  return {'lines': lines, 'tables': tables, 'plot': _plot(directory, tables),
          'command': ' '.join(f'`python -m experiments.comm --config={c}`' for c in configs)}


def _plot(directory, tables):
  fig, axes = subplots(1, len(tables), figsize=(5 * len(tables), 4))
  for ax, t in zip(list(axes) if len(tables) > 1 else [axes], tables):
    names = [r['norm'] for r in t['rows']]
    ax.bar(range(len(names)), [r['all-reduce'] for r in t['rows']], color='tab:blue')
    ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
    ax.set_ylabel('all-reduces per train step')
    ax.set_title(os.path.basename(t['config']), fontsize=9)
    ax.grid(alpha=0.3, axis='y')
  path = save_figure(fig, directory, 'collectives.png')
  return path


def verdict(analysis):
  """Reproduced if, in every model, BN with global statistics adds collectives beyond the
  gradient all-reduce (more all-reduces or more bytes than no norm), while LN's step has exactly
  the collectives and bytes of the step without a norm."""
  bn_talks, ln_silent, parts = [], [], []
  for t in analysis['tables']:
    rows = {r['norm']: r for r in t['rows']}
    bn, ln, none = rows['batch:global'], rows['layer'], rows['none']
    bn_talks.append(bn['all-reduce'] > none['all-reduce'] or bn['extra_bytes'] > none['extra_bytes'])
    ln_silent.append((ln['all-reduce'], ln['other'], ln['extra_bytes'])
                     == (none['all-reduce'], none['other'], none['extra_bytes']))
    parts.append(f'{os.path.basename(t["config"])}: BN (global) {bn["all-reduce"]} all-reduces '
                 f'({bn["extra_bytes"]:+,} bytes beyond gradients), BN per device '
                 f'{rows["batch:per_device"]["all-reduce"]}, LN {ln["all-reduce"]} '
                 f'({ln["extra_bytes"]:+,}), none {none["all-reduce"]}')
  reason = '; '.join(parts) + '.'
  return outcome([exact(all(bn_talks)), exact(all(ln_silent))]), reason
