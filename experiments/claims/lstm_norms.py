"""Ba et al. 2016: layer-normalized LSTMs train faster than plain LSTMs; and recurrent
BatchNorm (Cooijmans et al. 2016) does too.

CPU scale: the character-level LSTM LM on docs_text (data/text.py: 4.6 MB of numpy's and
scipy's docstrings; configs/lstm_lm.py: byte tokens, windows
of 64, batch 32), one layer of width 128, Adam with a constant lr {1e-3, 3e-3, 1e-2, 3e-2} (no
warm-up, no decay), 800 steps, norm {none, layer, batch (recurrent BN: per-step statistics)},
5 seeds. Token inputs, not mnist1d: there each time step is one scalar, and LayerNorm of a
projected scalar discards its magnitude at init, a handicap by construction. Full scale
(`:full`): lm1b (TFDS), 2 layers of 512, 20k steps.

"Trains faster" is measured by the EXCESS: the area of the train-loss curve (the mean over each
20-step logging window) above TARGET, in nat-steps, over the whole run: a run that falls to the
target sooner, or further below where it is above, has less. TARGET is fixed from the corpus
before any run: the conditional entropy of the next byte given the current one in the training
text (the plug-in bigram entropy, in nats; a model must learn more than bigram statistics to
pass it). The rule before read the first logged step below TARGET, which has the logging grain:
every LN seed crossed at step 60 and every no-norm seed at 80, and Welch, with no spread, said
p = 0.000. The area has no grain and needs no censoring. Each norm is judged at its own best
lr: the lr with the least mean EXCESS, chosen by the same rule for every norm; the lr grid
reaches 3e-2 because the sweep before found a best lr at 1e-2, its edge.

Rule (written before this sweep ran; experiments/stats.py): metric log2 EXCESS; a norm "trains
faster" than none when, at each one's best lr, its log2 EXCESS is lower by more than MIN_EFFECT
(log2 1.25: at least 25 % less area) by the shifted one-sided test (Welch; exact permutation
without spread), alpha 0.05. Both halves are judged: LN vs none, recurrent BN vs none.
Reproduced if both train faster; partly if one does after Holm over the two; not reproduced if
neither does and one is ruled out (upper bound below MIN_EFFECT); else inconclusive
(underpowered). The steps to TARGET and the final test NLL at each best lr are reported beside
(not part of the rule). Gate: at least one norm reaches TARGET in every seed at its best lr
(else the runs are too short to say which is faster), and no norm's best lr at an end of the
grid; else inconclusive.
"""

import math

import numpy as np

from configs import lstm_lm
from experiments.claims.common import (at_grid_edge, char_corpus, corpus_entropies, finish,
                                       save_figure, subplots)
from experiments.sweeps import product
from experiments.stats import compare, lookup, outcome, values

NORMS = ['none', 'layer', 'batch']
LRS = [1e-3, 3e-3, 1e-2, 3e-2]
MIN_EFFECT = math.log2(1.25)
LOG_EVERY = 20


def get_sweep(arg=None):
  config = lstm_lm.get_config()
  config.optimizer.warmup_steps, config.optimizer.schedule = 0, 'constant'
  if arg == 'full':
    config.data.name, config.num_train_steps = 'lm1b', 20000
    config.model.width, config.model.num_layers = 512, 2
  else:
    config.num_train_steps, config.model.num_layers = 800, 1
    char_corpus(config, arg)
  config.log_every_steps = LOG_EVERY
  config.eval_every_steps = config.checkpoint_every_steps = config.num_train_steps
  axes = [product('model.norm', NORMS), product('optimizer.learning_rate', LRS)]
  smoke = [product('model.norm', ['layer', 'batch']), product('optimizer.learning_rate', LRS[:1])]
  if arg == 'smoke':
    config.model.width = 16
  return finish(config, axes, arg, smoke)


def target() -> float:
  """TARGET: the bigram entropy of the corpus' training text (the corpus, not the runs)."""
  return corpus_entropies()[1]


def steps_to(run, level: float, cap: float) -> float:
  for step, loss in run['scalars'].get('train/loss', []):
    if loss <= level:
      return float(step)
  return cap


def excess(run, level: float) -> float:
  """The area of the logged train-loss curve above `level`, in nat-steps: each logged value
  (a window's mean) stands for the steps since the previous log."""
  area, previous = 0.0, 0
  for step, loss in run['scalars'].get('train/loss', []):
    area += max(loss - level, 0.0) * (step - previous)
    previous = step
  return area


def analyze(directory, group_keys, groups):
  """Adds 'log2_excess' and 'log2_steps' (to TARGET, censored at 2 × the run's length) to every
  finished run and picks each norm's best lr (the least mean log2 EXCESS)."""
  level = target()
  cap = 2.0 * max((r.get('step') or 0) for m in groups.values() for r in m)
  for members in groups.values():
    for r in members:
      if r['state'] == 'finished':
        r['log2_steps'] = math.log2(steps_to(r, level, cap))
        r['log2_excess'] = math.log2(max(excess(r, level), 1e-9))
  best = {}
  for norm in NORMS:
    rank = []
    for lr in LRS:
      runs = lookup(group_keys, groups, **{'model.norm': norm, 'optimizer.learning_rate': lr})
      area = values(runs, 'log2_excess')
      if len(area):
        rank.append((area.mean(), lr))
    best[norm] = min(rank)[1] if rank else None
  lines = [f'TARGET (bigram entropy of the training text): {level:.4f} nats. EXCESS: the area '
           'of the train-loss curve above it (nat-steps); steps to it (mean over seeds; never '
           f'reached counts as {cap:.0f}):', '',
           '| norm | lr | EXCESS | steps to target | reached | final train loss | test NLL |',
           '|---|---|---|---|---|---|---|']
  for norm in NORMS:
    for lr in LRS:
      runs = lookup(group_keys, groups, **{'model.norm': norm, 'optimizer.learning_rate': lr})
      steps = 2 ** values(runs, 'log2_steps')
      mark = ' (best)' if best[norm] == lr else ''
      lines.append(f'| {norm} | {lr:g}{mark} | '
                   f'{(2 ** values(runs, "log2_excess")).mean():.0f} | {steps.mean():.0f} | '
                   f'{int((steps < cap).sum())}/{len(steps)} | '
                   f'{values(runs, "train_loss").mean():.4f} | '
                   f'{values(runs, "test_loss").mean():.4f} |')
  return {'lines': lines + [''], 'best': best, 'target': level, 'cap': cap,
          'plot': _plot(directory, group_keys, groups, best, level)}


def _plot(directory, group_keys, groups, best, level):
  fig, ax = subplots(figsize=(7, 4.5))
  for norm in NORMS:
    runs = [r for r in lookup(group_keys, groups, **{'model.norm': norm,
                                                     'optimizer.learning_rate': best[norm]})
            if r['state'] == 'finished']
    curves = [dict(r['scalars'].get('train/loss', [])) for r in runs]
    if curves:
      xs = sorted(set.intersection(*(set(c) for c in curves)))
      ys = np.array([[c[x] for x in xs] for c in curves])
      ax.plot(xs, ys.mean(0), label=f'{norm}, lr {best[norm]:g} (its best)')
      ax.fill_between(xs, ys.min(0), ys.max(0), alpha=0.2)
  ax.axhline(level, color='k', lw=0.8, ls='--', label='target: bigram entropy')
  ax.set_xlabel('step')
  ax.set_ylabel('train loss (nats; band: lowest to highest seed)')
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  ax.grid(alpha=0.3)
  return save_figure(fig, directory, 'train_loss_best_lr.png')


def _at_best(group_keys, groups, analysis, norm):
  return lookup(group_keys, groups, **{'model.norm': norm,
                                       'optimizer.learning_rate': analysis['best'][norm]})


def gate(group_keys, groups, analysis):
  for norm in NORMS:
    steps = values(_at_best(group_keys, groups, analysis, norm), 'log2_steps')
    if len(steps) and (2 ** steps < analysis['cap']).all():
      return at_grid_edge(analysis['best'], LRS)
  return [f'no norm reaches the target ({analysis["target"]:.3f} nats) in every seed at its '
          'best lr'] + at_grid_edge(analysis['best'], LRS)


def verdict(group_keys, groups, analysis):
  at = lambda n: _at_best(group_keys, groups, analysis, n)
  c = {n: compare(at(n), at('none'), 'log2_excess', MIN_EFFECT, higher_is_better=False)
       for n in ('layer', 'batch')}
  steps = {n: compare(at(n), at('none'), 'log2_steps', 0.0, higher_is_better=False)
           for n in ('layer', 'batch')}
  nll = {n: compare(at(n), at('none'), 'test_loss', 0.0, higher_is_better=False)
         for n in ('layer', 'batch')}
  best = ', '.join(f'{n} {analysis["best"][n]:g}' for n in NORMS)
  reason = (f'best lr: {best}; log2 EXCESS above the target, less is faster: '
            f'{c["layer"].text("LN", "none")}; {c["batch"].text("BN", "none")}. Beside the '
            f'rule, log2 steps to the target: {steps["layer"].text("LN", "none")}; '
            f'{steps["batch"].text("BN", "none")}; test NLL at the best lrs: '
            f'{nll["layer"].text("LN", "none")}; {nll["batch"].text("BN", "none")}')
  return outcome(c.values()), reason + '.'
