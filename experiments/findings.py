"""Assemble experiments/FINDINGS.md from the claim sweeps that have been run.

  python -m experiments.sweep --sweep=experiments/claims/depth.py --dir=sweeps/depth
  python -m experiments.findings --sweeps=sweeps          # reports each, writes FINDINGS.md

For every claim file in experiments/claims/ whose sweep directory exists under --sweeps, this
writes the sweep's report, copies its plot next to FINDINGS.md, and states the claim's verdict as
computed by the claim file from the numbers alone. A difference smaller than the spread over
seeds is "no measurable difference". Claims not yet run are listed as such.

A claim file defines some of:
  get_sweep(arg)      the training sweep (`:smoke` 2 tiny runs, `:full` GPU/TFDS scale);
  SWEEP = 'other'     reuse another claim's sweep directory instead of its own;
  analyze(directory, group_keys, groups) -> dict with 'lines' (markdown shown after the table),
                      optionally 'plot' (a PNG path) and anything its verdict needs: measurements
                      beyond the train loop's own (eval modes, padding invariance, gradients);
  measure(directory) -> the same dict, for a claim with no training sweep (collectives);
  verdict(group_keys, groups[, analysis]) -> (verdict, reason).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil

import numpy as np

import cli
from experiments import report

HERE = os.path.dirname(os.path.abspath(__file__))


def group_stat(members, key='train_loss'):
  """(mean, sample std) over the finished runs of a group; (nan, nan) when none finished."""
  values = [r[key] for r in members if r['state'] == 'finished' and r[key] is not None]
  if not values:
    return float('nan'), float('nan')
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def clearly_greater(a, b) -> bool:
  """a > b by more than the larger of the two seed spreads (a, b: (mean, std))."""
  return a[0] - b[0] > max(a[1], b[1])


def wall_minutes(directory, runs) -> float:
  """From the first run's config.json to the last status.json written."""
  starts, ends = [], []
  for r in runs:
    workdir = os.path.join(directory, r['name'])
    if os.path.exists(os.path.join(workdir, 'status.json')):
      starts.append(os.path.getmtime(os.path.join(workdir, 'config.json')))
      ends.append(os.path.getmtime(os.path.join(workdir, 'status.json')))
  return (max(ends) - min(starts)) / 60 if starts else float('nan')


def lookup(group_keys, groups, **values) -> list:
  """The runs of the group whose swept keys equal `values` (keys given as dotted names; keys not
  swept are ignored); [] when there is none."""
  index = {k: i for i, k in enumerate(group_keys)}
  for key, members in groups.items():
    if all(key[index[k]] == v for k, v in values.items() if k in index):
      return members
  return []


def claim_section(module, name: str, sweeps_dir: str, out_dir: str) -> tuple[list[str], str]:
  """The claim's markdown section and its verdict ('not run yet' when its sweep is missing)."""
  lines = [f'## {name}', '', (module.__doc__ or '').strip(), '']
  own = f'python -m experiments.sweep --sweep=experiments/claims/{name}.py --dir={sweeps_dir}/{name}'
  if hasattr(module, 'measure'):          # no training runs: a measurement of compiled programs
    directory = os.path.join(sweeps_dir, name)
    analysis = module.measure(directory)
    lines += [f'Command: `python -m experiments.findings` (measures; {analysis["command"]}).', '']
    lines += analysis['lines'] + ['']
    lines += _plot(analysis.get('plot'), name, out_dir)
    verdict, reason = module.verdict(analysis)
    return lines + [f'**Verdict: {verdict}.** {reason}', ''], verdict
  sweep_name = getattr(module, 'SWEEP', name)
  directory = os.path.join(sweeps_dir, sweep_name)
  command = (own if sweep_name == name else
             f'python -m experiments.sweep --sweep=experiments/claims/{sweep_name}.py '
             f'--dir={sweeps_dir}/{sweep_name}')
  if not os.path.exists(os.path.join(directory, report.SWEEP_FILE)):
    return lines + [f'Not run yet. Command: `{command}`', ''], 'not run yet'
  report.write_report(directory)
  group_keys, groups, runs = report.summarize(directory)
  lines += [f'Command: `{command}` then `python -m experiments.findings`. '
            f'{sum(r["state"] == "finished" for r in runs)}/{len(runs)} runs finished; '
            f'seeds {sorted({r["overrides"].get("seed") for r in runs}, key=str)}; '
            f'wall time {wall_minutes(directory, runs):.1f} min.', '']
  lines += report.table(group_keys, groups) + ['']
  analysis = module.analyze(directory, group_keys, groups) if hasattr(module, 'analyze') else {}
  lines += analysis.get('lines', [])
  lines += _plot(analysis.get('plot') or os.path.join(directory, 'train_loss.png'), name, out_dir)
  verdict, reason = (module.verdict(group_keys, groups, analysis) if 'analyze' in vars(module)
                     else module.verdict(group_keys, groups))
  return lines + [f'**Verdict: {verdict}.** {reason}', ''], verdict


def _plot(path, name, out_dir) -> list[str]:
  if not path or not os.path.exists(path):
    return []
  target = f'{name}_{os.path.basename(path)}'
  shutil.copy(path, os.path.join(out_dir, target))
  return [f'![{name}]({target})', '']


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--sweeps', default='sweeps')
  p.add_argument('--out', default=os.path.join(HERE, 'FINDINGS.md'))
  p.add_argument('--only', default='', help='comma-separated claim names (default: all)')
  a = p.parse_args()
  out_dir = os.path.dirname(os.path.abspath(a.out))
  lines = ['# Findings', '', 'Generated by `python -m experiments.findings` from the claim sweeps '
           'in experiments/claims/ (3 seeds each unless a claim says otherwise; mean ± sample std; '
           '"no measurable difference" when a difference is within the seed spread). Wall times '
           'are on a 2-core CPU, sometimes shared with other work.', '']
  only = set(filter(None, a.only.split(',')))
  sections, summary = [], ['| claim | verdict |', '|---|---|']
  for path in sorted(glob.glob(os.path.join(HERE, 'claims', '*.py'))):
    name = os.path.basename(path)[:-3]
    if name.startswith('__') or name == 'common' or (only and name not in only):
      continue
    module = cli.import_file(path, f'_claim_{name}')
    section, verdict = claim_section(module, name, a.sweeps, out_dir)
    first_line = (module.__doc__ or name).strip().split('\n')[0]
    summary.append(f'| [{name}](#{name}): {first_line} | {verdict} |')
    sections += section
  lines += summary + [''] + sections
  with open(a.out, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print(f'wrote {a.out}')


if __name__ == '__main__':
  main()
