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
