"""BatchNorm is hard with variable-length sequences, beyond masking the padding (Ba et al.
2016; Cooijmans et al. 2016 keep per-time-step statistics): a recurrent BN trained on short
sequences has no statistics for the positions it never saw.

CPU scale: the character-level LSTM LM on docs_text (data/text.py: numpy's and scipy's docstrings;
configs/lstm_lm.py: one layer of width 128, Adam 3e-3 constant), trained on windows of 32 bytes, 800
steps, norm {batch (recurrent BN, per-position running averages), layer, none}, 5 seeds. After
training, the test loss per position on the test text cut into windows of 128 (4x the training
length; 22 windows), in eval mode, and for BN also in train mode (each batch of 32 test windows
normalized with its own per-position statistics, which exist at every position; all 22 windows in
one batch). Full scale (`:full`): lm1b, train at 64 tokens, test at 256, 20k steps.

Rule (written before this sweep ran): each run's degradation beyond the training length is
DELTA = mean test NLL over positions [96, 128) minus over positions [16, 32) (the second half
of the trained range, where the context is already long). MIN_EFFECT 0.1 nats; alpha 0.05; a
difference is shown when the one-sided test of "excess ≤ MIN_EFFECT" rejects (Welch; exact
permutation without spread; experiments/stats.py). Three parts: BN's DELTA exceeds LayerNorm's,
and no norm's, by more than MIN_EFFECT; and the excess is the missing statistics: BN's DELTA
exceeds by more than MIN_EFFECT that of the same trained BN nets evaluated with every position
past the training length given the last trained position's running averages (Cooijmans et
al. 2016's remedy; an evaluation-time arm of the same runs, `reuse_last`). Reproduced if all
three are shown; partly if some are (Holm over the three); not reproduced if none is shown and
one is ruled out (upper bound below MIN_EFFECT); else inconclusive (underpowered). BN's DELTA in
train mode is reported beside (it tells missing running averages apart from a failure of the
normalized computation itself). By construction: the running averages past position 32 were
never updated (they hold their initial 0 and 1), which is what the claim is about. Gate: every norm's test NLL at the training length is
below the unigram entropy of the corpus (it learned something); else inconclusive.
"""

import os

import numpy as np

from configs import lstm_lm
from experiments.claims.common import char_corpus, finish, save_figure, subplots
from experiments.sweeps import product
from experiments.stats import Comparison, compare, lookup, outcome, values

NORMS = ['batch', 'layer', 'none']
TRAIN_LENGTH, TEST_FACTOR = 32, 4
MIN_EFFECT = 0.1
FILE = 'position_loss.json'


def get_sweep(arg=None):
  config = lstm_lm.get_config()
  config.optimizer.learning_rate, config.optimizer.schedule = 3e-3, 'constant'
  config.optimizer.warmup_steps = 0
  if arg == 'full':
    config.data.name, config.data.seq_length, config.num_train_steps = 'lm1b', 64, 20000
  else:
    config.model.num_layers, config.data.seq_length = 1, TRAIN_LENGTH
    config.num_train_steps, config.log_every_steps = 800, 50
    char_corpus(config, arg)
  config.eval_every_steps = config.checkpoint_every_steps = config.num_train_steps
  smoke = [product('model.norm', ['batch', 'layer'])]
  if arg == 'smoke':
    config.model.width = 16
  return finish(config, [product('model.norm', NORMS)], arg, smoke)


def reuse_last(batch_stats, positions: int, trained: int):
  """Running averages with every per-position row from `trained` on replaced by row
  `trained - 1` (Cooijmans et al.: statistics of the last trained step for longer sequences);
  a per-position array is one whose leading axis has `positions` rows."""
  import jax
  return jax.tree.map(lambda v: v.at[trained:].set(v[trained - 1])
                      if v.ndim and v.shape[0] == positions else v, batch_stats)


def position_loss(workdir: str) -> dict:
  """Per-position test NLL of a trained LM on windows TEST_FACTOR times its training length:
  {'eval': [...], 'train': [...], 'reuse': [...]} (train mode: full batches of the training
  batch size, or all the windows in one batch when there are fewer; reuse: eval mode with
  `reuse_last`, for norms with running averages)."""
  import functools

  import jax
  import jax.numpy as jnp
  import optax

  import data as data_lib
  from training import evaluation
  exp, state, _ = evaluation.load_run(workdir)
  data_config = exp.config.data.copy_and_resolve_references()
  data_config.seq_length = TEST_FACTOR * exp.config.data.seq_length
  test = data_lib.load_dataset(data_config).test
  arrays = test.get(np.arange(len(test)))
  variables = evaluation.variables(state)

  @functools.partial(jax.jit, static_argnums=4)
  def nll(variables, inputs, targets, mask, train):
    logits, _ = exp.model.apply(variables, inputs, train=train, mask=mask,
                                mutable=['batch_stats'])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return (losses * mask).sum(0), mask.sum(0)

  out = {}
  size = min(exp.config.data.batch_size, len(test))
  reused = dict(variables, batch_stats=reuse_last(variables['batch_stats'],
                                                  exp.config.model.max_length,
                                                  exp.config.data.seq_length))
  for mode, train in (('eval', False), ('train', True), ('reuse', False)):
    if mode == 'reuse':
      if not jax.tree.leaves(variables['batch_stats']):
        out[mode] = []
        continue
      variables = reused
    total = count = 0.0
    stop = len(test) - len(test) % size if train else len(test)
    for start in range(0, stop, size):
      chunk = slice(start, min(start + size, stop))
      s, c = nll(variables, jnp.asarray(arrays['inputs'][chunk]),
                 jnp.asarray(arrays['targets'][chunk]),
                 jnp.asarray(arrays['mask'][chunk], jnp.float32), train)
      total, count = total + np.asarray(s), count + np.asarray(c)
    out[mode] = (total / np.maximum(count, 1)).tolist() if np.any(count) else []
  return out


def _bin(losses, lo, hi) -> float:
  return float(np.mean(losses[lo:hi]))


def delta(losses, length: int = TRAIN_LENGTH) -> float:
  return _bin(losses, 3 * length, 4 * length) - _bin(losses, length // 2, length)


def analyze(directory, group_keys, groups):
  """'delta' and 'delta_train_mode' for every finished run (per-position losses cached in
  position_loss.json)."""
  from training import workdir as wd
  curves = {}
  for key, members in groups.items():
    for r in members:
      if r['state'] != 'finished':
        continue
      path = os.path.join(directory, r['name'], FILE)
      if not os.path.exists(path):
        wd.write_json_atomic(path, position_loss(os.path.join(directory, r['name'])))
      losses = wd.read_json(path)
      r['delta'] = delta(losses['eval'])
      if losses['train']:
        r['delta_train_mode'] = delta(losses['train'])
      if losses.get('reuse'):
        r['delta_reuse'] = delta(losses['reuse'])
      curves.setdefault(key, []).append(losses)
  t = TRAIN_LENGTH
  bins = [(0, t), (t, 2 * t), (2 * t, 3 * t), (3 * t, 4 * t)]
  lines = [f'Test NLL by position on windows of {TEST_FACTOR * t} (trained on {t}); mean over '
           'positions in each range and over seeds; eval mode unless stated:', '',
           '| norm | ' + ' | '.join(f'[{a}, {b})' for a, b in bins) + ' | DELTA |',
           '|---|' + '---|' * (len(bins) + 1)]
  for key, cs in curves.items():
    norm = key[group_keys.index('model.norm')]
    for mode in ('eval', 'train', 'reuse') if norm == 'batch' else ('eval',):
      if not any(c.get(mode) for c in cs):
        continue
      m = np.mean([c[mode] for c in cs if c.get(mode)], axis=0)
      name = norm + {'eval': '', 'train': ' (train mode)',
                     'reuse': ' (last trained position\'s statistics)'}[mode]
      lines.append(f'| {name} | ' + ' | '.join(f'{_bin(m, a, b):.3f}' for a, b in bins)
                   + f' | {delta(m):+.3f} |')
  return {'lines': lines + [''], 'plot': _plot(directory, group_keys, curves)}


def _plot(directory, group_keys, curves):
  fig, ax = subplots(figsize=(8, 4.5))
  for i, (key, cs) in enumerate(curves.items()):
    norm = key[group_keys.index('model.norm')]
    for mode, style in (('eval', '-'), ('train', ':'), ('reuse', '--')):
      if (mode != 'eval' and norm != 'batch') or not any(c.get(mode) for c in cs):
        continue
      m = np.mean([c[mode] for c in cs if c.get(mode)], axis=0)
      smooth = np.convolve(m, np.ones(4) / 4, mode='valid')
      ax.plot(np.arange(len(smooth)) + 2, smooth, style, color=f'C{i}',
              label=norm + {'eval': '', 'train': ' (train mode)',
                            'reuse': ' (last trained statistics)'}[mode])
  ax.axvline(TRAIN_LENGTH, color='k', lw=0.8, ls='--', label='training length')
  ax.set_xlabel('position in the test window')
  ax.set_ylabel('test NLL (nats; mean over seeds, 4-position average)')
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  ax.grid(alpha=0.3)
  return save_figure(fig, directory, 'position_loss.png')


def gate(group_keys, groups, analysis):
  from experiments.claims.common import corpus_entropies
  h1 = corpus_entropies()[0]
  unmet = []
  for norm in NORMS:
    loss = values(lookup(group_keys, groups, **{'model.norm': norm}), 'test_loss')
    if not len(loss) or loss.mean() >= h1:
      unmet.append(f'{norm}\'s test NLL {loss.mean() if len(loss) else float("nan"):.3f} is not '
                   f'below the unigram entropy {h1:.3f}')
  return unmet


def verdict(group_keys, groups, analysis):
  at = lambda n: lookup(group_keys, groups, **{'model.norm': n})
  c = {n: compare(at('batch'), at(n), 'delta', MIN_EFFECT) for n in ('layer', 'none')}
  bn = [r for r in at('batch') if r.get('delta_reuse') is not None]
  missing = Comparison(values(bn, 'delta'), values(bn, 'delta_reuse'), MIN_EFFECT)
  train_mode = values(at('batch'), 'delta_train_mode')
  reason = (f'DELTA (NLL at positions 96-128 minus 16-32), BN above the other: '
            f'{c["layer"].text("BN", "LN")}; '
            f'{c["none"].text("BN", "none")}; the same BN nets with their own running averages '
            f'against the last trained position\'s: {missing.text("own", "last trained")}. '
            f'Beside the rule: BN\'s DELTA in train mode '
            f'{train_mode.mean() if len(train_mode) else float("nan"):+.3f}, LN '
            f'{values(at("layer"), "delta").mean():+.3f}, none {values(at("none"), "delta").mean():+.3f}')
  return outcome([c['layer'], c['none'], missing]), reason + '.'
