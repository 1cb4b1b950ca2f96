"""Zhu et al. 2025, in their own setting: DyT (γ·tanh(αx) + β) matches LayerNorm in a Vision
Transformer, with α₀ tuned (the paper tunes it per model; `dyt` tests a char-LM at α₀ = 0.5).

CPU scale: the ViT of configs/vit_digits.py (pre-LN, 4 blocks, width 64, 4 heads) on
digits_hard32 with 4x4 patches (64 tokens), AdamW 1e-3 with 100 warm-up steps and cosine decay,
1000 steps, batch 128, {LayerNorm, DyT with α₀ ∈ {0.25, 0.5, 1, 2}}, 5 seeds; 287 training
digits held out for validation. DyT is read at its best α₀ by mean validation accuracy (eval
mode). Full scale (`:full`): CIFAR-10, 8 blocks of width 256, 20k steps.

Rule (written before the sweep ran; experiments/stats.py): metric the final test accuracy; DyT
"matches" LayerNorm when the 90 % interval of (DyT − LN) lies inside ±MARGIN (1 point): two
one-sided tests at α 0.05 (Welch; exact permutation without spread). Reproduced if it does; not
reproduced if the interval lies wholly outside the margin or DyT is worse by more than MARGIN
(the shifted one-sided test rejects); otherwise inconclusive (underpowered). Gates: LayerNorm's
test accuracy between 50 % and 99 % (trained, not at the ceiling); DyT's best α₀ not at an end of
its grid; else inconclusive.
"""

from configs import vit_digits
from experiments.claims.common import at_grid_edge, cnn_images, evaluated, finish
from experiments.sweeps import zipped
from experiments.stats import (NOT_REPRODUCED, REPRODUCED, RULED_OUT, SHOWN, UNDERPOWERED,
                               compare, lookup, values)

MARGIN = 0.01
ALPHAS = [0.25, 0.5, 1.0, 2.0]
ARMS = {'model.norm': ['layer'] + ['dyt'] * len(ALPHAS), 'model.dyt_alpha': [0.5] + ALPHAS}


def get_sweep(arg=None):
  config = vit_digits.get_config()
  if arg == 'full':
    config.data.name, config.model.patch_size, config.num_train_steps = 'cifar10', 4, 20000
    config.model.width, config.model.num_layers = 256, 8
    config.data.validation_examples = 5000
  else:
    cnn_images(config, arg)
    config.model.patch_size = 4 if arg != 'smoke' else 2
    config.data.validation_examples = 287
  config.eval_every_steps = config.checkpoint_every_steps = config.num_train_steps
  smoke = [zipped({k: v[:2] for k, v in ARMS.items()})]
  return finish(config, [zipped(ARMS)], arg, smoke)


def analyze(directory, group_keys, groups):
  """Validation accuracy of every finished run and DyT's best α₀ by it."""
  scores = {}
  for key, members in groups.items():
    for r in members:
      if r['state'] == 'finished':
        r['val_accuracy'] = evaluated(directory, r, 'validation')['rows'][0]['accuracy']
    norm, alpha = (key[group_keys.index(k)] for k in ('model.norm', 'model.dyt_alpha'))
    v = values(members, 'val_accuracy')
    if norm == 'dyt' and len(v):
      scores[alpha] = v.mean()
  best = max(scores, key=scores.get) if scores else None
  lines = ['DyT validation accuracy by α₀ (mean over seeds): '
           + ', '.join(f'{a:g}: {s:.4f}' for a, s in sorted(scores.items()))
           + f'; best α₀ {best}.', '']
  return {'lines': lines, 'best': best}


def _runs(group_keys, groups, norm, alpha=None):
  keys = {'model.norm': norm, **({'model.dyt_alpha': alpha} if alpha is not None else {})}
  return lookup(group_keys, groups, **keys)


def gate(group_keys, groups, analysis):
  ln = values(_runs(group_keys, groups, 'layer'), 'test_accuracy')
  unmet = []
  if not len(ln) or not 0.5 <= ln.mean() <= 0.99:
    unmet.append(f'LayerNorm\'s test accuracy {ln.mean() if len(ln) else float("nan"):.4f} is '
                 'outside 50-99 %')
  return unmet + at_grid_edge({'DyT': analysis['best']}, ALPHAS, 'α₀')


def verdict(group_keys, groups, analysis):
  dyt = _runs(group_keys, groups, 'dyt', analysis['best'])
  c = compare(dyt, _runs(group_keys, groups, 'layer'), 'test_accuracy', -MARGIN)
  worse = compare(_runs(group_keys, groups, 'layer'), dyt, 'test_accuracy', MARGIN)
  same = c.equivalence(MARGIN)
  numbers = (f'final test accuracy, DyT at its best α₀ {analysis["best"]}: {c.text("DyT", "LN")}; '
             f'equivalence margin ±{MARGIN}')
  if same.status == SHOWN:
    return REPRODUCED, numbers + f': the interval lies inside it (TOST p = {same.p:.3f}).'
  if worse.greater or same.status == RULED_OUT:
    return NOT_REPRODUCED, numbers + f'; DyT is worse by more than {MARGIN}.'
  return UNDERPOWERED, numbers + '; the interval is wider than the margin.'
