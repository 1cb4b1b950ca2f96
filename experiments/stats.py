"""Statistics the claims' verdicts share: a group's values over seeds, confidence intervals, and
whether one group is above another by a stated minimum effect with a small-sample test.

A claim's verdict rule names, before its sweep runs (in the claim file's docstring): the metric,
the minimum effect that counts, the test (`welch` or the exact `permutation` test) and alpha.
`compare` computes everything such a rule needs and `Comparison.text` states all of it, so a
verdict sentence carries every fact its rule used.

Why not "a − b > the larger seed std" (the rule before): with no real difference it fires
one-sided ~10 % of the time at 3 seeds, and on a discrete metric the seed std is often exactly 0,
so one test image decided it (tests/test_stats.py measures both).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from scipy import stats as scipy_stats

TESTS = ('welch', 'permutation')
INCONCLUSIVE = 'inconclusive (regime not reached)'


def values(members, key='train_loss') -> np.ndarray:
  """The finite values of `key` over the finished runs of a group."""
  out = [r[key] for r in members if r['state'] == 'finished' and r.get(key) is not None]
  return np.array([v for v in out if np.isfinite(v)], float)


def group_stat(members, key='train_loss'):
  """(mean, sample std) over the finished runs of a group; (nan, nan) when none finished."""
  v = values(members, key)
  if not len(v):
    return float('nan'), float('nan')
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def mean_ci(v, level: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): Student's t interval of the mean over seeds (nan bounds below 2)."""
  v = np.asarray(v, float)
  if len(v) < 2:
    m = float(v.mean()) if len(v) else float('nan')
    return m, float('nan'), float('nan')
  half = scipy_stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
  return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def welch(a, b) -> tuple[float, tuple[float, float]]:
  """(one-sided p for mean(a) > mean(b), 95 % Welch interval of mean(a) − mean(b)). With no
  spread in either group the difference is exact: p is 0 or 1 and the interval a point."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  diff = a.mean() - b.mean()
  se2 = a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)
  if se2 == 0:
    return (0.0 if diff > 0 else 1.0), (diff, diff)
  se = np.sqrt(se2)
  df = se2 ** 2 / ((a.var(ddof=1) / len(a)) ** 2 / (len(a) - 1) +
                   (b.var(ddof=1) / len(b)) ** 2 / (len(b) - 1))
  p = float(scipy_stats.t.sf(diff / se, df))
  half = scipy_stats.t.ppf(0.975, df) * se
  return p, (float(diff - half), float(diff + half))


def permutation(a, b) -> float:
  """Exact one-sided permutation p for mean(a) > mean(b): the share of all ways to split the
  pooled values into groups of len(a) and len(b) whose difference of means is at least the
  observed one (complete separation of 4 vs 4 is 1/70 = 0.014; of 3 vs 3, 1/20 = 0.05)."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  pooled, n = np.concatenate([a, b]), len(a)
  observed = a.mean() - b.mean()
  total = pooled.sum()
  count = hits = 0
  for idx in itertools.combinations(range(len(pooled)), n):
    s = pooled[list(idx)].sum()
    d = s / n - (total - s) / len(b)
    hits += d >= observed - 1e-12 * max(1.0, abs(observed))
    count += 1
  return hits / count


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Whether `a` is better than `b` by at least `min_effect` with `test`'s one-sided p below
  `alpha`; better is higher unless `higher_is_better` is False (a loss). `diff`, `ci` and `p`
  are of the improvement of a over b (mean a − mean b, or mean b − mean a for a loss)."""
  a: np.ndarray
  b: np.ndarray
  min_effect: float
  test: str = 'welch'
  alpha: float = 0.05
  higher_is_better: bool = True

  def __post_init__(self):
    if self.test not in TESTS:
      raise ValueError(f'unknown test {self.test!r}; valid: {", ".join(TESTS)}')

  @property
  def _oriented(self):
    sign = 1.0 if self.higher_is_better else -1.0
    return sign * np.asarray(self.a, float), sign * np.asarray(self.b, float)

  @property
  def ok(self) -> bool:
    """Both groups have at least 2 finished seeds."""
    return len(self.a) >= 2 and len(self.b) >= 2

  @property
  def diff(self) -> float:
    a, b = self._oriented
    return float(a.mean() - b.mean()) if self.ok else float('nan')

  @property
  def ci(self) -> tuple[float, float]:
    return welch(*self._oriented)[1] if self.ok else (float('nan'),) * 2

  @property
  def p(self) -> float:
    if not self.ok:
      return float('nan')
    a, b = self._oriented
    return welch(a, b)[0] if self.test == 'welch' else permutation(a, b)

  @property
  def greater(self) -> bool:
    """The rule: the improvement is at least the minimum effect and the test says it is not
    chance (one-sided p < alpha)."""
    return self.ok and self.diff >= self.min_effect and self.p < self.alpha

  def within(self, margin: float) -> bool:
    """Equivalence: the 95 % interval of the difference lies inside (−margin, margin) (two
    one-sided tests at 2.5 % each: stricter than the usual 90 % interval)."""
    lo, hi = self.ci
    return self.ok and -margin < lo and hi < margin

  def text(self, a_name: str, b_name: str, digits: int = 4) -> str:
    """Every number the rule used, in one clause, in the metric's own sign."""
    if not self.ok:
      return (f'{a_name} vs {b_name}: too few finished seeds ({len(self.a)} and {len(self.b)}) '
              'to compare')
    f = lambda x: f'{x:.{digits}f}'
    lo, hi = self.ci
    side = 'above' if self.higher_is_better else 'below'
    return (f'{a_name} {side} {b_name} by {f(self.diff)} (95 % CI {f(lo)} to {f(hi)}; '
            f'{a_name} {f(np.mean(self.a))}, {b_name} {f(np.mean(self.b))}, n = {len(self.a)}, '
            f'{len(self.b)}); {self.test} p = {self.p:.3f} one-sided vs α = {self.alpha}; '
            f'minimum effect {f(self.min_effect)}: '
            f'{"shown" if self.greater else "not shown"}')


def compare(a_members, b_members, key, min_effect, test='welch', alpha=0.05,
            higher_is_better=True) -> Comparison:
  """Whether group a is better than group b on `key` (each a list of runs): higher, or lower
  for a metric where lower is better (a loss)."""
  return Comparison(values(a_members, key), values(b_members, key), min_effect, test, alpha,
                    higher_is_better)


def trend(xs, ys) -> tuple[float, float]:
  """(Spearman's rho, one-sided p that ys rise with xs): a monotone trend over every run, not
  a difference of two points."""
  rho, p = scipy_stats.spearmanr(xs, ys, alternative='greater')
  return float(rho), float(p)


def diverged(members) -> tuple[int, int]:
  """(runs that diverged, runs that ended) in a group."""
  ended = [r for r in members if r['state'] in ('finished', 'diverged')]
  return sum(r['state'] == 'diverged' for r in ended), len(ended)


def lookup(group_keys, groups, **values) -> list:
  """The runs of the group whose swept keys equal `values` (keys given as dotted names; keys not
  swept are ignored); [] when there is none."""
  index = {k: i for i, k in enumerate(group_keys)}
  for key, members in groups.items():
    if all(key[index[k]] == v for k, v in values.items() if k in index):
      return members
  return []
