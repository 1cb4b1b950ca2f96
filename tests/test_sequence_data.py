"""Sequence data: mnist1d generated offline and deterministically, variable lengths as a pure
function of (seed, index), text datasets (offline and TFDS mock), and every sequence config
learning on tiny data."""

import random

import jax
import numpy as np
import pytest

import data as data_lib
from configs import lstm_lm, lstm_mnist1d, transformer_lm, transformer_mnist1d
from data import pipeline, sequences, text
from errors import ConfigError
from training import experiment, tasks
from training.step import compile_steps


def data_config(name, **kw):
  cfg = lstm_mnist1d.get_config().data
  cfg.unlock()
  cfg.update(dict(name=name, **kw))
  return cfg


def test_mnist1d_is_deterministic_cached_and_leaves_global_rngs_alone(tmp_path):
  np.random.seed(123)
  random.seed(7)
  np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
  a = sequences._mnist1d_arrays(str(tmp_path / 'a'))
  b = sequences._mnist1d_arrays(str(tmp_path / 'b'))   # generated again, separately
  np.testing.assert_array_equal(a['x'], b['x'])
  np.testing.assert_array_equal(a['y_test'], b['y_test'])
  assert a['x'].shape == (4000, 40) and a['x_test'].shape == (1000, 40)
  np.testing.assert_array_equal(np.random.get_state()[1], np_before)
  assert random.getstate() == py_before
  assert len(list((tmp_path / 'a').glob('mnist1d_*.npz'))) == 1
  ds = data_lib.load_dataset(data_config('mnist1d', data_dir=str(tmp_path / 'a')))
  assert ds.input_shape == (40, 1) and ds.kind == 'sequence' and len(ds.train) == 4000


def test_variable_length_is_a_pure_function_of_seed_and_index():
  cfg = data_config('digits_rows', variable_length=True, min_length=3)
  a, b = data_lib.load_dataset(cfg, seed=1), data_lib.load_dataset(cfg, seed=1)
  c = data_lib.load_dataset(cfg, seed=2)
  idx = np.array([5, 0, 17, 3])
  ba, bb = a.train.get(idx), b.train.get(idx)
  np.testing.assert_array_equal(ba['mask'], bb['mask'])
  lengths = ba['mask'].sum(1)
  assert lengths.min() >= 3 and lengths.max() <= 8
  assert np.all(ba['inputs'][~ba['mask']] == 0)          # right-padded with zeros
  assert np.all(ba['mask'][:, 0]) and np.all(np.diff(ba['mask'].astype(int), axis=1) <= 0)
  all_idx = np.arange(len(a.train))
  assert not np.array_equal(a.train.get(all_idx)['mask'], c.train.get(all_idx)['mask'])
  # The test split's lengths do not depend on the run's seed.
  np.testing.assert_array_equal(a.test.get(all_idx[:100])['mask'], c.test.get(all_idx[:100])['mask'])
  # Real steps are the unpadded example's steps.
  full = data_lib.load_dataset(data_config('digits_rows')).train.get(idx)
  np.testing.assert_array_equal(ba['inputs'][ba['mask']], full['inputs'][ba['mask']])


def test_variable_length_refused_for_images():
  with pytest.raises(ConfigError, match='needs a sequence dataset'):
    data_lib.load_dataset(data_config('digits', variable_length=True))


def test_tiny_text_lm_targets_are_the_next_tokens():
  ds = data_lib.load_dataset(data_config('tiny_text', seq_length=32))
  batch = ds.train.get(np.arange(4))
  assert batch['inputs'].shape == batch['targets'].shape == (4, 32)
  np.testing.assert_array_equal(batch['inputs'][:, 1:], batch['targets'][:, :-1])
  decoded = bytes((batch['inputs'][0] - 1).astype(np.uint8)).decode('utf-8', 'replace')
  assert decoded.isprintable() or '\n' in decoded
  assert ds.task == 'language_model' and ds.vocab_size == 257 and len(ds.test) > 10


@pytest.mark.parametrize('name,task', [('imdb_reviews', 'classification'), ('lm1b', 'language_model')])
def test_tfds_text_path_on_mock_data(name, task):
  import tensorflow_datasets as tfds
  cfg = data_config(name, seq_length=16)
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data_lib.load_dataset(cfg)
    batch = pipeline.TrainBatches(ds.train, 4, seed=0)(0)
  assert ds.task == task and ds.kind == 'tokens'
  assert batch['inputs'].shape == (4, 16) and batch['mask'].shape == (4, 16)
  assert batch['inputs'].dtype == np.int32 and batch['inputs'].max() < 257
  assert np.all(batch['inputs'][~batch['mask']] == 0) if task == 'classification' else True
  if task == 'language_model':
    np.testing.assert_array_equal(batch['inputs'][:, 1:], batch['targets'][:, :-1])


def test_byte_tokenizer_round_trips_and_pads():
  tokens, mask = text.encode_bytes(['héllo', 'ab'], 8)
  assert bytes((tokens[0][mask[0]] - 1).astype(np.uint8)).decode() == 'héllo'
  assert mask.sum(1).tolist() == [6, 2] and tokens[1, 2:].tolist() == [0] * 6


TINY = {'model.width': 16, 'model.num_layers': 1, 'data.batch_size': 16}


@pytest.mark.parametrize('module,arg,overrides', [
    (lstm_mnist1d, 'layer', {'data.name': 'digits_rows', 'data.variable_length': True,
                             'data.min_length': 4}),
    pytest.param(lstm_mnist1d, 'batch', {'data.name': 'digits_rows'}, marks=pytest.mark.slow),
    (transformer_mnist1d, 'post', {'data.name': 'digits_rows', 'data.variable_length': True,
                                   'data.min_length': 4, 'optimizer.warmup_steps': 0}),
    pytest.param(lstm_lm, None, {'data.seq_length': 16}, marks=pytest.mark.slow),
    pytest.param(transformer_lm, None, {'data.seq_length': 16, 'optimizer.warmup_steps': 0},
                 marks=pytest.mark.slow),   # the language models: CI
])
def test_each_sequence_config_learns_on_tiny_data(module, arg, overrides):
  config = module.get_config(arg)
  for key, value in {**TINY, **overrides}.items():
    group, name = key.split('.')
    config[group][name] = value
  exp = experiment.build_experiment(config)
  state = experiment.create_train_state(exp, jax.random.key(0))
  step = compile_steps(exp).train
  batches = pipeline.TrainBatches(exp.dataset.train, 16, seed=0)
  batch = batches(0)
  state, sums = step(state, batch)
  first = tasks.summarize(jax.device_get(sums))['loss']
  for _ in range(40):
    state, sums = step(state, batch)
  last = tasks.summarize(jax.device_get(sums))['loss']
  assert last < 0.9 * first, (first, last)


def test_tiny_text_splits_share_no_32_byte_run():
  import ml_collections
  from data import text
  ds = text.load_tiny_text(ml_collections.ConfigDict({'seq_length': 64}))
  raw = text._descr_text().encode('utf-8')
  train = raw[:int(0.9 * len(raw))]
  n = text.SHARED_RUN
  runs = {train[i:i + n] for i in range(len(train) - n + 1)}
  test = ds.test.arrays
  windows = [bytes((np.concatenate([x, y[-1:]]) - 1).astype(np.uint8).tolist())
             for x, y in zip(test['inputs'], test['targets'])]
  assert len(windows) >= 40 and sum(map(len, windows)) >= 2500   # a usable test split remains
  shared = [w[i:i + n] for w in windows for i in range(len(w) - n + 1) if w[i:i + n] in runs]
  assert not shared, shared[:3]
  # the check can fail: the plain 90/10 cut does share runs (scikit-learn's boilerplate)
  rest = raw[len(train):]
  assert any(rest[i:i + n] in runs for i in range(len(rest) - n + 1))


def test_unshared_pieces_by_hashes_equal_the_byte_comparison():
  """The megabyte version (window hashes) cuts exactly where the plain byte-set version does."""
  rng = np.random.default_rng(0)
  words = [bytes(rng.integers(97, 100, rng.integers(3, 9)).astype(np.uint8)) for _ in range(40)]
  train = b' '.join(words[i] for i in rng.integers(0, 40, 400))
  held = b' '.join(words[i] for i in rng.integers(0, 40, 200)) + train[100:180]
  for n in (8, 12, 32):
    assert text.unshared_pieces(held, [train], n) == text.unshared_segments(held, train, n)
  assert text.unshared_pieces(held, [train], 8) != [held]     # it can cut


def _windows(split):
  x, y = split.arrays['inputs'], split.arrays['targets']
  return [bytes((np.concatenate([a, b[-1:]]) - 1).astype(np.uint8).tolist()) for a, b in zip(x, y)]


@pytest.mark.slow
def test_docs_text_is_a_megabyte_corpus_split_by_file_with_no_shared_run(tmp_path, monkeypatch):
  """Built from the installed numpy and scipy: over 1 MB of training text; no 32-byte run of a validation or test window occurs in another split (checked
  with Python's byte sets, not the hashes); the checksum matches the pinned install's, and a
  corpus that differs is refused in one line naming the fix."""
  import ml_collections
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  corpus = text.cached_docs_corpus()
  assert len(corpus['train']) > 1_000_000 and len(corpus['test']) > 50_000
  assert text.corpus_digest(corpus) == text.DOCS_SHA256
  n = text.SHARED_RUN
  ds = text.load_docs_text(ml_collections.ConfigDict({'seq_length': 64}))
  held = {w[i:i + n]: split for split in ('validation', 'test')
          for w in _windows(getattr(ds, split)) for i in range(len(w) - n + 1)}
  train = corpus['train']
  shared = [train[i:i + n] for i in range(len(train) - n + 1) if train[i:i + n] in held]
  assert not shared, shared[:3]
  val = {w[i:i + n] for w in _windows(ds.validation) for i in range(len(w) - n + 1)}
  assert not any(w[i:i + n] in val for w in _windows(ds.test) for i in range(len(w) - n + 1))
  # read back from the cache: the same corpus; another corpus is refused
  assert text.cached_docs_corpus() == corpus
  monkeypatch.setattr(text, 'DOCS_SHA256', '0' * 64)
  with pytest.raises(ConfigError, match='pip install -r requirements.txt'):
    text.cached_docs_corpus()
