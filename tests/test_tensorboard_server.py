"""End to end with the real viewer: a `tensorboard` server over a tiny sweep shows every run's
scalars and the HParams sessions with their hparams and final metrics (read over HTTP)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from experiments import sweep, sweeps


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def get(url, body=None):
  data = None if body is None else json.dumps(body).encode()
  req = urllib.request.Request(url, data=data, headers={'Content-Type': 'application/json'})
  with urllib.request.urlopen(req, timeout=30) as r:
    return json.loads(r.read())


@pytest.fixture
def server(tmp_path):
  directory = str(tmp_path / 'sweep')
  runs = sweeps.load_sweep('experiments/smoke.py:10')
  sweep.run_sweep(runs, directory)
  port = free_port()
  tensorboard = os.path.join(os.path.dirname(sys.executable), 'tensorboard')
  proc = subprocess.Popen([tensorboard, '--logdir', directory, '--port', str(port),
                           '--host', '127.0.0.1'], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  url = f'http://127.0.0.1:{port}'
  try:
    t0 = time.time()
    while True:
      try:
        if len(get(f'{url}/data/runs')) == 8:
          break
      except OSError:
        pass
      assert proc.poll() is None, proc.stderr.read()
      assert time.time() - t0 < 90, 'tensorboard did not come up with 8 runs'
      time.sleep(0.5)
    yield url, directory, runs.runs()
  finally:
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_tensorboard_serves_scalars_and_hparams_of_every_run(server):
  url, directory, runs = server
  names = {r.name for r in runs}
  assert set(get(f'{url}/data/runs')) == names
  tags = get(f'{url}/data/plugin/scalars/tags')
  for name in names:
    assert {'train/loss', 'eval/accuracy', 'eval/loss', 'train/steps_per_sec'} <= set(tags[name])
    points = get(f'{url}/data/plugin/scalars/scalars?run={urllib.parse.quote(name)}'
                 '&tag=train/loss')
    assert [p[1] for p in points] == [5, 10]

  experiment = get(f'{url}/data/plugin/hparams/experiment', {'experimentName': ''})
  assert {h['name'] for h in experiment['hparamInfos']} == {'model.norm', 'model.residual', 'seed'}
  assert {m['name']['tag'] for m in experiment['metricInfos']} == {
      'eval/accuracy', 'eval/loss', 'train/loss'}
  groups = get(f'{url}/data/plugin/hparams/session_groups', {
      'experimentName': '', 'startIndex': 0, 'sliceSize': 100, 'colParams': [],
      'allowedStatuses': ['STATUS_UNKNOWN', 'STATUS_SUCCESS', 'STATUS_FAILURE',
                          'STATUS_RUNNING']})['sessionGroups']
  sessions = {s['name']: (g['hparams'], s) for g in groups for s in g['sessions']}
  assert set(sessions) == names
  for run in runs:
    hparams, session = sessions[run.name]
    assert hparams['model.norm'] == run.overrides['model.norm']
    assert hparams['model.residual'] == run.overrides['model.residual']
    assert session['status'] == 'STATUS_SUCCESS'
    status = json.load(open(os.path.join(directory, run.name, 'status.json')))
    accuracy = [m for m in session['metricValues'] if m['name']['tag'] == 'eval/accuracy'][0]
    assert accuracy['trainingStep'] == 10
    assert abs(accuracy['value'] - status['metrics']['accuracy']) < 1e-6
