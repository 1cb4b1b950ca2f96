"""The configuration space the config checks allow, enumerated from the registries.

Every family in `models.FAMILIES` is tried on every kind of data (images, real-valued sequences,
token classification, a token language model) with every norm in `models.norms.NORMS`, both
residual settings, every norm position, every BatchNorm scope and fixed/variable lengths. What
the builders refuse is recorded with its reason; the rest is the space the invariant tests
(`test_invariants.py`) walk: one point per (model, norm) in the fast run (`covering`), a
pairwise covering design of all of it in the slow run (`pairwise`). A family, norm, option or
scope added to its registry is covered here without editing any test.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np

import models
from configs import common
from data.base import Dataset
from errors import ConfigError
from models import norms, options, transformer

T, F = 12, 3          # time steps, features of a real-valued sequence
IMAGE = (8, 8, 1)      # digits-sized
IMAGE32 = (32, 32, 3)  # CIFAR-sized
VOCAB = 11
CLASSES = 5

DATA = {   # kind of data -> a Dataset with no examples (the models read only its metadata)
    'image': Dataset(None, None, CLASSES, IMAGE, task='classification', kind='image'),
    'image32': Dataset(None, None, CLASSES, IMAGE32, task='classification', kind='image'),
    'sequence': Dataset(None, None, CLASSES, (T, F), task='classification', kind='sequence'),
    'tokens': Dataset(None, None, CLASSES, (T,), task='classification', kind='tokens',
                      vocab_size=VOCAB),
    'lm': Dataset(None, None, VOCAB, (T,), task='language_model', kind='tokens',
                  vocab_size=VOCAB),
}


@dataclasses.dataclass(frozen=True)
class Point:
  """One combination: model, data kind and the model config's switches."""
  model: str
  data: str
  norm: str
  residual: bool = True
  norm_position: str = 'pre'
  bn_scope: str = 'global'
  variable_length: bool = False
  options: frozenset = frozenset()   # the models.options.switches() switched on

  @property
  def id(self) -> str:
    scope = f':{self.bn_scope}' if norms.NORMS[self.norm].running_stats else ''
    return (f'{self.model}-{self.data}-{self.norm}{scope}-{"res" if self.residual else "plain"}'
            f'-{self.norm_position}{"-varlen" if self.variable_length else ""}'
            + ''.join(f'-{o}' for o in sorted(self.options)))

  def with_options(self, *names: str) -> 'Point':
    return dataclasses.replace(self, options=frozenset(names))

  @property
  def dataset(self) -> Dataset:
    return DATA[self.data]


# small values of the family keys, where a family declares them (the smallest allowed depth
# of each ResNet: 6n+2 = 8 for CIFAR's, the shortest variant for ImageNet's)
SMALL = dict(num_layers=2, num_heads=2, mlp_ratio=2, norm_uses_mask=True, max_length=32,
             patch_size=2)
DEPTHS = {'resnet': 8, 'resnet_imagenet': 18}


def model_config(p: Point):
  """A small model config of `p`'s family: its declared keys at small values."""
  own = {k.name for k in models.FAMILIES[p.model].keys}
  small = {**SMALL, 'norm_position': p.norm_position, 'depth': DEPTHS.get(p.model, 8)}
  cfg = common.model(p.model, p.norm, p.residual, width=8,
                     **{k: v for k, v in small.items() if k in own})
  cfg.norm_groups = 2   # width 8: 4 features per group (the fewest allowed per token is 3)
  cfg.bn_scope = p.bn_scope
  cfg.bn_ghost_size = 4 if p.bn_scope == 'ghost' else 0   # 2 groups in a batch of 8
  cfg.conv_wgrad = 'xla'
  cfg.bn_momentum = 0.0   # one train-mode pass sets the running averages to its statistics
  for option in options.switches():
    cfg[option] = option in p.options
  return cfg


def build(p: Point):
  return models.build_model(model_config(p), p.dataset)


def _axes():
  # every BatchNorm scope with the first registered norm that keeps batch statistics; later
  # ones (batch_renorm) share its grouping code and are walked at the global scope (the test
  # budget: test_beyond_six checks their own arithmetic)
  first = next(n for n, spec in norms.NORMS.items() if spec.running_stats)
  scopes = [(n, s) for n in norms.NORMS
            for s in (norms.BN_SCOPES if n == first else ('global',))]
  return itertools.product(models.FAMILIES, DATA, scopes, (True, False),
                           transformer.NORM_POSITIONS, (False, True))


@functools.cache
def space() -> tuple[list[Point], dict[Point, str]]:
  """(allowed points, {refused point: reason}). Switches a model does not read (norm position
  outside the transformer, variable length on images) are not multiplied out."""
  allowed, refused = [], {}
  seen = set()
  for model, data, (norm, scope), residual, position, varlen in _axes():
    if varlen and DATA[data].kind == 'image':
      continue
    p = Point(model, data, norm, residual, position, scope, varlen)
    try:
      module = build(p)
    except ConfigError as e:
      refused[p] = str(e)
      continue
    # one point per distinct module (a switch the model ignores builds the same module)
    key = (repr(module), data, varlen)
    if key not in seen:
      seen.add(key)
      allowed.append(p)
  return allowed, refused


def covering(points: list[Point]) -> list[Point]:
  """A subset with one point per (model, norm): each model's kinds of data rotate across its
  norms (so every (model, data) appears, with several norms), the other switches rotate so that
  within each model every value of each appears, and BatchNorm's scopes rotate across each
  model's norms with statistics: the fast tests' share of the space (`-m slow` walks it all)."""
  kinds: dict[str, list[str]] = {}
  for p in points:
    kinds.setdefault(p.model, [])
    if p.data not in kinds[p.model]:
      kinds[p.model].append(p.data)
  groups: dict[tuple, list[Point]] = {}
  for p in points:
    groups.setdefault((p.model, p.norm), []).append(p)
  out, count, scopes = [], {}, {}
  for (model, norm), members in groups.items():
    n = count[model] = count.get(model, -1) + 1
    want = dict(data=kinds[model][n % len(kinds[model])], residual=n % 2 == 0,
                norm_position=transformer.NORM_POSITIONS[(n // 2) % 2],
                variable_length=(n // 4) % 2 == 1)
    if norms.NORMS[norm].running_stats:
      k = scopes[model] = scopes.get(model, -1) + 1
      want['bn_scope'] = norms.BN_SCOPES[k % len(norms.BN_SCOPES)]
    for relax in range(len(want) + 1):   # drop the last wishes until some point matches
      keys = list(want)[:len(want) - relax]
      match = [q for q in members
               if all(getattr(q, k) == want[k] or _ignored(q, k) for k in keys)]
      if match:
        out.append(match[0])
        break
  return out


def once_each(points: list, factors=None) -> list:
  """A smaller covering for the fast run: a subset of `points` in which every value of every
  factor occurs at least once (chosen greedily, most new values first). `points` are Points
  (factors: FACTORS) or tuples (factors: their positions)."""
  get = (lambda p, f: getattr(p, f)) if factors is None else (lambda p, f: p[f])
  factors = FACTORS if factors is None else factors
  values = lambda p: {(f, get(p, f)) for f in factors}
  missing, chosen = set().union(*map(values, points)), []
  while missing:
    best = max(points, key=lambda p: len(values(p) & missing))
    chosen.append(best)
    missing -= values(best)
  return chosen


FACTORS = ('model', 'data', 'norm', 'bn_scope', 'residual', 'norm_position', 'variable_length',
           'options')


def _pairs(p: Point) -> set:
  values = [(f, getattr(p, f)) for f in FACTORS]
  return {(a, b) for i, a in enumerate(values) for b in values[i + 1:]}


def pairwise(points: list[Point], start: list[Point] = ()) -> list[Point]:
  """A covering design: a subset of `points` in which every pair of factor values that occurs
  together in `points` (model x norm, norm x scope, data x residual, norm x option, ...) occurs
  at least once, chosen greedily (each next point covers the most pairs not yet covered),
  beginning from `start`. Every single value is covered too. What it leaves out: combinations
  of three or more values that no pair predicts (tested only where the fast covering or a
  pair's point happens to hold them)."""
  uncovered = set().union(*(_pairs(p) for p in points)) - set().union(set(), *map(_pairs, start))
  chosen, rest = list(start), [p for p in points if p not in start]
  while uncovered:
    best = max(rest, key=lambda p: len(_pairs(p) & uncovered))
    chosen.append(best)
    rest.remove(best)
    uncovered -= _pairs(best)
  return chosen


def variants(points: list[Point]) -> list[Point]:
  """Each of models.options.switches() switched on at, for each (model, data), one point with a norm that keeps
  batch statistics and one without (where it builds): the options change the model around the
  norm, so two norms per kind of model and data cover them within the test budget."""
  out, seen = [], set()
  for p in points:
    for option in options.switches():
      key = (p.model, p.data, option, norms.NORMS[p.norm].running_stats)
      if key in seen:
        continue
      q = p.with_options(option)
      try:
        build(q)
      except ConfigError:
        continue
      seen.add(key)
      out.append(q)
  return out


def _ignored(p: Point, switch: str) -> bool:
  own = {k.name for k in models.FAMILIES[p.model].keys}
  return ((switch == 'norm_position' and 'norm_position' not in own) or
          (switch == 'variable_length' and p.dataset.kind == 'image'))


def batch(p: Point, size: int = 8, seed: int = 0):
  """(inputs, mask or None, targets) of `size` random examples for point `p`."""
  rng = np.random.default_rng(seed)
  ds = p.dataset
  mask = None
  if ds.kind != 'image':
    lengths = rng.integers(4, T + 1, size) if p.variable_length else np.full(size, T)
    # two full-length examples: with one, a per-position BatchNorm at the last positions
    # normalizes a single value to exactly 0 and the output there is its bias alone
    lengths[:2] = T
    mask = np.arange(T)[None, :] < lengths[:, None]
  if ds.kind == 'tokens':
    x = rng.integers(1, VOCAB, size=(size, T)).astype(np.int32)
    x = np.where(mask, x, 0)
  else:
    x = rng.normal(size=(size, *ds.input_shape)).astype(np.float32)
    if mask is not None:
      x = np.where(mask[..., None], x, 0.0).astype(np.float32)
  if ds.task == 'language_model':
    y = rng.integers(1, VOCAB, size=(size, T)).astype(np.int32)
  else:
    y = rng.integers(0, ds.num_classes, size=size).astype(np.int32)
  return x, mask, y
