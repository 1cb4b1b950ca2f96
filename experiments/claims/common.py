"""Helpers shared by the claim sweeps: the smoke variant, the seeds, statistics at init, and
headless figures."""

import json
import os
import re

from experiments.sweeps import Sweep, product

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
SEEDS_ENV = 'NORMLAB_CLAIM_SEEDS'     # set by `python -m experiments.findings --seeds=...`


def seeds(count: int = len(DEFAULT_SEEDS)) -> list[int]:
  """The seeds of a claim that asks for `count` of them: the first `count` of the list in
  $NORMLAB_CLAIM_SEEDS (comma-separated; continued by consecutive integers when shorter), or
  0, 1, ... by default. Five by default: with three a side the exact permutation test's smallest
  p is 1/20, so no claim could pass at 0.05 without leaning on Welch's normality."""
  given = [int(s) for s in os.environ.get(SEEDS_ENV, '').split(',') if s.strip()]
  if not given:
    return list(range(count))
  while len(given) < count:
    given.append(max(given) + 1)
  return given[:count]


def finish(config, axes, arg, smoke_axes, count: int = len(DEFAULT_SEEDS)):
  """`arg == 'smoke'`: 2 runs of 4 steps (so the sweep cannot rot); otherwise the full sweep
  over `count` seeds."""
  if arg == 'smoke':
    config.num_train_steps = 4
    config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
    return Sweep(config, smoke_axes)
  return Sweep(config, axes + [product('seed', seeds(count))])


TEXT = 'docs_text'   # the character-level claims' corpus (data/text.py)
IMAGES = 'digits_hard32'   # the CNN claims' images (data/digits.py)


def init_diagnostics(config, seed: int) -> dict:
  """training.diagnostics' per-layer statistics ({stat: {layer: float}}) of `config`'s net at
  init with `seed`, on that seed's first training batch (before the dataset's random train
  transform): one jitted `diagnose` of a fresh state, which does not step."""
  import jax   # noqa: PLC0415  (claim files import without starting JAX)

  from data import pipeline   # noqa: PLC0415
  from training import diagnostics, experiment   # noqa: PLC0415
  config.seed = seed
  exp = experiment.build_experiment(config)
  state = experiment.create_train_state(exp, jax.random.key(seed))
  batch = pipeline.TrainBatches(exp.dataset.train, config.data.batch_size, seed)(0)
  stats = jax.jit(diagnostics.diagnose_fn(exp.model, exp.task, exp.tx))(state, batch)
  return jax.tree.map(float, stats)


def cached_rows(path: str, wanted: list[dict], make) -> list[dict]:
  """The rows of the JSON list at `path` that match each of `wanted` (dicts of key fields), in
  its order; a missing one is `make(**key)`, saved at once (an interrupted measurement resumes
  where it stopped; a key field a row lacks matches nothing)."""
  rows = json.load(open(path)) if os.path.exists(path) else []
  out = []
  for key in wanted:
    row = next((r for r in rows if all(r.get(k, ()) == v for k, v in key.items())), None)
    if row is None:
      row = make(**key)
      rows.append(row)
      with open(path, 'w') as f:
        json.dump(rows, f)
    out.append(row)
  return out


def blocks(names) -> list[str]:
  """The ResNet block names among `names` (stageS_blockB), from the input to the output."""
  names = [n for n in names if re.fullmatch(r'stage\d+_block\d+', n)]
  return sorted(names, key=lambda n: tuple(int(d) for d in re.findall(r'\d+', n)))


def cnn_images(config, arg) -> None:
  """The CNN claims train on IMAGES (32x32: on 8x8 and 12x12 images a ResNet's last stages
  convolve 4x4 and 2x2 (3x3) maps, where most 3x3 taps fall on zero padding), except the smoke
  runs (their own small data)."""
  if arg not in ('smoke', 'full'):
    config.data.name = IMAGES


def char_corpus(config, arg) -> None:
  """The char-LM claims train on TEXT (4.6 MB of training text; tiny_text's 39 kB was memorized
  within 600 steps: train loss 1.50 against test 2.65), except the smoke runs (tiny_text)."""
  if arg not in ('smoke', 'full'):
    config.data.name = TEXT


def corpus_entropies(name: str = TEXT) -> tuple[float, float]:
  """(H1, H2): the unigram and bigram (next byte given this one) entropies of a corpus' training
  text, plug-in estimates in nats: fixed by the corpus before any run."""
  import numpy as np

  from data import text
  train = np.frombuffer(text.training_bytes(name), np.uint8).astype(np.int64)
  p = np.unique(train, return_counts=True)[1] / len(train)
  return float(-(p * np.log(p)).sum()), bigram_entropy(train)


def bigram_entropy(tokens) -> float:
  """H(next byte | current byte) of a token sequence, plug-in estimate, nats."""
  import numpy as np
  pairs = np.stack([tokens[:-1], tokens[1:]], 1)
  _, joint = np.unique(pairs, axis=0, return_counts=True)
  _, first = np.unique(tokens[:-1], return_counts=True)
  h_joint = -np.sum(joint / joint.sum() * np.log(joint / joint.sum()))
  h_first = -np.sum(first / first.sum() * np.log(first / first.sum()))
  return float(h_joint - h_first)


PLATEAU = 0.1


def at_grid_edge(best: dict, grid, what: str = 'lr') -> list[str]:
  """The arms whose best value (by the claim's selection rule) lies at an end of the grid it
  was chosen from: the optimum may lie beyond it, so the grid must be extended before a verdict
  compares the arms at their best (a gate's unmet conditions). `grid`: the values every arm ran,
  or a function of the arm giving its own (a grid extended for some arms only)."""
  found = []
  for arm, value in best.items():
    values = sorted(grid(arm) if callable(grid) else grid)
    if value is not None and len(values) > 1 and value in (values[0], values[-1]):
      found.append(f'{arm}\'s best {what} {value:g} is at the edge of '
                   f'{{{", ".join(f"{g:g}" for g in values)}}} (extend the grid past it)')
  return found


def best_on_grid(scores: dict[str, dict[float, float]], label: str = 'arm',
                 what: str = 'lr') -> tuple[list[str], dict]:
  """Each arm's mean validation accuracy at each grid value it ran ({arm: {value: mean}}) as
  a markdown table with the arm's best in bold ('–' where it did not run or nothing ended),
  and {arm: its best value} (None when it has none)."""
  best = {arm: max(s, key=s.get) if s else None for arm, s in scores.items()}
  columns = sorted({v for s in scores.values() for v in s})
  lines = [f'| {label} | ' + ' | '.join(f'{what} {v:g}' for v in columns) + ' |',
           '|---|' + '---|' * len(columns)]
  for arm, s in scores.items():
    lines.append(f'| {arm} | ' + ' | '.join(
        '–' if v not in s else f'**{s[v]:.4f}**' if v == best[arm] else f'{s[v]:.4f}'
        for v in columns) + ' |')
  return lines, best


def plateaued(run: dict, tag: str = 'train/loss', share: float = PLATEAU) -> bool:
  """Whether a run's logged `tag` has stopped falling: its mean over the last `share` of the
  logged steps is within `share` (relative) of its mean over the `share` before. A run with
  fewer than 10 logged points cannot say, and has not."""
  points = [v for _, v in run.get('scalars', {}).get(tag, [])]
  k = int(len(points) * share)
  if len(points) < 10 or k < 1:
    return False
  last, before = sum(points[-k:]) / k, sum(points[-2 * k:-k]) / k
  return before - last <= share * abs(before)


def subplots(*args, **kwargs):
  """matplotlib's `plt.subplots` on the headless Agg backend."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt.subplots(*args, **kwargs)


def save_figure(fig, directory: str, name: str) -> str:
  """Writes `fig` as directory/name (small PNG), closes it, returns the path."""
  import matplotlib.pyplot as plt
  path = os.path.join(directory, name)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def evaluated(directory: str, run: dict, split: str = 'test', batch_sizes=()) -> dict:
  """`training.evaluation.evaluate_workdir` of a finished run on `split` (eval mode, then train
  mode at each of `batch_sizes`), cached in its workdir as eval_<split>.json."""
  from training import evaluation
  from training import workdir as wd
  workdir = os.path.join(directory, run['name'])
  path = os.path.join(workdir, f'eval_{split}.json')
  if not os.path.exists(path):
    wd.write_json_atomic(path, evaluation.evaluate_workdir(workdir, list(batch_sizes),
                                                           split=split))
  return wd.read_json(path)
