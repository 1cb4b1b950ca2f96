"""Every claim sweep expands and validates at full size, and its smoke version (2 runs of a few
steps) trains and reports, so the sweeps never rot."""

import glob
import os

import pytest

from experiments import report, sweep, sweeps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLAIMS = sorted(p for p in glob.glob(os.path.join(ROOT, 'experiments', 'claims', '*.py'))
                if not os.path.basename(p).startswith(('__', 'common')))


@pytest.mark.slow
@pytest.mark.parametrize("path", CLAIMS, ids=os.path.basename)
def test_claim_sweep_is_valid_and_its_smoke_version_runs(path, tmp_path):
  full = sweeps.load_sweep(path)
  runs = full.runs()
  assert len(runs) >= 6 and {r.overrides['seed'] for r in runs} == {0, 1, 2}
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
  monkeypatch.setattr('sys.argv', ['findings', f'--sweeps={tmp_path / "sweeps"}', f'--out={out}'])
  findings.main()
  text = out.read_text()
  assert '## depth' in text and '**Verdict:' in text and (tmp_path / 'depth_train_loss.png').exists()
  depth_part = text.split('## depth')[1].split('## ')[0]
  assert '| 8 | True |' in depth_part and '| 8 | False |' in depth_part
  assert 'Not run yet' in text.split('## batch_size')[1].split('## ')[0]
