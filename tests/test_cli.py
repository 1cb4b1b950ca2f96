"""The command line: bad input exits non-zero with one clear line and writes nothing."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import data
from configs import default
from models import norms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.model.depth=8', '--config.model.width=8', '--config.data.batch_size=32',
        '--config.num_train_steps=4', '--config.log_every_steps=2', '--config.eval_every_steps=2',
        '--config.checkpoint_every_steps=2']


def run(script, *args):
  return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def train(workdir, *overrides):
  return run('train.py', '--config=configs/default.py', f'--workdir={workdir}', *TINY, *overrides)


def tree_hashes(path):
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, 'rb') as f:
        out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.mark.parametrize('override,expected', [
    ('--config.model.norm=batchnorm', ', '.join(norms.NORMS)),   # every registered norm
    ('--config.model.name=vgg', 'resnet, resnet_imagenet'),
    ('--config.data.name=imagenet', ', '.join(data.DATASETS)),   # every registered dataset
    ('--config.optimizer.name=lamb', 'sgd, adam, adamw'),
    ('--config.optimizer.schedule=linear', 'constant, cosine, piecewise'),
    ('--config.model.depth=21', '6n+2'),
    ('--config.model.nrom=layer',   # every key of the model config, in order
     'config.model has ' + ', '.join(sorted(default.get_config().model))),
    ('--config.model.depth=abc', "invalid literal for int() with base 10: 'abc'"),
    ('--config.data.batch_size=0', 'data.batch_size must be > 0; got 0'),
    ('--config.optimizer.warmup_steps=-1', 'optimizer.warmup_steps must be >= 0; got -1'),
])
def test_bad_input_exits_nonzero_with_choices_and_writes_nothing(tmp_path, override, expected):
  workdir = tmp_path / 'run'
  result = train(workdir, override)
  assert result.returncode != 0
  assert expected in result.stderr
  assert result.stderr.strip().startswith('error:') and 'Traceback' not in result.stderr
  assert not workdir.exists()


@pytest.mark.slow   # three subprocess runs (140 s); CI runs it
def test_end_to_end_then_different_config_refused_and_eval_table(tmp_path):
  workdir = tmp_path / 'run'
  first = train(workdir)
  assert first.returncode == 0, first.stderr
  assert 'final test accuracy' in first.stdout
  before = tree_hashes(workdir)

  refused = train(workdir, '--config.model.norm=layer', '--config.seed=3')
  assert refused.returncode != 0
  assert "model.norm: 'batch' -> 'layer'" in refused.stderr and 'seed: 0 -> 3' in refused.stderr
  assert tree_hashes(workdir) == before  # nothing in the workdir changed

  again = train(workdir)  # the same config on a finished run: reported, not retrained
  assert again.returncode == 0 and 'already finished' in again.stdout
  assert tree_hashes(workdir) == before

  evaluated = run('eval.py', f'--workdir={workdir}', '--batch_sizes=1,8', '--max_examples=40')
  assert evaluated.returncode == 0, evaluated.stderr
  assert 'eval (running averages)' in evaluated.stdout
  assert evaluated.stdout.count('train (batch statistics)') == 2
  assert (workdir / 'eval.json').exists()

  # --split=train: the training loss in eval mode, against the model applied here and a
  # cross-entropy in numpy
  on_train = run('eval.py', f'--workdir={workdir}', '--batch_sizes=8', '--max_examples=40',
                 '--split=train')
  assert on_train.returncode == 0 and 'train split' in on_train.stdout, on_train.stderr
  result = json.load(open(workdir / 'eval_train.json'))
  from training import evaluation
  exp, state, _ = evaluation.load_run(str(workdir))
  batch = exp.dataset.train.get(np.arange(40))
  logits = np.asarray(exp.model.apply(evaluation.variables(state), batch['inputs'], train=False),
                      np.float64)
  logp = logits - logits.max(1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(1, keepdims=True))
  nll = -logp[np.arange(40), batch['targets']].mean()
  assert result['split'] == 'train' and result['rows'][0]['loss'] == pytest.approx(nll, rel=1e-4)
  bad = run('eval.py', f'--workdir={workdir}', '--split=valid')
  assert bad.returncode != 0 and 'test' in bad.stderr and 'train' in bad.stderr


def test_workdir_with_foreign_files_is_refused(tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  result = train(tmp_path)
  assert result.returncode != 0 and 'not empty' in result.stderr
  assert os.listdir(tmp_path) == ['notes.txt']


def test_eval_of_missing_workdir_is_one_line(tmp_path):
  result = run('eval.py', f'--workdir={tmp_path / "nothing"}')
  assert result.returncode != 0 and 'holds no run' in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('config,cause', [
    ('configs/default.py:abc', "invalid literal for int() with base 10: 'abc'"),
    ('{raising}', 'ValueError: the cause, at the end of a traceback'),
    ('{missing}', 'No such file or directory'),
])
def test_a_config_that_cannot_load_is_one_line_with_its_cause(tmp_path, config, cause):
  raising = tmp_path / 'raising.py'
  raising.write_text('def get_config():\n'
                     '  raise ValueError("the cause, at the end of a traceback")\n')
  config = config.format(raising=raising, missing=tmp_path / 'missing.py')
  for result in (run('train.py', f'--config={config}', f'--workdir={tmp_path / "run"}'),
                 run('-m', 'experiments.comm', f'--config={config}', '--devices=1')):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:') and cause in lines[0], lines
  assert not (tmp_path / 'run').exists()
