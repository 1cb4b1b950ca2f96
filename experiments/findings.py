"""Assemble experiments/results/FINDINGS.md (and its plots, beside it) from the claim sweeps that have been run.

  python -m experiments.findings --run                    # one command: every sweep, then all
  python -m experiments.sweep --sweep=experiments/claims/depth.py --dir=sweeps/depth
  python -m experiments.findings --sweeps=sweeps          # reports each, writes FINDINGS.md
  python -m experiments.findings --run --seeds=10,11,12,13,14 --sweeps=other --out=other.md
                      # the committed rules on other seeds, into another report
  python -m experiments.findings --run --only=depth --carry
                      # a sweep longer than a session: finished runs kept in git
                      # (experiments/carry.py); the same command in the next session goes on

For every claim file in experiments/claims/ whose sweep directory exists under --sweeps, this
writes the sweep's report, copies its plot next to FINDINGS.md, and states the claim's verdict as
computed by the claim file from the numbers alone, by the rule its docstring states (a minimum
effect and a shifted one-sided small-sample test, `experiments/stats.py`, whose docstring
defines the five outcomes). Each section records the commit at which
the claim file (its rule) last changed and whether that was before its sweep started. Claims not
yet run are listed as such; a sweep with runs still to come gets no verdict, only what the rule
would say on the runs that ended. With --only, the other claims' sections are kept as they are in
the existing file. With --run, each claim's sweep is run first (finished runs are skipped,
interrupted ones resumed), so one command regenerates everything; the header states the machine,
and the summary each sweep's seeds, the day it started, its wall time and their total.

A claim file defines some of:
  get_sweep(arg)      the training sweep (`:smoke` 2 tiny runs, `:full` GPU/TFDS scale);
  SWEEP = 'other'     reuse another claim's sweep directory instead of its own;
  analyze(directory, group_keys, groups) -> dict with 'lines' (markdown shown after the table),
                      optionally 'plot' (a PNG path) and anything its verdict needs: measurements
                      beyond the train loop's own (eval modes, padding invariance, gradients);
  measure(directory) -> the same dict, for a claim with no training sweep (collectives);
  verdict(group_keys, groups[, analysis]) -> (verdict, reason);
  gate(group_keys, groups[, analysis]) -> the conditions of the claim's regime that the runs did
                      not reach (not converged, accuracy at the ceiling, ...): any makes the
                      verdict "inconclusive (regime not reached)", with them and what the rule
                      alone would say.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import glob
import os
import re
import shutil
import subprocess
import sys

import cli
from errors import ConfigError
from experiments import report
from experiments.claims import common
from experiments.stats import INCONCLUSIVE, OUTCOMES

HERE = os.path.dirname(os.path.abspath(__file__))
INCOMPLETE = 'no verdict (sweep not ended)'


def wall_minutes(directory, runs) -> float:
  """The time during which some run of the sweep was live (from its config.json to its last
  status.json): the union of the runs' spans, so a sweep carried over sessions (--carry) does
  not count the hours between them, and shards run side by side count once."""
  spans = []
  for r in runs:
    workdir = os.path.join(directory, r['name'])
    if os.path.exists(os.path.join(workdir, 'status.json')):
      spans.append((os.path.getmtime(os.path.join(workdir, 'config.json')),
                    os.path.getmtime(os.path.join(workdir, 'status.json'))))
  total, end = 0.0, float('-inf')
  for start, stop in sorted(spans):
    total += max(0.0, stop - max(start, end))
    end = max(end, stop)
  return total / 60 if spans else float('nan')


def rule_commit(path: str, sweep_start: float | None, root: str = os.path.dirname(HERE)) -> str:
  """Where the claim file's rule comes from: its last commit, and whether that precedes the
  sweep's first run (a file committed after its numbers were seen is flagged, and the flag says
  whether its "Rule" paragraph is still the one in effect when the sweep started)."""
  git = lambda *args: subprocess.run(['git', *args], cwd=root, capture_output=True,
                                     text=True).stdout.strip()
  rel = os.path.relpath(path, root)
  if git('status', '--porcelain', '--', rel):
    return f'Verdict rule: `{rel}` has uncommitted changes, so no commit fixes its rule.'
  line = git('log', '-1', '--format=%h %ct', '--', rel)
  if not line:
    return f'Verdict rule: `{rel}` is not in git.'
  commit, when = line.split()
  text = (f'Verdict rule: `{rel}` as of commit {commit} '
          f'({datetime.datetime.fromtimestamp(int(when), datetime.timezone.utc):%Y-%m-%d %H:%M} '
          'UTC)')
  if sweep_start is None:
    return text + '.'
  start = datetime.datetime.fromtimestamp(sweep_start, datetime.timezone.utc)
  if int(when) <= sweep_start:
    return text + f', before the sweep started ({start:%Y-%m-%d %H:%M} UTC).'
  text += (f', **after** the sweep started ({start:%Y-%m-%d %H:%M} UTC): the rule may have seen '
           'the numbers')
  then = git('log', '-1', f'--before={start:%Y-%m-%d %H:%M:%S} +0000', '--format=%h', '--', rel)
  with open(path, encoding='utf-8') as f:
    now = rule_paragraph(f.read())
  if then and now and rule_paragraph(git('show', f'{then}:{rel}')) == now:
    text += (f'. Its "Rule" paragraph is word for word that of {then}, in effect when the sweep '
             f'started; what changed since is `git diff {then} {commit} -- {rel}`')
  return text + '.'


def rule_paragraph(source: str) -> str:
  """The claim's rule as its docstring words it: the paragraphs that start with "Rule", each
  reflowed to single spaces ('' when the file has none or does not parse)."""
  try:
    doc = ast.get_docstring(ast.parse(source)) or ''
  except SyntaxError:
    return ''
  return '\n'.join(' '.join(p.split()) for p in re.split(r'\n\s*\n', doc)
                   if p.lstrip().startswith('Rule'))


def decide(module, *args) -> tuple[str, str]:
  """The verdict and its reason: the claim's rule, unless its gate finds the regime unreached."""
  verdict, reason = module.verdict(*args)
  unmet = module.gate(*args) if hasattr(module, 'gate') else []
  if unmet:
    return INCONCLUSIVE, ('; '.join(unmet) + f'. (The rule alone would say "{verdict}": '
                          f'{reason})')
  return verdict, reason


def unended(runs, verdict: str, reason: str) -> tuple[str, str]:
  """No verdict while some of the sweep's runs have not ended (pending, running, interrupted):
  a rule that counts the runs of a cell would read a run still to come as one that failed."""
  left = [r for r in runs if r['state'] not in report.ENDED]
  if not left:
    return verdict, reason
  return INCOMPLETE, (f'{len(left)} of {len(runs)} runs have not ended (the same sweep command '
                      f'resumes them). The rule on the ended runs alone would say "{verdict}": '
                      f'{reason}')


def sweep_start(directory, runs) -> float | None:
  starts = [os.path.getmtime(os.path.join(directory, r['name'], 'config.json')) for r in runs
            if os.path.exists(os.path.join(directory, r['name'], 'config.json'))]
  return min(starts) if starts else None


def claim_section(module, name: str, sweeps_dir: str, out_dir: str) -> tuple[list[str], str, dict]:
  """The claim's markdown section, its verdict ('not run yet' when its sweep is missing) and
  {'seeds', 'minutes'} of its sweep (empty when it has none)."""
  lines = [f'## {name}', '', (module.__doc__ or '').strip(), '']
  own = f'python -m experiments.sweep --sweep=experiments/claims/{name}.py --dir={sweeps_dir}/{name}'
  if hasattr(module, 'measure'):          # no training runs: a measurement of compiled programs
    directory = os.path.join(sweeps_dir, name)
    analysis = module.measure(directory)
    lines += [f'Command: `python -m experiments.findings` (measures; {analysis["command"]}).', '']
    lines += analysis['lines'] + ['']
    lines += _plot(analysis.get('plot'), name, out_dir)
    verdict, reason = decide(module, analysis)
    lines += [rule_commit(module.__file__, None), '']
    return lines + [f'**Verdict: {verdict}.** {reason}', ''], verdict, {}
  sweep_name = getattr(module, 'SWEEP', name)
  directory = os.path.join(sweeps_dir, sweep_name)
  command = (own if sweep_name == name else
             f'python -m experiments.sweep --sweep=experiments/claims/{sweep_name}.py '
             f'--dir={sweeps_dir}/{sweep_name}')
  if not os.path.exists(os.path.join(directory, report.SWEEP_FILE)):
    return lines + [f'Not run yet. Command: `{command}`', ''], 'not run yet', {'missing': True}
  group_keys, groups, runs = summary = report.summarize(directory)   # reads the event files once
  report.write_report(directory, summary)
  seeds = sorted({r['overrides'].get('seed') for r in runs}, key=str)
  minutes = wall_minutes(directory, runs)
  lines += [f'Command: `{command}` then `python -m experiments.findings`. '
            f'{sum(r["state"] == "finished" for r in runs)}/{len(runs)} runs finished; '
            f'seeds {seeds}; wall time {minutes:.1f} min.', '']
  lines += report.table(group_keys, groups) + ['']
  analysis = module.analyze(directory, group_keys, groups) if hasattr(module, 'analyze') else {}
  lines += analysis.get('lines', [])
  lines += _plot(analysis.get('plot') or os.path.join(directory, 'train_loss.png'), name, out_dir)
  args = (group_keys, groups, analysis) if 'analyze' in vars(module) else (group_keys, groups)
  verdict, reason = unended(runs, *decide(module, *args))
  lines += [rule_commit(module.__file__, sweep_start(directory, runs)), '']
  own = sweep_name == name
  return (lines + [f'**Verdict: {verdict}.** {reason}', ''], verdict,
          {'seeds': seeds, 'minutes': minutes if own else 0.0, 'runs': len(runs) if own else 0})


def headline(section: list[str]) -> str:
  """The first comparison stated in a section's verdict line: "a above b by d (90 % interval
  lo to hi" (– when the verdict states none)."""
  line = next((x for x in section if x.startswith('**Verdict')), '')
  m = re.search(r'([^;:.(]*? (?:above|below) [^;:(]*? by -?[\d.]+ \(\d+ % interval '
                r'-?[\d.infa]+ to -?[\d.infa]+)', line)
  return m.group(1).strip() + ')' if m else '–'


def machine() -> str:
  """One line: the CPU, its cores, the JAX backend and versions."""
  import platform

  import jax
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return (f'{cpu}, {os.cpu_count()} cores; JAX {jax.__version__} on '
          f'{jax.default_backend()}; Python {platform.python_version()}')


def own_sweeps(names) -> list[tuple[str, str]]:
  """(name, claim file) of each claim in `names` with a training sweep of its own."""
  out = []
  for name in names:
    path = os.path.join(HERE, 'claims', f'{name}.py')
    module = cli.import_file(path, f'_claim_{name}')
    if hasattr(module, 'get_sweep') and not hasattr(module, 'SWEEP'):
      out.append((name, path))
  return out


def restore_kept(names, sweeps_dir: str) -> None:
  """--carry: each claim sweep's runs kept in git (experiments/carry.py) back into its
  directory, with sweep.json when the directory has none."""
  from experiments import carry
  from experiments import sweep as sweep_lib
  from experiments import sweeps as sweeps_lib
  from training import workdir as wd
  for name, path in own_sweeps(names):
    directory = os.path.join(sweeps_dir, name)
    sweep = sweeps_lib.load_sweep(path)
    runs = sweep.runs()
    restored, stale = carry.restore(os.path.join(carry.STORE, name), directory,
                                    {r.name: wd.config_to_dict(r.config) for r in runs})
    if restored and not os.path.exists(os.path.join(directory, report.SWEEP_FILE)):
      sweep_lib.write_sweep_file(sweep, runs, directory)
    print(f'{name}: {len(restored)} kept run(s) restored'
          + (f'; {len(stale)} kept with another config than the sweep gives them now, left out'
             if stale else ''), flush=True)


def keep_finished(name: str, sweeps_dir: str) -> None:
  """--carry: the claim sweep's ended runs (finished or diverged) into git's store."""
  from experiments import carry
  directory = os.path.join(sweeps_dir, name)
  if os.path.isdir(directory):
    kept = carry.keep(directory, os.path.join(carry.STORE, name))
    print(f'{name}: {len(kept)} ended run(s) (finished or diverged) kept in '
          f'{os.path.relpath(carry.STORE)}/{name}', flush=True)


def run_sweeps(names, sweeps_dir: str, devices_per_run: int = 0) -> None:
  """Runs (or resumes) the training sweep of every claim in `names` that has one of its own;
  `devices_per_run` > 0: packed, one process per that many devices (experiments/sweep.py)."""
  from experiments import sweep as sweep_lib
  from experiments import sweeps as sweeps_lib
  for name, path in own_sweeps(names):
    print(f'sweep {name}', flush=True)
    directory = os.path.join(sweeps_dir, name)
    if not devices_per_run:
      sweep_lib.run_sweep(sweeps_lib.load_sweep(path), directory)
      continue
    code = sweep_lib.packed(argparse.Namespace(
        shard='0/1', sweep=path, dir=directory, seeds_in_one_program='auto',
        devices_per_run=devices_per_run))
    if code == 143:   # a run saved and stopped (sweep.packed): the same command resumes
      sys.exit(code)


def _plot(path, name, out_dir) -> list[str]:
  if not path or not os.path.exists(path):
    return []
  target = f'{name}_{os.path.basename(path)}'
  shutil.copy(path, os.path.join(out_dir, target))
  return [f'![{name}]({target})', '']


def sweep_date(section: list[str]) -> str:
  """The day a section's sweep started, as its "Verdict rule:" line states it (– if none)."""
  m = re.search(r'the sweep started \((\d{4}-\d{2}-\d{2})', '\n'.join(section))
  return m.group(1) if m else '–'


def _kept_row(row: str, section: list[str]) -> str:
  """A summary row kept from an earlier version, given the columns added since: the headline
  ('–') and the day its sweep started (from its section)."""
  cells = row.strip().strip('|').strip().split(' | ')
  if len(cells) == 4:
    cells.insert(2, '–')
  if len(cells) == 5:
    cells.insert(4, sweep_date(section))
  return '| ' + ' | '.join(cells) + ' |'


def _existing_sections(path) -> dict[str, tuple[str, list[str]]]:
  """{claim: (its summary row, its section's lines)} in an existing FINDINGS.md."""
  if not os.path.exists(path):
    return {}
  text = open(path).read()
  out = {}
  for m in re.finditer(r'^## (\w+)\n(.*?)(?=^## |\Z)', text, flags=re.M | re.S):
    row = re.search(rf'^\| \[{m.group(1)}\]\(.*$', text, flags=re.M)
    if row:
      out[m.group(1)] = (row.group(0),
                         (f'## {m.group(1)}\n' + m.group(2).rstrip('\n')).split('\n') + [''])
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--sweeps', default='sweeps')
  p.add_argument('--out', default=os.path.join(HERE, 'results', 'FINDINGS.md'))
  p.add_argument('--only', default='', help='comma-separated claim names (default: all)')
  p.add_argument('--run', action='store_true', help='run (or resume) each claim\'s sweep first')
  p.add_argument('--seeds', default='', help='comma-separated seeds for every claim instead of '
                 '0, 1, ... (a claim asking for more continues them consecutively)')
  p.add_argument('--devices_per_run', type=int, default=0, help='--run: pack each sweep\'s '
                 'runs onto the machine\'s devices, one process per this many (0: one run '
                 'after another on every device)')
  p.add_argument('--carry', action='store_true', help='restore each claim\'s runs kept in '
                 'git (experiments/results/kept_runs/) before running or reporting it, and keep '
                 'its ended runs there after: a sweep longer than a session goes on in the next')
  a = p.parse_args()
  try:
    seeds = [int(s) for s in a.seeds.split(',') if s.strip()]
  except ValueError:
    cli.fail(f'--seeds takes comma-separated integers, not {a.seeds!r}')
  if seeds:
    os.environ[common.SEEDS_ENV] = ','.join(map(str, seeds))
  out_dir = os.path.dirname(os.path.abspath(a.out))
  os.makedirs(out_dir, exist_ok=True)
  lines = ['# Findings', '', 'Generated by `python -m experiments.findings` from the claim sweeps '
           f'in experiments/claims/ (seeds {", ".join(map(str, common.seeds()))}, unless a claim '
           'says otherwise; tables: mean and its 95 % t-interval over seeds). Each verdict follows '
           'the rule in its claim file\'s docstring, fixed before the sweep ran (each section '
           'names the commit): a minimum effect is shown when the one-sided test of "effect ≤ '
           'minimum" rejects at 0.05 (Welch, or the exact permutation test for a group without '
           'spread), i.e. the one-sided 95 % lower bound lies above it; intervals are the '
           'matching 90 % ones; a rule over several cells corrects them by Holm. Outcomes: '
           + '; '.join(f'"{o}"' for o in OUTCOMES) + ' (experiments/stats.py defines each; '
           f'"{INCONCLUSIVE}" when the runs did not reach the regime the claim is about).', '',
           f'Machine: {machine()}. Wall times are of each sweep on it, sometimes sharing it '
           'with other work.', '']
  only = set(filter(None, a.only.split(',')))
  names = [os.path.basename(p)[:-3] for p in sorted(glob.glob(os.path.join(HERE, 'claims',
                                                                            '*.py')))]
  names = [n for n in names if not n.startswith('__') and n != 'common']
  unknown = sorted(only - set(names))
  if unknown:
    cli.fail(f'unknown claim(s) {", ".join(unknown)}; valid: {", ".join(names)}')
  if a.carry:
    try:
      restore_kept([n for n in names if not only or n in only], a.sweeps)
    except ConfigError as e:
      cli.fail(str(e))
  if a.run:
    try:
      run_sweeps([n for n in names if not only or n in only], a.sweeps, a.devices_per_run)
    except ConfigError as e:
      cli.fail(str(e))
  kept = _existing_sections(a.out) if only else {}
  sections, summary = [], ['| claim | verdict | first comparison of its reason (effect, 90 % '
                           'interval) | seeds | sweep started | sweep wall time |',
                           '|---|---|---|---|---|---|']
  total = 0.0
  for name in names:
    path = os.path.join(HERE, 'claims', f'{name}.py')
    if only and name not in only and name in kept:
      summary.append(_kept_row(*kept[name]))
      sections += kept[name][1]
      continue
    module = cli.import_file(path, f'_claim_{name}')
    if only and name not in only:   # not asked for, and not in the file: listed, not measured
      section, verdict, sweep = ([f'## {name}', '', (module.__doc__ or '').strip(), '',
                                  f'Not in this version: `--only={name}` regenerates it.', ''],
                                 'not run yet', {'missing': True})
    else:
      section, verdict, sweep = claim_section(module, name, a.sweeps, out_dir)
      if a.carry and sweep.get('runs'):   # a sweep of its own that has run
        keep_finished(name, a.sweeps)
    first_line = re.split(r'(?<!\bal)\.\s', ' '.join((module.__doc__ or name).split()))[0]
    first_line = first_line.rstrip('.') + '.'   # its first sentence ("et al." does not end one)
    seeds = f'{len(sweep["seeds"])}' if sweep.get('seeds') else '–'
    wall = (f'{sweep["minutes"]:.1f} min ({sweep["runs"]} runs)' if sweep.get('runs') else
            'not run' if sweep.get('missing') else
            'measured at report time' if not sweep else 'shares a sweep')
    total += sweep.get('minutes') or 0.0
    summary.append(f'| [{name}](#{name}): {first_line} | {verdict} | {headline(section)} | '
                   f'{seeds} | {sweep_date(section)} | {wall} |')
    sections += section
  if only:
    old = sorted(n for n in kept if n not in only)
    lines += [f'This version regenerated {", ".join(sorted(only))} '
              f'({datetime.date.today()}); the sections of {", ".join(old) or "no other claim"} '
              'are kept from the previous version, with the verdict rules of their time (a '
              'section without a "Verdict rule:" line predates the rule machinery).', '']
  lines += summary + ['', f'Total wall time of the sweeps regenerated here: {total:.0f} min.',
                       ''] + sections
  with open(a.out, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print(f'wrote {a.out}')


if __name__ == '__main__':
  main()
