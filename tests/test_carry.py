"""Claim sweeps carried over sessions (experiments/carry.py): a kept run comes back as it was,
with its files' times, without checkpoints; nothing unfinished, stale or already present moves."""

import json
import os
import subprocess

from configs import default
from experiments import carry
from training import workdir as wd


def _run(directory, name, state, config, start, end):
  path = os.path.join(directory, name)
  os.makedirs(os.path.join(path, 'checkpoints', '10'))
  open(os.path.join(path, 'checkpoints', '10', 'params'), 'w').write('x' * 1000)
  json.dump(config, open(os.path.join(path, wd.CONFIG_FILE), 'w'))
  json.dump({'state': state, 'step': 10}, open(os.path.join(path, wd.STATUS_FILE), 'w'))
  json.dump({'rows': [{'accuracy': 0.5}]}, open(os.path.join(path, 'eval_test.json'), 'w'))
  os.utime(os.path.join(path, wd.CONFIG_FILE), (start, start))
  for f in (wd.STATUS_FILE, 'eval_test.json'):
    os.utime(os.path.join(path, f), (end, end))
  return path


def test_kept_runs_come_back_with_their_times_and_nothing_else_moves(tmp_path):
  config = wd.config_to_dict(default.get_config())
  other = json.loads(json.dumps(config))
  other['model']['depth'] = 56
  sweep = tmp_path / 'sweep'
  _run(sweep, 'a', 'finished', config, 1000.0, 1060.0)
  _run(sweep, 'b', 'diverged', config, 1060.0, 1070.0)
  _run(sweep, 'c', 'interrupted', config, 1070.0, 1080.0)   # not final: trained again
  _run(sweep, 'd', 'finished', other, 1080.0, 1090.0)
  (sweep / 'report.md').write_text('the sweep\'s report sits beside its runs')
  store = tmp_path / 'store'
  assert carry.keep(str(sweep), str(store)) == ['a', 'b', 'd']
  assert not os.path.exists(store / 'a' / 'checkpoints')
  assert json.load(open(store / 'a' / 'eval_test.json')) == {'rows': [{'accuracy': 0.5}]}

  fresh = tmp_path / 'fresh'          # another session: its sweep has a, b, c, d and e
  _run(fresh, 'b', 'running', config, 2000.0, 2001.0)   # a workdir there is never replaced
  now = {n: config for n in 'abcde'}   # d was trained with depth 56; the sweep now says 20
  restored, stale = carry.restore(str(store), str(fresh), now)
  assert restored == ['a'] and stale == ['d']
  assert sorted(os.listdir(fresh)) == ['a', 'b']
  a = fresh / 'a'
  assert os.path.getmtime(a / wd.CONFIG_FILE) == 1000.0
  assert os.path.getmtime(a / wd.STATUS_FILE) == 1060.0
  assert sorted(os.listdir(a)) == [wd.CONFIG_FILE, 'eval_test.json', wd.STATUS_FILE]
  assert wd.read_status(str(fresh / 'b'))['state'] == 'running'
  # a run the sweep no longer has stays in the store; an empty store restores nothing
  assert carry.restore(str(store), str(fresh), {'e': config}) == ([], [])
  assert carry.restore(str(tmp_path / 'none'), str(fresh), now) == ([], [])


def test_wall_time_counts_the_union_of_the_runs_spans(tmp_path):
  """Sessions apart and shards side by side: the time some run was live, not first to last."""
  from experiments import findings
  config = wd.config_to_dict(default.get_config())
  spans = {'a': (0, 60), 'b': (30, 90), 'c': (10_000, 10_060)}   # a, b overlap; c a day later
  for name, (start, end) in spans.items():
    _run(tmp_path, name, 'finished', config, start, end)
  runs = [{'name': n} for n in spans] + [{'name': 'never_started'}]
  assert findings.wall_minutes(str(tmp_path), runs) == 150 / 60


def test_the_store_is_not_ignored_by_git():
  """A kept run reaches the next session only through git: no ignore rule may cover its files
  (the store's first name, results/runs/, fell under .gitignore's runs/)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = os.path.join(carry.STORE, 'claim', 'norm=layer,seed=0')
  files = [os.path.join(run, f) for f in (wd.CONFIG_FILE, wd.STATUS_FILE, carry.TIMES_FILE,
                                          'eval_test.json', 'events.out.tfevents.1.vm.2.3')]
  ignored = subprocess.run(['git', 'check-ignore', '--no-index', *files], cwd=root,
                           capture_output=True, text=True)
  assert ignored.returncode == 1 and not ignored.stdout, ignored.stdout
