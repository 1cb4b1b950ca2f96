"""Every claim sweep expands and validates at full size, and its smoke version (2 runs of a few
steps) trains and reports, so the sweeps never rot."""

import glob
import json
import math
import os

import numpy as np
import pytest

from experiments import report, sweep, sweeps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_CLAIMS = sorted(p for p in glob.glob(os.path.join(ROOT, 'experiments', 'claims', '*.py'))
                    if not os.path.basename(p).startswith(('__', 'common')))


def _module(path):
  import cli
  return cli.import_file(path, '_claim_' + os.path.basename(path)[:-3])


# Claims with a training sweep of their own (gradients measures nets at initialization and
# collectives compiled programs: neither trains).
CLAIMS = [p for p in ALL_CLAIMS if hasattr(_module(p), 'get_sweep')
          and not hasattr(_module(p), 'SWEEP')]


def test_every_claim_has_a_verdict_and_a_way_to_its_numbers():
  assert ALL_CLAIMS
  for path in ALL_CLAIMS:
    module = _module(path)
    assert hasattr(module, 'verdict') and module.__doc__
    assert hasattr(module, 'get_sweep') or hasattr(module, 'measure')
    if hasattr(module, 'get_sweep') and not hasattr(module, 'SWEEP'):
      full = module.get_sweep('full').runs()
      assert len({r.overrides['seed'] for r in full}) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("path", CLAIMS, ids=os.path.basename)
def test_claim_sweep_is_valid_and_its_smoke_version_runs(path, tmp_path):
  full = sweeps.load_sweep(path)
  runs = full.runs()
  assert len(runs) >= 6 and {r.overrides['seed'] for r in runs} >= {0, 1, 2}
  sweep.validate(runs)
  states = sweep.run_sweep(sweeps.load_sweep(f'{path}:smoke'), str(tmp_path))
  assert list(states.values()) == ['finished', 'finished']
  text = open(report.write_report(str(tmp_path))).read()
  rows = [line for line in text.splitlines() if line.startswith('| ') and 'seeds' not in line]
  assert len(rows) == 2   # one group per smoke run (no seed axis in the smoke version)


@pytest.mark.slow
def test_findings_are_assembled_from_the_sweeps_that_ran(tmp_path, monkeypatch):
  from experiments import findings
  sweep.run_sweep(sweeps.load_sweep(os.path.join(ROOT, 'experiments/claims/depth.py:smoke')),
                  str(tmp_path / 'sweeps' / 'depth'))
  out = tmp_path / 'FINDINGS.md'
  monkeypatch.setattr('sys.argv', ['findings', f'--sweeps={tmp_path / "sweeps"}', f'--out={out}',
                                   '--only=depth,batch_size'])
  findings.main()
  text = out.read_text()
  assert '## depth' in text and '**Verdict:' in text and (tmp_path / 'depth_train_loss.png').exists()
  depth_part = text.split('## depth')[1].split('## ')[0]
  assert '| 8 | True |' in depth_part and '| 8 | False |' in depth_part
  assert 'Not run yet' in text.split('## batch_size')[1].split('## ')[0]
  # the section names the commit of the claim file that holds the verdict rule
  assert 'Verdict rule: `experiments/claims/depth.py`' in depth_part
  # --only regenerates those claims and keeps every other section as it was
  monkeypatch.setattr('sys.argv', ['findings', f'--sweeps={tmp_path / "none"}', f'--out={out}',
                                   '--only=batch_size'])
  findings.main()
  again = out.read_text()
  assert again.split('## depth')[1].split('## ')[0] == depth_part
  headings = [line for line in again.splitlines() if line.startswith('## ')]
  assert again.count('| [depth](#depth)') == 1 and headings.count('## batch_size') == 1
  assert len(headings) == len(set(headings))   # each claim once (batch_size_wu_he shares a prefix)
  # a claim neither asked for nor in the file is listed as not run, and nothing was measured for it
  warmup = again.split('## warmup\n')[1].split('\n## ')[0]
  assert 'Not in this version' in warmup and '**Verdict:' not in warmup
  # the header names the machine; the summary, each sweep's seeds and wall time
  assert 'Machine: ' in text and 'cores; JAX' in text
  row = next(line for line in text.splitlines() if line.startswith('| [depth]'))
  assert row.endswith(' min (2 runs) |') and 'Total wall time' in text
  import datetime
  assert f'| {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d} |' in row   # sweep started
  # an unknown claim name is refused before anything is written, listing the valid ones
  monkeypatch.setattr('sys.argv', ['findings', f'--out={tmp_path / "other.md"}', '--only=dept'])
  with pytest.raises(SystemExit) as e:
    findings.main()
  assert e.value.code != 0 and not (tmp_path / 'other.md').exists()
  # a run still to resume withholds the verdict (the rule's, unchanged, is quoted)
  status = sorted(glob.glob(str(tmp_path / 'sweeps' / 'depth' / '*' / 'status.json')))[0]
  json.dump({**json.load(open(status)), 'state': 'interrupted'}, open(status, 'w'))
  monkeypatch.setattr('sys.argv', ['findings', f'--sweeps={tmp_path / "sweeps"}', f'--out={out}',
                                   '--only=depth'])
  findings.main()
  assert ('**Verdict: no verdict (sweep not ended).** 1 of 2 runs have not ended'
          in out.read_text())


def test_a_kept_summary_row_gains_the_columns_added_since_from_its_section():
  """Rows kept by --only from older versions get the headline ('–') and the day their sweep
  started, read from their own section's "Verdict rule:" line ('–' when it has none)."""
  from experiments import findings
  section = ['## depth', 'Verdict rule: `experiments/claims/depth.py` as of commit abc '
             '(2026-11-25 06:39 UTC), before the sweep started (2026-11-26 07:00 UTC).']
  old = '| [depth](#depth): He et al. | reproduced | 3 | 20.0 min (18 runs) |'
  assert findings._kept_row(old, section) == (
      '| [depth](#depth): He et al. | reproduced | – | 3 | 2026-11-26 | 20.0 min (18 runs) |')
  newer = '| [depth](#depth): He et al. | partly | a above b by 1 (90 % interval 0 to 2) | 5 | ' \
          '12.0 min (60 runs) |'
  assert findings._kept_row(newer, ['## depth', 'no rule line']).endswith(
      '| 5 | – | 12.0 min (60 runs) |')
  current = findings._kept_row(old, section)
  assert findings._kept_row(current, section) == current   # a row with every column: as it is


def test_a_claim_file_committed_after_its_sweep_started_says_whether_its_rule_changed(tmp_path):
  """A file committed after the sweep's first run is flagged either way; when only its design
  changed (a grid extended, as a gate asks) the flag adds that the "Rule" paragraph is word for
  word the one in effect at the start, and when the rule itself changed it does not."""
  import subprocess

  from experiments import findings
  claim = tmp_path / 'claim.py'

  def commit(text, when):
    claim.write_text(text)
    env = dict(os.environ, GIT_AUTHOR_DATE=f'@{when} +0000', GIT_COMMITTER_DATE=f'@{when} +0000',
               GIT_AUTHOR_NAME='t', GIT_AUTHOR_EMAIL='t@t', GIT_COMMITTER_NAME='t',
               GIT_COMMITTER_EMAIL='t@t')
    for args in (['add', 'claim.py'], ['commit', '-q', '-m', str(when)]):
      subprocess.run(['git', *args], cwd=tmp_path, env=env, check=True)
    return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=tmp_path, check=True,
                          capture_output=True, text=True).stdout.strip()

  subprocess.run(['git', 'init', '-q'], cwd=tmp_path, check=True)
  rule = 'Rule (written before): reproduced if A beats B by 2\n  points; else not.'
  first = commit(f'"""Claim.\n\nGrid: lr {{0.1}}.\n\n{rule}\n"""\nLRS = [0.1]\n', 1_000_000)
  start = 1_000_100
  assert ', before the sweep started' in findings.rule_commit(str(claim), start, str(tmp_path))
  # the grid extended after the start; the rule reflowed but word for word the same
  commit(f'"""Claim.\n\nGrid: lr {{0.1, 0.3}}.\n\n{rule.replace(chr(10) + "  ", " ")}\n"""\n'
         'LRS = [0.1, 0.3]\n', 1_000_200)
  line = findings.rule_commit(str(claim), start, str(tmp_path))
  assert '**after** the sweep started' in line
  assert f'word for word that of {first}' in line and f'git diff {first} ' in line
  # the rule itself edited after the start: flagged, and no such reassurance
  commit(f'"""Claim.\n\nGrid: lr {{0.1, 0.3}}.\n\n{rule.replace("by 2", "by 1")}\n"""\n',
         1_000_300)
  line = findings.rule_commit(str(claim), start, str(tmp_path))
  assert '**after** the sweep started' in line and 'word for word' not in line
  assert findings.sweep_date([line]) == '1970-01-12'


def _stand_in_claims(tmp_path, monkeypatch, claim):
  """experiments.findings reading a claims folder in tmp_path that holds one claim, 'tiny': the
  smoke version of `claim`."""
  from experiments import findings
  claims = tmp_path / 'claims'
  claims.mkdir()
  source = open(os.path.join(ROOT, f'experiments/claims/{claim}.py')).read()
  (claims / 'tiny.py').write_text(source.replace(
      'def get_sweep(arg=None):', 'def get_sweep(arg=None):\n  arg = \'smoke\''))
  monkeypatch.setattr(findings, 'HERE', str(tmp_path))
  return findings


@pytest.mark.slow
@pytest.mark.parametrize('devices_per_run', [0, 1])
def test_findings_run_flag_runs_the_sweeps_then_reports(tmp_path, monkeypatch, devices_per_run):
  """One command: --run trains a claim's sweep (here the smoke version of ln_generalization,
  through a stand-in claims folder) and writes its section; with --devices_per_run=1 on 2
  (simulated) devices, packed: its two runs in two processes at once, one device each."""
  findings = _stand_in_claims(tmp_path, monkeypatch, 'ln_generalization')
  out = tmp_path / 'FINDINGS.md'
  monkeypatch.setattr('sys.argv', ['findings', f'--sweeps={tmp_path / "sweeps"}', f'--out={out}',
                                   '--run', f'--devices_per_run={devices_per_run}'])
  if devices_per_run:   # what the packed processes see (this process's JAX has started)
    monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  findings.main()
  runs = sorted(os.path.dirname(p) for p in
                glob.glob(str(tmp_path / 'sweeps' / 'tiny' / '*' / 'status.json')))
  assert [json.load(open(os.path.join(r, 'status.json')))['state'] for r in runs] == \
      ['finished', 'finished']
  if devices_per_run:
    assert [json.load(open(os.path.join(r, 'resolved.json')))['devices'] for r in runs] == [1, 1]
    assert len({glob.glob(os.path.join(r, 'events.out.tfevents.*'))[0].split('.')[-2]
                for r in runs}) == 2   # one process each
  assert '## tiny' in out.read_text() and '2/2 runs finished' in out.read_text()


@pytest.mark.slow
def test_a_sweep_carried_to_another_session_is_not_retrained_and_reports_the_same(
    tmp_path, monkeypatch):
  """--carry: the finished runs kept in git come back on a fresh machine (no sweeps directory):
  --run trains nothing, and the section (numbers, wall time, rule-before-sweep) is unchanged."""
  from experiments import carry
  findings = _stand_in_claims(tmp_path, monkeypatch, 'ln_cnn')
  monkeypatch.setattr(carry, 'STORE', str(tmp_path / 'kept'))
  out = tmp_path / 'FINDINGS.md'
  argv = ['findings', f'--sweeps={tmp_path / "sweeps"}', f'--out={out}', '--run', '--carry']
  monkeypatch.setattr('sys.argv', argv)
  findings.main()
  section = out.read_text().split('## tiny')[1]
  kept = sorted(os.listdir(tmp_path / 'kept' / 'tiny'))
  assert len(kept) == 2 and '2/2 runs finished' in section
  assert all(os.path.exists(tmp_path / 'kept' / 'tiny' / k / 'eval_validation.json')
             for k in kept)   # the measurement analyze made: no checkpoint needed to report
  import shutil
  shutil.rmtree(tmp_path / 'sweeps')
  findings.main()
  assert out.read_text().split('## tiny')[1] == section
  for k in kept:
    workdir = tmp_path / 'sweeps' / 'tiny' / k
    assert not (workdir / 'checkpoints').exists()    # restored, not trained again
    assert len(glob.glob(str(workdir / 'events.out.tfevents.*'))) == 1


def _smoke(name, tmp_path):
  directory = str(tmp_path / name)
  states = sweep.run_sweep(sweeps.load_sweep(os.path.join(ROOT, f'experiments/claims/{name}.py:smoke')),
                           directory)
  assert set(states.values()) == {'finished'}
  group_keys, groups, _ = report.summarize(directory)
  return directory, group_keys, groups


@pytest.mark.slow
def test_train_test_mode_analysis_runs_eval_in_both_modes(tmp_path):
  from experiments.claims import train_test_mode
  directory, group_keys, groups = _smoke('train_test_mode', tmp_path)
  analysis = train_test_mode.analyze(directory, group_keys, groups)
  assert set(analysis['gaps']['layer']) == set(train_test_mode.BATCH_SIZES)
  assert all(g == 0.0 for gs in analysis['gaps']['layer'].values() for g in gs)
  bn = json.load(open(os.path.join(directory, 'norm=batch', 'eval.json')))['rows']
  assert bn[1]['batch_size'] == 1 and bn[1]['loss'] != bn[0]['loss']   # BN: modes differ
  assert os.path.exists(analysis['plot'])


@pytest.mark.slow
def test_padding_analysis_shows_the_unmasked_batchnorm_seeing_the_padding(tmp_path):
  from experiments.claims import padding
  directory, group_keys, groups = _smoke('padding', tmp_path)
  analysis = padding.analyze(directory, group_keys, groups)
  mask_i = group_keys.index('model.norm_uses_mask')
  for key, errors in analysis['errors'].items():
    (e,) = errors
    if key[mask_i]:
      assert e['train_mode'] < 1e-5 and e['eval_mode'] < 1e-5
    else:
      assert e['train_mode'] > 1e-3
  assert os.path.exists(os.path.join(directory, group_keys and list(groups.values())[0][0]['name'],
                                     'padding_invariance.json'))


def test_blocks_are_ordered_from_input_to_output():
  from experiments.claims.common import blocks
  names = ['head', 'stage2_block1', 'stage1_block10', 'stage1_block9', 'stem_conv',
           'stage1_block1', 'loss']
  assert blocks(names) == ['stage1_block1', 'stage1_block9', 'stage1_block10', 'stage2_block1']


def test_cached_rows_computes_each_missing_row_once_and_keeps_the_others(tmp_path):
  """An init measurement interrupted after some rows resumes there; rows of other keys stay in
  the file but are not returned; a row without a key field matches nothing."""
  from experiments.claims.common import cached_rows
  path, made = str(tmp_path / 'rows.json'), []

  def make(depth, seed):
    made.append((depth, seed))
    return {'depth': depth, 'seed': seed, 'value': 10 * depth + seed}
  json.dump([{'depth': 2, 'seed': 0, 'value': -1}, {'depth': 9, 'seed': 0, 'value': 90},
             {'seed': 1, 'value': -2}], open(path, 'w'))
  want = [{'depth': 2, 'seed': s} for s in (0, 1)] + [{'depth': 6, 'seed': 1}]
  rows = cached_rows(path, want, make)
  assert made == [(2, 1), (6, 1)]
  assert [r['value'] for r in rows] == [-1, 21, 61]
  assert cached_rows(path, want, make) == rows and len(made) == 2
  assert len(json.load(open(path))) == 5


@pytest.mark.slow
def test_init_gradients_measure_and_verdict(tmp_path):
  """The init-only gradients claim on its smallest nets: the plain net without norm loses
  gradient toward the input against the residual BN net, the cache is reused, and the verdict
  states its numbers."""
  from experiments.claims import gradients
  small = dict(depths=[8, 20], norms=['batch', 'none'], seeds=[0, 1], data='digits')
  a = gradients.measure(str(tmp_path), **small)
  assert len(a['rows']) == 2 * 2 * 2 * 2
  assert a['cell'](20, False, 'none').mean() < a['cell'](20, True, 'batch').mean()
  again = gradients.measure(str(tmp_path), **small)
  assert again['rows'] == a['rows']
  verdict, reason = gradients.verdict(a)
  from experiments.stats import OUTCOMES
  assert verdict in OUTCOMES and 'plain without norm' in reason


@pytest.mark.slow
def test_skip_scalars_init_scale_sees_each_branch_start_at_zero(tmp_path, monkeypatch):
  """On the smoke nets: SkipInit's and Fixup's nets at init are the stem and the shortcuts only
  (the same last-block output), Fixup's zero head gives constant logits, and the branches of
  the no-norm net add to its output; the analysis reads the cache it wrote."""
  from experiments.claims import skip_scalars as ss
  full = ss.get_sweep
  monkeypatch.setattr(ss, 'get_sweep', lambda arg=None: full('smoke'))
  monkeypatch.setattr(ss, 'claim_seeds', lambda: [0])
  a = ss.analyze(str(tmp_path), None, None)['init']
  np.testing.assert_allclose(a[('SkipInit', 'features_rms')], a[('Fixup', 'features_rms')],
                             rtol=1e-6)
  assert a[('Fixup', 'logits_std')] == 0 < a[('SkipInit', 'logits_std')]
  assert a[('no norm', 'features_rms')] > 2 * a[('SkipInit', 'features_rms')]
  monkeypatch.setattr(ss, 'init_diagnostics', None)   # a second report measures nothing
  assert ss.analyze(str(tmp_path), None, None)['init'] == a


def test_lstm_target_excess_and_both_halves_of_the_verdict():
  """The target is the bigram entropy (checked against a count by hand); the EXCESS is the area
  of the logged curve above it (by hand); the verdict judges LN and recurrent BN separately,
  each at its own best lr, on five seeds; a best lr at the grid's edge gates it."""
  import collections
  import math
  from experiments.claims import lstm_norms
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 5, 2000)
  pairs = collections.Counter(zip(tokens[:-1], tokens[1:]))
  firsts = collections.Counter(tokens[:-1])
  n = len(tokens) - 1
  by_hand = -sum(c / n * math.log(c / firsts[a]) for (a, _), c in pairs.items())
  from experiments.claims import common
  assert common.bigram_entropy(tokens) == pytest.approx(by_hand, rel=1e-9)
  run = {'scalars': {'train/loss': [(20, 3.0), (40, 2.4), (60, 2.6)]}}
  assert lstm_norms.steps_to(run, 2.5, 1600) == 40 and lstm_norms.steps_to(run, 2.0, 1600) == 1600
  assert lstm_norms.excess(run, 2.5) == pytest.approx(20 * 0.5 + 0 + 20 * 0.1)

  def groups(cross):   # {(norm, lr): the step each of 5 seeds crosses the target at}
    out = {}
    for (norm, lr), ss in cross.items():
      out[(norm, lr)] = [{'state': 'finished', 'step': 800, 'train_loss': 2.0, 'test_loss': 2.1,
                          'scalars': {'train/loss': [(t, 3.0 if t < s else 2.0)
                                                     for t in range(20, 801, 20)]}}
                         for s in ss]
    return out
  keys = ['model.norm', 'optimizer.learning_rate']
  slow, fast = [400, 420, 380, 440, 360], [100, 120, 80, 140, 100]
  tight, tight2 = [100, 102, 98, 100, 104], [100, 100, 102, 98, 102]
  base = {(n, lr): [800] * 5 for n in lstm_norms.NORMS for lr in lstm_norms.LRS}
  cases = {'reproduced': {('none', 3e-3): slow, ('layer', 1e-2): fast, ('batch', 3e-3): fast},
           'partly': {('none', 3e-3): slow, ('layer', 1e-2): fast, ('batch', 3e-3): slow},
           'not reproduced': {('none', 1e-2): tight, ('layer', 1e-2): tight2,
                              ('batch', 3e-3): tight2},
           # the same means with the spread of `fast`: a 25 % difference is neither shown nor
           # ruled out
           'inconclusive (underpowered)': {('none', 1e-2): fast, ('layer', 1e-2): fast[::-1],
                                           ('batch', 3e-3): fast}}
  for expected, cells in cases.items():
    g = groups({**base, **cells})
    analysis = {'best': {}, 'cap': 1600.0, 'target': 2.5}
    for members in g.values():
      for r in members:
        r['log2_steps'] = math.log2(lstm_norms.steps_to(r, 2.5, 1600.0))
        r['log2_excess'] = math.log2(lstm_norms.excess(r, 2.5))
    for norm in lstm_norms.NORMS:   # the best lr: the least excess (as analyze picks it)
      analysis['best'][norm] = min(lstm_norms.LRS, key=lambda lr: np.mean(
          [r['log2_excess'] for r in g[(norm, lr)]]))
    verdict, reason = lstm_norms.verdict(keys, g, analysis)
    assert verdict == expected, reason
    assert 'LN' in reason and 'BN' in reason and 'test NLL' in reason
    assert not lstm_norms.gate(keys, g, analysis)
  # nothing reached the target anywhere, or a best lr at the edge: the gate makes it inconclusive
  g = groups(base)
  for members in g.values():
    for r in members:
      r['log2_steps'] = math.log2(1600.0)
  analysis = {'best': {n: 3e-3 for n in lstm_norms.NORMS}, 'cap': 1600.0, 'target': 2.5}
  assert lstm_norms.gate(keys, g, analysis)
  g = groups({**base, ('none', 3e-3): slow})
  for members in g.values():
    for r in members:
      r['log2_steps'] = math.log2(lstm_norms.steps_to(r, 2.5, 1600.0))
  analysis['best']['layer'] = max(lstm_norms.LRS)
  assert 'edge' in ' '.join(lstm_norms.gate(keys, g, analysis))


def test_warmup_map_verdict_and_gate():
  """The regime map's rule on constructed maps: the region where post-LN needs warm-up and
  pre-LN trains without it; pre-LN needing it too makes it partly; a map where every cell
  trains is inconclusive (the lr span reached no instability)."""
  from experiments.claims import warmup
  init = [{'depth': d, 'seed': s, 'log_ratio': 0.5 * d + 0.1 * s} for d in warmup.DEPTHS
          for s in range(3)]
  seeds = warmup.SEEDS
  def analysis(fails, partial=()):   # fails: the cells where no seed trains; partial: half do
    ok = {(p, d, lr, w): (0 if (p, d, lr, w) in fails else seeds // 2 if (p, d, lr, w) in partial
                          else seeds, seeds)
          for p in ('pre', 'post') for d in warmup.DEPTHS for lr in warmup.LRS for w in (0, 400)}
    return {'ok': ok, 'warm': 400, 'depths': warmup.DEPTHS, 'init': init, 'level': 2.9}
  post_needs = {('post', 12, 1e-2, 0), ('pre', 12, 1e-2, 0), ('pre', 12, 1e-2, 400),
                ('post', 12, 3e-3, 0)}
  a = analysis(post_needs)
  verdict, reason = warmup.verdict([], {}, a)
  assert verdict == 'reproduced' and 'depth 12 lr 0.003' in reason and 'rises' in reason
  # each cell's evidence: its seeds that train with and without, and Fisher's p (1/C(12, 6))
  assert f'depth 12 lr 0.01 (6/6 with, 0/6 without, p {1 / math.comb(12, 6):.4f})' in reason
  assert not warmup.gate([], {}, a)
  a = analysis(post_needs | {('pre', 6, 1e-2, 0)})
  assert warmup.verdict([], {}, a)[0] == 'partly'
  a = analysis({('post', 12, 1e-2, 0), ('post', 12, 1e-2, 400)})
  assert warmup.verdict([], {}, a)[0] == 'not reproduced'
  # 3/6 seeds train without warm-up, 6/6 with: Fisher p = 0.09, not enough
  a = analysis({('pre', 2, 1e-2, 0)}, partial={('post', 12, 1e-2, 0)})
  assert warmup.verdict([], {}, a)[0] == 'inconclusive (underpowered)'
  assert warmup.gate([], {}, analysis(set()))


def test_warmup_rule_under_no_difference_finds_a_need_at_most_alpha():
  """Each seed trains with the same probability with and without warm-up (0.5, where Fisher's
  test has most room; 0.9 and 0.1 near the edges): the rule's "post-LN needs warm-up somewhere"
  (Fisher per cell, Holm over the 15) fires in at most alpha of the maps (measured: 0.55 % at
  0.5 over 2000 maps); uncorrected, any cell at p < 0.05 would fire in several times alpha."""
  from experiments.claims import warmup
  rng = np.random.default_rng(5)
  seeds, trials = warmup.SEEDS, 200
  for q in (0.1, 0.5, 0.9):
    fired = raw = 0
    for _ in range(trials):
      ok = {('post', d, lr, w): (int(rng.binomial(seeds, q)), seeds) for d in warmup.DEPTHS
            for lr in warmup.LRS for w in (0, 400)}
      analysis = {'ok': ok, 'warm': 400, 'depths': warmup.DEPTHS}
      fired += bool(warmup.needs(analysis, 'post')[0])
      raw += any(warmup.fisher(analysis, 'post', d, lr) < 0.05 for d in warmup.DEPTHS
                 for lr in warmup.LRS)
    assert fired / trials <= 0.05, (q, fired / trials)
    if q == 0.5:
      assert raw / trials > 0.15, raw / trials


def test_a_sweep_with_runs_still_to_come_gets_no_verdict():
  """warmup's rule counts the seeds of a cell that train: a run not yet trained would count as
  one that did not, so a partial sweep gave "not reproduced". Any run that has not ended
  (pending, running, interrupted) withholds the verdict, whatever the rule says; diverged and
  failed runs have ended."""
  from experiments import findings
  runs = [{'state': s} for s in ('finished', 'diverged', 'failed')]
  assert findings.unended(runs, 'not reproduced', 'why') == ('not reproduced', 'why')
  for state in ('pending', 'running', 'interrupted'):
    verdict, reason = findings.unended(runs + [{'state': state}], 'not reproduced', 'why')
    assert verdict == findings.INCOMPLETE and verdict not in findings.OUTCOMES
    assert reason.startswith('1 of 4 runs have not ended') and reason.endswith(
        'would say "not reproduced": why')

def test_skip_scalars_verdict_follows_its_rule_clause_by_clause():
  """At BatchNorm's lr, with the no-norm net failing: both scalars' nets train -> reproduced;
  one -> partly; both fail -> not reproduced; one open, one failing -> underpowered (the
  no-norm net failing by itself reproduces nothing); anything else -> underpowered. The gate
  asks for the no-norm net's failure."""
  from experiments.claims import skip_scalars as ss
  from experiments.stats import NOT_REPRODUCED, PARTLY, REPRODUCED, UNDERPOWERED
  keys = [*ss.ARMS, 'optimizer.learning_rate']
  def groups(cells):   # {(arm, lr): mean final loss, or 'diverged'}; 5 seeds
    out = {}
    for i, name in enumerate(ss.NAMES):
      for lr in ss.LRS:
        v = cells.get((name, lr), 0.1 if name == 'BatchNorm' else 'diverged')
        out[(*(ss.ARMS[k][i] for k in ss.ARMS), lr)] = [
            {'state': 'diverged'} if v == 'diverged' else
            {'state': 'finished', 'train_loss': v + d} for d in (-0.02, 0.0, 0.02, 0.01, -0.01)]
    return out
  at = lambda skip, fixup: groups({('SkipInit', 0.1): skip, ('Fixup', 0.1): fixup})
  assert ss.verdict(keys, at(0.1, 0.1))[0] == REPRODUCED
  assert ss.verdict(keys, at(0.1, 2.3))[0] == PARTLY
  assert ss.verdict(keys, at(2.3, 'diverged'))[0] == NOT_REPRODUCED
  assert ss.verdict(keys, at(ss.TRAINS, 2.3))[0] == UNDERPOWERED
  assert not ss.gate(keys, at(0.1, 0.1))
  trained = groups({('no norm', 0.1): 0.1})
  assert ss.verdict(keys, trained)[0] == UNDERPOWERED   # "else", as the rule words it
  assert 'no-norm residual net does not fail' in ss.gate(keys, trained)[0]


def test_depth_verdict_takes_each_plain_net_at_its_best_lr_and_gates_convergence():
  from experiments.claims import depth
  keys = ['model.depth', 'model.residual', 'optimizer.learning_rate']
  flat = {'train/loss': [(s, 0.5) for s in range(50, 4001, 50)]}
  falling = {'train/loss': [(s, 4000 / s) for s in range(50, 4001, 50)]}
  def groups(losses, accuracy=None):   # {(depth, residual, lr): mean final train loss}; 5 seeds
    accuracy = accuracy or {}
    return {k: [{'state': 'finished', 'train_loss': v + d, 'train_set_error': v / 10,
                 'test_accuracy': accuracy.get(k, 0.95 if k[1] else 0.90) + d,
                 'scalars': flat} for d in (-0.002, 0.0, 0.002, 0.001, -0.001)]
            for k, v in losses.items()}
  base = {}
  for i, d in enumerate(depth.DEPTHS):
    base.update({(d, True, 0.1): 0.01 + 0.0005 * i, (d, False, 0.1): 0.02 + 0.1 * i,
                 (d, False, 0.01): 0.03 + 0.06 * i})
  verdict, reason = depth.verdict(keys, groups(base), {})
  assert verdict == 'reproduced', reason
  assert 'best lr: 0.1 at 20, 0.01 at 32, 0.01 at 44, 0.01 at 56' in reason
  # plain-56 bad at lr 0.1 only: a learning-rate effect, not a handicap of depth
  no_handicap = {**base, **{(d, False, 0.01): 0.021 for d in depth.DEPTHS}}
  verdict, reason = depth.verdict(keys, groups(no_handicap), {})
  assert verdict == 'not reproduced' and 'plain at lr 0.1 alone: plain-20 below plain-56' in reason
  assert depth.verdict(keys, groups({**base, (56, True, 0.1): 0.2}), {})[0] == 'partly'
  # residual no better on the test set than plain: partly
  same = {(56, True, 0.1): 0.90}
  assert depth.verdict(keys, groups(base, same), {})[0] == 'partly'
  # the plain net degrades but neither residual part holds: that alone reproduces nothing
  verdict, reason = depth.verdict(keys, groups({**base, (56, True, 0.1): 0.2}, same), {})
  assert verdict == 'inconclusive (underpowered)' and 'the plain net degrades, but' in reason
  assert not depth.gate(keys, groups(base), {})
  unconverged = groups(base)
  for r in unconverged[(56, True, 0.1)]:
    r['scalars'] = falling
  assert 'residual-56 did not converge' in depth.gate(keys, unconverged, {})[0]


def test_ln_generalization_reads_the_test_accuracy_at_the_matched_step():
  from experiments.claims import ln_generalization as g
  run = {'scalars': {'train/loss': [(10, 0.3), (20, 0.06), (30, 0.04), (40, 0.01)],
                     'eval/accuracy': [(10, 0.5), (20, 0.8), (30, 0.85), (40, 0.9)]}}
  assert g.at_match(run, 0.05) == (30, 0.85)
  assert g.at_match(run, 0.001) is None
  keys = ['model.norm']
  deltas = 0.002 * np.array([-2, 0, 1, 2, -1, 1, -1, 0, 2, -2])
  def groups(ln_acc, spread=1.0):   # ln_acc: LN's accuracy at each level (or one for all)
    ln_acc = ln_acc if isinstance(ln_acc, tuple) else (ln_acc,) * len(g.MATCHES)
    return {(n,): [{'state': 'finished', 'test_accuracy': 0.9, **{
        f'match_accuracy@{lv:g}': (a if n == 'layer' else 0.80) + spread * d
        for lv, a in zip(g.MATCHES, ln_acc)}, **{f'match_step@{lv:g}': 100 for lv in g.MATCHES}}
        for d in deltas] for n in g.NORMS}
  assert g.verdict(keys, groups(0.85), {})[0] == 'reproduced'
  assert g.verdict(keys, groups(0.805), {})[0] == 'not reproduced'   # below the minimum effect
  assert g.verdict(keys, groups((0.85, 0.80, 0.80)), {})[0] == 'partly'
  # +0.8 points with a spread like the sweep before's: neither shown nor ruled out
  assert g.verdict(keys, groups(0.808, spread=5.0), {})[0] == 'inconclusive (underpowered)'
  assert not g.gate(keys, groups(0.85), {})


def test_batch_size_reads_every_arm_at_its_validation_best_lr():
  """Each arm (BN at each group size, GN, LN) at the lr with its best validation accuracy, not
  its best test accuracy: GN and LN at lr 0.1 score best on the test set and worst on
  validation, and are read at 0.05; a best lr at the grid's edge gates the verdict."""
  from experiments.claims import batch_size as b
  keys = ['model.norm', 'model.bn_scope', 'model.bn_ghost_size', 'optimizer.learning_rate']
  def runs(test, val):
    return [{'state': 'finished', 'test_accuracy': test + d, 'val_accuracy': val + d,
             'train_mode_accuracy': test} for d in (-0.003, 0, 0.003, 0.001, -0.001)]
  groups = {}
  for norm, scope, size in zip(*b.ARMS.values()):
    top = {2: 0.70, 4: 0.75, 8: 0.80, 16: 0.85, 0: 0.90}[size] if norm == 'batch' else 0.88
    for lr in b.LRS:
      if lr == 0.05:
        test, val = top, top
      elif norm != 'batch' and lr == 0.1:
        test, val = 0.99, 0.40      # a test-set optimum that validation does not pick
      else:
        test, val = 0.50, 0.50
      groups[(norm, scope, size, lr)] = runs(test, val)
  best = b.best_lrs(keys, groups)
  assert best == {**{f'BN@{g}': 0.05 for g in b.GROUPS}, 'group': 0.05, 'layer': 0.05}
  analysis = {'best': best}
  verdict, reason = b.verdict(keys, groups, analysis)
  assert verdict == 'reproduced' and 'group above BN@2 by 0.1800' in reason, reason
  assert not b.gate(keys, groups, analysis)
  assert 'edge' in ' '.join(b.gate(keys, groups, {'best': {**best, 'group': b.grid('group')[-1]}}))


def test_batch_size_extends_one_arms_grid_without_renaming_the_runs_it_has(monkeypatch):
  """An lr added to one arm (as the edge gate asks) adds that arm's runs only, keeps every
  other run's name, and that arm's edge is read on its own grid; the validation table shows
  each arm's lrs with its best in bold and '–' where it did not run."""
  from experiments.claims import batch_size as b
  monkeypatch.setattr(b, 'EXTENDED', {})
  before = {r.name for r in b.get_sweep().runs()}
  monkeypatch.setattr(b, 'EXTENDED', {'BN@2': [0.2]})
  after = {r.name: r for r in b.get_sweep().runs()}
  added = set(after) - before
  assert before <= set(after) and len(added) == 5
  assert all(after[n].overrides['model.bn_ghost_size'] == 2 and
             after[n].overrides['optimizer.learning_rate'] == 0.2 for n in added)
  keys = ['model.norm', 'model.bn_scope', 'model.bn_ghost_size', 'optimizer.learning_rate']
  groups = {}
  for norm, scope, size in zip(*b.ARMS.values()):
    arm = f'BN@{size or 64}' if norm == 'batch' else norm
    for lr in b.grid(arm):
      groups[(norm, scope, size, lr)] = [{'state': 'finished', 'val_accuracy': v,
                                          'test_accuracy': 0.9} for v in (lr, lr + 0.01)]
  table, best = b.validation_by_lr(keys, groups)
  assert best['BN@2'] == 0.2 and best['layer'] == 0.1
  assert table[0] == '| arm | lr 0.02 | lr 0.05 | lr 0.1 | lr 0.2 |'
  assert table[2] == '| BN@2 | 0.0250 | 0.0550 | 0.1050 | **0.2050** |'
  assert table[3] == '| BN@4 | 0.0250 | 0.0550 | **0.1050** | – |'
  edges = b.gate(keys, groups, {'best': {'BN@2': 0.1, 'BN@4': 0.1, 'BN@64': 0.05}})
  assert len(edges) == 1 and edges[0].startswith('BN@4')   # 0.1 is inside BN@2's grid now
  assert b.gate(keys, groups, {'best': {'BN@2': 0.2, 'BN@64': 0.05}})[0].startswith('BN@2')


def test_ln_cnn_reads_each_norm_at_its_validation_best_lr():
  from experiments.claims import ln_cnn
  keys = ['model.norm', 'optimizer.learning_rate']
  def runs(test, val):
    return [{'state': 'finished', 'test_accuracy': test + d, 'val_accuracy': val + d,
             'test_loss': 0.5} for d in (-0.003, 0, 0.003)]
  # LN's test accuracy is highest at lr 0.1, but its validation accuracy picks 0.01
  groups = {(n, lr): runs(0.9 if n == 'batch' else 0.8, 0.5) for n in ln_cnn.NORMS
            for lr in ln_cnn.LRS}
  groups[('layer', 0.1)] = runs(0.95, 0.6)
  analysis = {'best': {n: 0.01 for n in ln_cnn.NORMS}}
  analysis['best']['layer'] = 0.1
  assert ln_cnn.verdict(keys, groups, analysis)[0] == 'not reproduced'
  analysis['best']['layer'] = 0.01
  verdict, reason = ln_cnn.verdict(keys, groups, analysis)
  assert verdict == 'reproduced' and 'BN above LN by 0.1000' in reason


def test_ln_cnn_reads_each_norms_grid_edge_on_its_own_grid():
  """The extended grid: BN runs up to 0.3, LN down to 0.001; GN and none keep 0.01-0.1."""
  from experiments.claims import ln_cnn
  runs = lambda: [{'state': 'finished', 'test_accuracy': 0.9}]
  groups = {(n, lr): runs() for n in ln_cnn.NORMS for lr in ln_cnn.grid(n)}
  assert sorted(lr for n, lr in groups if n == 'batch') == [0.01, 0.03, 0.1, 0.3]
  assert sorted(lr for n, lr in groups if n == 'layer') == [0.001, 0.003, 0.01, 0.03, 0.1]
  keys = ['model.norm', 'optimizer.learning_rate']
  gate = lambda b, l: ln_cnn.gate(keys, groups, {'best': {'batch': b, 'layer': l}})
  assert gate(0.1, 0.01) == []          # both inside their own grids now
  assert [e.split("'")[0] for e in gate(0.3, 0.001)] == ['batch', 'layer']
  assert gate(0.03, 0.1) and 'layer' in gate(0.03, 0.1)[0]   # LN's top is still 0.1


def test_bn_length_delta_and_verdict():
  from experiments.claims import bn_length
  assert bn_length.delta(np.arange(128.0)) == pytest.approx(111.5 - 23.5)
  keys = ['model.norm']
  def groups(bn, ln, none, reuse=0.0):   # reuse: BN's DELTA with the last trained statistics
    out = {(n,): [{'state': 'finished', 'delta': v + d, 'delta_train_mode': 0.0}
                  for d in (-0.01, 0, 0.01, 0.02, -0.02)]
           for n, v in (('batch', bn), ('layer', ln), ('none', none))}
    for r in out[('batch',)]:
      r['delta_reuse'] = reuse + r['delta'] - bn
    return out
  assert bn_length.verdict(keys, groups(0.5, 0.0, 0.1), {})[0] == 'reproduced'
  assert bn_length.verdict(keys, groups(0.5, 0.0, 0.45), {})[0] == 'partly'
  # the excess is there, but reusing the last statistics does not remove it: partly
  assert bn_length.verdict(keys, groups(0.5, 0.0, 0.1, reuse=0.48), {})[0] == 'partly'
  assert bn_length.verdict(keys, groups(0.05, 0.0, 0.0, 0.05), {})[0] == 'not reproduced'


def test_reuse_last_copies_the_last_trained_row_into_every_later_one():
  import jax.numpy as jnp
  from experiments.claims import bn_length
  stats = {'bn': {'mean': jnp.arange(12.0).reshape(6, 2), 'steps': jnp.asarray(3)},
           'other': jnp.ones((4, 2))}
  out = bn_length.reuse_last(stats, positions=6, trained=2)
  np.testing.assert_array_equal(out['bn']['mean'], [[0, 1], [2, 3]] + [[2, 3]] * 4)
  np.testing.assert_array_equal(out['other'], stats['other'])     # not per-position: kept
  assert int(out['bn']['steps']) == 3


@pytest.mark.slow
def test_bn_length_position_loss_agrees_with_the_evaluation_loop(tmp_path):
  """Per-position losses of a trained LM, averaged over positions (every window is full), equal
  the eval loop's loss on the same long windows (tasks.language_model through the eval step)."""
  import data as data_lib
  from experiments.claims import bn_length
  from training import evaluation
  directory, group_keys, groups = _smoke('bn_length', tmp_path)
  workdir = os.path.join(directory, 'norm=batch')
  losses = bn_length.position_loss(workdir)
  exp, state, _ = evaluation.load_run(workdir)
  data_config = exp.config.data.copy_and_resolve_references()
  data_config.seq_length = bn_length.TEST_FACTOR * exp.config.data.seq_length
  test = data_lib.load_dataset(data_config).test
  loop = evaluation.evaluate(evaluation.compile_steps(exp), evaluation.variables(state), test, 8)
  assert len(losses['eval']) == data_config.seq_length
  assert np.mean(losses['eval']) == pytest.approx(loop['loss'], rel=1e-5)
  assert losses['train'] and np.mean(losses['train']) != pytest.approx(loop['loss'], rel=1e-5)
  # the last trained statistics change nothing within the training length, and after it
  t = exp.config.data.seq_length
  np.testing.assert_allclose(losses['reuse'][:t], losses['eval'][:t], rtol=1e-6)
  assert not np.allclose(losses['reuse'][t:], losses['eval'][t:])


def test_layer_scale_spread_over_the_blocks_in_order():
  from experiments.claims import layer_scale
  run = {'scalars': {'act_rms/stage1_block10': [(0, 100.0), (9, 1.0)],
                     'act_rms/stage1_block2': [(0, 1.0), (9, 1.0)],
                     'act_rms/stem_conv': [(0, 1e6), (9, 1e6)],   # not a block
                     'act_rms/stage2_block1': [(0, 10.0), (9, 2.0)]}}
  by_step = layer_scale.block_values(run, 'act_rms')
  np.testing.assert_array_equal(by_step[0], [1.0, 100.0, 10.0])   # block2, block10, stage2
  assert layer_scale.spread(by_step[0]) == pytest.approx(2.0)
  assert layer_scale.spread(by_step[9]) == pytest.approx(np.log10(2.0))


def test_train_test_mode_verdict_needs_exact_identity_and_a_tested_bn_gap():
  """Every norm of the registry without running averages must give identical accuracy in both
  modes (one image of difference is a bug, not noise); BN's batch-1 gap must reach 5 points
  with a one-sided t-test."""
  from experiments.claims import train_test_mode as t
  from models import norms
  sizes = t.BATCH_SIZES
  def gaps(bn, other=0.0):
    out = {n: {b: [other] * 3 for b in sizes} for n in norms.NORMS
           if not norms.NORMS[n].running_stats}
    out['batch'] = {b: [bn - 0.01, bn, bn + 0.01] for b in sizes}
    return {'gaps': out}
  assert t.verdict([], {}, gaps(-0.2))[0] == 'reproduced'
  assert t.verdict([], {}, gaps(-0.2, other=1 / 360))[0] == 'partly'
  assert t.verdict([], {}, gaps(-0.03))[0] == 'partly'            # below the minimum effect
  assert t.verdict([], {}, gaps(-0.03, other=1 / 360))[0] == 'not reproduced'


def test_collectives_verdict():
  from experiments.claims import collectives
  def table(bn, ln):
    row = lambda norm, n, extra: {'norm': norm, 'all-reduce': n, 'other': 0, 'extra_bytes': extra}
    return {'config': 'c.py', 'rows': [row('batch:global', *bn), row('batch:per_device', 1, 8),
                                       row('layer', *ln), row('none', 1, 8)]}
  assert collectives.verdict({'tables': [table((39, 8000), (1, 8))]})[0] == 'reproduced'
  assert collectives.verdict({'tables': [table((39, 8000), (3, 64))]})[0] == 'partly'
  assert collectives.verdict({'tables': [table((1, 8), (3, 64))]})[0] == 'not reproduced'


def test_nf_resnet_reads_each_arm_and_batch_at_its_best_lr_and_gates_on_the_init_schedule():
  from experiments.claims import nf_resnet as nf
  keys = ['data.batch_size', 'optimizer.learning_rate', 'model.norm']
  acc = {('batch', 64): 0.90, ('batch', 2): 0.70, ('none', 64): 0.895, ('none', 2): 0.89}
  groups = {}
  for (norm, b), a in acc.items():
    for s in nf.SCALES:   # the middle scale is every cell's best, on validation and test
      top = s == 0.1
      groups[(b, s * b / 128, norm)] = [
          {'state': 'finished', 'test_accuracy': (a if top else 0.3) + d,
           'val_accuracy': (a if top else 0.3) + d} for d in (-0.002, 0, 0.002, 0.001, -0.001)]
  best = {cell: 0.1 for cell in acc}
  good = {'best': best, 'signal': [('stage1_block1', 1.0, 1.04)]}
  assert nf.verdict(keys, groups, good)[0] == 'reproduced'
  assert not nf.gate(keys, groups, good)
  bad = {**good, 'signal': [('stage1_block1', 0.085, 1.04)]}
  assert 'not within 25%' in nf.gate(keys, groups, bad)[0]
  assert 'edge' in ' '.join(nf.gate(keys, groups, {**good, 'best': {**best, ('none', 2): 0.2}}))
