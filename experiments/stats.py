"""Statistics the claims' verdicts share: a group's values over seeds, whether one group beats
another by more than a stated minimum effect, and the five outcomes a claim can have.

A claim's verdict rule names, before its sweep runs (in the claim file's docstring): the metric,
the minimum effect that counts, the test (`welch` or the exact `permutation` test), alpha, and
for a metric read on a grid (a logging interval) its grain. `compare` computes everything such a
rule needs and `Comparison.text` states all of it, so a verdict sentence carries every fact its
rule used.

The rule (a shifted null). "a beats b by at least m" is shown when the one-sided test of
H0: improvement ≤ m rejects at alpha, which is the same as the one-sided (1 − alpha) lower
confidence bound of the improvement lying above m. The interval shown is the matching one: both
one-sided (1 − alpha) bounds, the (1 − 2·alpha) two-sided interval (90 % for alpha 0.05). The
effect is ruled out when the upper bound lies below m (the test of H0: improvement ≥ m rejects).
Neither: the runs cannot tell (underpowered). Checking m on the point estimate beside an
unshifted test (the rule before) passes at a true improvement of exactly m (no improvement beyond
the minimum) 3-4 times as often as alpha: 17 % at 5 seeds (tests/test_stats.py measures it).

Zero spread. Welch's t needs a spread; when either group has none (every seed logged the same
step, or the same number of test images) it would return p = 0 and a point interval. The exact
permutation test is used then instead, and always for a metric with a declared grain: its p
is a count of group splits (with 5 seeds a side the smallest is 1/252 = 0.004; with 3 a side
1/20 = 0.05, which can never be below 0.05: the reason for five seeds). A grain also widens
both bounds by one grain: a value read at the first logging step past a threshold is known only
to within one logging interval.

Several cells. A rule that passes when any of k cells passes corrects the cells' p-values by
Holm's step-down method (`holm`), so its false-positive rate stays at alpha.

Outcomes (`outcome`): reproduced (every part shown), partly (some), not reproduced (no part
shown and one ruled out: its interval lies below the minimum effect), inconclusive
(underpowered: no part shown or ruled out), and inconclusive (regime not reached), which a
claim's gate decides before any of these (findings.decide).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

TESTS = ('welch', 'permutation')
REPRODUCED, PARTLY, NOT_REPRODUCED = 'reproduced', 'partly', 'not reproduced'
UNDERPOWERED = 'inconclusive (underpowered)'
INCONCLUSIVE = 'inconclusive (regime not reached)'
OUTCOMES = (REPRODUCED, PARTLY, NOT_REPRODUCED, UNDERPOWERED, INCONCLUSIVE)
SHOWN, RULED_OUT, OPEN = 'shown', 'ruled out', 'open'
MAX_SPLITS = 200_000       # beyond this many group splits the permutation test samples them


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


def welch(a, b, shift: float = 0.0, alpha: float = 0.05) -> tuple[float, tuple[float, float]]:
  """(one-sided p of H0: mean(a) − mean(b) ≤ shift, (lower, upper)): the one-sided (1 − alpha)
  Welch bounds of mean(a) − mean(b), i.e. its (1 − 2·alpha) interval. Needs a spread in at
  least one group (`Comparison` uses the permutation test when a group has none)."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  diff = a.mean() - b.mean()
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  se2 = va + vb
  if se2 == 0:
    raise ValueError('Welch\'s test needs a spread in at least one group')
  se = math.sqrt(se2)
  df = se2 ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  p = float(scipy_stats.t.sf((diff - shift) / se, df))
  half = scipy_stats.t.ppf(1 - alpha, df) * se
  return p, (float(diff - half), float(diff + half))


@dataclasses.dataclass(frozen=True)
class _Splits:
  """Every way (or MAX_SPLITS sampled ways) to split n + m pooled values into groups of n and
  m: for each split, the sum of the values it puts in the first group and how many of them
  came from a."""
  sums: np.ndarray
  from_a: np.ndarray

  @classmethod
  def of(cls, a, b):
    pooled, n = np.concatenate([a, b]), len(a)
    total = len(pooled)
    if math.comb(total, n) <= MAX_SPLITS:
      idx = np.array(list(itertools.combinations(range(total), n)), np.int64)
    else:   # a sample, the observed split first (so p >= 1 / splits, as it must)
      rng = np.random.default_rng(0)
      idx = np.argsort(rng.random((MAX_SPLITS, total)), axis=1)[:, :n]
      idx[0] = np.arange(n)
    return cls(pooled[idx].sum(1), (idx < n).sum(1))


def permutation(a, b, shift: float = 0.0) -> float:
  """Exact one-sided permutation p of H0: mean(a) − mean(b) ≤ shift (the shift model: a − shift
  and b exchangeable): the share of all splits of the pooled values (a − shift, b) into groups
  of len(a) and len(b) whose difference of means is at least the observed one (complete
  separation of 4 vs 4 is 1/70 = 0.014; of 3 vs 3, 1/20 = 0.05; of 5 vs 5, 1/252)."""
  a, b = np.asarray(a, float) - shift, np.asarray(b, float)
  n, m = len(a), len(b)
  splits = _Splits.of(a, b)
  total = a.sum() + b.sum()
  observed = a.mean() - b.mean()
  d = splits.sums / n - (total - splits.sums) / m
  return float(np.mean(d >= observed - 1e-12 * max(1.0, abs(observed))))


def permutation_lower(a, b, alpha: float = 0.05) -> float:
  """The one-sided (1 − alpha) lower bound of mean(a) − mean(b) that inverts `permutation`: the
  largest shift the test still rejects (−inf when no split count can be below alpha).

  Shifting a by δ moves each split's difference of means linearly in δ, so each split starts
  counting against the observed one at its own threshold; the bound is the ⌈alpha·N⌉-th
  smallest threshold."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  n, m = len(a), len(b)
  splits = _Splits.of(a, b)
  total = a.sum() + b.sum()
  observed = a.mean() - b.mean()
  d0 = splits.sums / n - (total - splits.sums) / m
  k = splits.from_a
  slope = (n - k) / n + (n - k) / m          # > 0 unless the split is the observed one
  with np.errstate(divide='ignore', invalid='ignore'):
    thresholds = np.where(k == n, -np.inf, (observed - d0) / np.where(k == n, 1, slope))
  j = math.ceil(alpha * len(thresholds)) - 1
  return float(np.sort(thresholds)[j]) if j >= 0 else -math.inf


def holm(ps: Sequence[float], alpha: float = 0.05) -> list[bool]:
  """Holm's step-down rejections of k hypotheses at family-wise error alpha: sorted p-values
  p(1) ≤ ... ≤ p(k), reject while p(i) < alpha / (k − i + 1); nan p-values never reject."""
  ps = [1.0 if not np.isfinite(p) else float(p) for p in ps]
  reject = [False] * len(ps)
  for rank, i in enumerate(sorted(range(len(ps)), key=lambda i: ps[i])):
    if ps[i] >= alpha / (len(ps) - rank):
      break
    reject[i] = True
  return reject


@dataclasses.dataclass(frozen=True)
class Part:
  """One part of a claim: its status (SHOWN, RULED_OUT, OPEN) and the p-value of its test (for
  Holm's correction when some parts are shown and others not; 0 or 1 for an exact check)."""
  status: str
  p: float


def exact(holds: bool, fails: bool = True) -> Part:
  """A part decided without noise (a bit-identity, a count of compiled collectives): SHOWN when
  it holds, RULED_OUT when it does not (or OPEN when `fails` is False)."""
  return Part(SHOWN, 0.0) if holds else Part(RULED_OUT if fails else OPEN, 1.0)


def all_of(parts: Sequence) -> Part:
  """A part that holds when all of `parts` do (an intersection: no correction needed): SHOWN
  when every one is, RULED_OUT when any one is; its p the largest."""
  statuses = [part.status for part in parts]
  status = (SHOWN if all(s == SHOWN for s in statuses) else
            RULED_OUT if RULED_OUT in statuses else OPEN)
  return Part(status, max(part.p for part in parts))


def outcome(parts: Sequence, needs=None, alpha: float = 0.05) -> str:
  """A claim's outcome from its parts (Parts or Comparisons). Reproduced when every part is
  shown; partly when some part is shown after Holm's correction over the parts (so "any part"
  keeps its error rate at alpha); else not reproduced when a part is ruled out; else
  inconclusive (underpowered). `needs`: the effect the parts qualify, as the rules that name one
  word it ("reproduced if N and all of them; partly if N and one of them (Holm); not reproduced
  if N is ruled out; else inconclusive (underpowered)"): when it is not shown the outcome is not
  reproduced (it is ruled out) or underpowered; when it is, the parts alone decide reproduced
  or partly (Holm over the parts only), and otherwise the outcome is underpowered: `needs`
  shown by itself is not part of a claim reproduced."""
  if needs is not None:
    if needs.status != SHOWN:
      return NOT_REPRODUCED if needs.status == RULED_OUT else UNDERPOWERED
    found = outcome(parts, alpha=alpha)
    return found if found in (REPRODUCED, PARTLY) else UNDERPOWERED
  statuses = [part.status for part in parts]
  if statuses and all(s == SHOWN for s in statuses):
    return REPRODUCED
  held = holm([part.p for part in parts], alpha)
  if any(h and s == SHOWN for h, s in zip(held, statuses)):
    return PARTLY
  if RULED_OUT in statuses:
    return NOT_REPRODUCED
  return UNDERPOWERED


def with_trend(c: Comparison, rho: float, p: float, alpha: float = 0.05) -> Part:
  """A change between the two ends (`c`) that a monotone trend over every run (Spearman's rho,
  its one-sided p) confirms: SHOWN when both are; RULED_OUT when the change is."""
  if c.greater and rho > 0 and p < alpha:
    return Part(SHOWN, max(c.p, p))
  return Part(RULED_OUT if c.ruled_out else OPEN, max(c.p, p))


def one_sample(v, level: float, alpha: float = 0.05, below: bool = True) -> Part:
  """Whether the mean of `v` lies below `level` (above it when `below` is False): one-sample
  one-sided t-test; SHOWN when it rejects, RULED_OUT when the opposite one does. With no spread
  the values are exact, and so is the answer."""
  v = np.asarray(v, float)
  if len(v) < 2:
    return Part(OPEN, float('nan'))
  sign = 1.0 if below else -1.0
  d = sign * (level - v)                      # > 0: on the claimed side
  if np.ptp(d) == 0:
    return exact(d[0] > 0)
  t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
  p, p_against = scipy_stats.t.sf(t, len(d) - 1), scipy_stats.t.cdf(t, len(d) - 1)
  return Part(SHOWN if p < alpha else RULED_OUT if p_against < alpha else OPEN, float(p))


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Whether `a` is better than `b` by more than `min_effect` (see the module docstring); better
  is higher unless `higher_is_better` is False (a loss). `diff`, `bounds` and `p` are of the
  improvement of a over b (mean a − mean b, or mean b − mean a for a loss). `grain`: the
  metric's reading grain (0: exact), which selects the permutation test and widens the bounds."""
  a: np.ndarray
  b: np.ndarray
  min_effect: float
  test: str = 'welch'
  alpha: float = 0.05
  higher_is_better: bool = True
  grain: float = 0.0

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
  def test_used(self) -> str:
    """The declared test, or the permutation test where Welch's would have no spread to use
    (a group with none) or the metric has a grain."""
    a, b = self._oriented
    if self.test == 'permutation' or self.grain > 0 or np.ptp(a) == 0 or np.ptp(b) == 0:
      return 'permutation'
    return 'welch'

  @property
  def diff(self) -> float:
    a, b = self._oriented
    return float(a.mean() - b.mean()) if self.ok else float('nan')

  @property
  def bounds(self) -> tuple[float, float]:
    """The one-sided (1 − alpha) lower and upper bounds of the improvement (together the
    (1 − 2·alpha) interval), widened by the grain."""
    if not self.ok:
      return (float('nan'),) * 2
    a, b = self._oriented
    if self.test_used == 'welch':
      lo, hi = welch(a, b, alpha=self.alpha)[1]
    else:
      lo, hi = permutation_lower(a, b, self.alpha), -permutation_lower(b, a, self.alpha)
    return lo - self.grain, hi + self.grain

  ci = bounds

  def _p(self, shift: float) -> float:
    a, b = self._oriented
    if self.test_used == 'welch':
      return welch(a, b, shift)[0]
    return permutation(a, b, shift)

  @property
  def p(self) -> float:
    """One-sided p of H0: improvement ≤ min_effect (at min_effect + grain for a grained
    metric)."""
    return self._p(self.min_effect + self.grain) if self.ok else float('nan')

  @property
  def p_ruled_out(self) -> float:
    """One-sided p of H0: improvement ≥ min_effect (at min_effect − grain)."""
    if not self.ok:
      return float('nan')
    a, b = self._oriented
    flipped = dataclasses.replace(self, a=b, b=a, higher_is_better=True,
                                  min_effect=-self.min_effect)
    return flipped._p(-self.min_effect + self.grain)

  @property
  def greater(self) -> bool:
    """The rule: the test of "improvement ≤ min_effect" rejects at alpha (equivalently, the
    lower bound lies above min_effect)."""
    return self.ok and self.p < self.alpha

  @property
  def ruled_out(self) -> bool:
    """The minimum effect is excluded: the upper bound lies below it."""
    return self.ok and self.p_ruled_out < self.alpha

  @property
  def status(self) -> str:
    return SHOWN if self.greater else RULED_OUT if self.ruled_out else OPEN

  @property
  def part(self) -> Part:
    return Part(self.status, self.p)

  @property
  def absent(self) -> Part:
    """The claim that there is no improvement of the minimum effect: SHOWN when it is ruled
    out, RULED_OUT when it is shown."""
    status = {SHOWN: RULED_OUT, RULED_OUT: SHOWN, OPEN: OPEN}[self.status]
    return Part(status, self.p_ruled_out)

  def within(self, margin: float) -> bool:
    """Equivalence (two one-sided tests at alpha each): the (1 − 2·alpha) interval of the
    difference lies inside (−margin, margin)."""
    lo, hi = self.bounds
    return self.ok and -margin < lo and hi < margin

  def equivalence(self, margin: float) -> Part:
    """Equivalence within ±margin: SHOWN when `within(margin)`; RULED_OUT when the interval lies
    wholly outside it; p is the larger of the two one-sided tests' (TOST)."""
    lo, hi = self.bounds
    if not self.ok:
      return Part(OPEN, float('nan'))
    low = dataclasses.replace(self, min_effect=-margin).p
    high = dataclasses.replace(self, min_effect=margin).p_ruled_out
    status = (SHOWN if self.within(margin) else
              RULED_OUT if lo >= margin or hi <= -margin else OPEN)
    return Part(status, max(low, high))

  def text(self, a_name: str, b_name: str, digits: int = 4) -> str:
    """Every number the rule used, in one clause, in the metric's own sign."""
    if not self.ok:
      return (f'{a_name} vs {b_name}: too few finished seeds ({len(self.a)} and {len(self.b)}) '
              'to compare')
    f = lambda x: f'{x:.{digits}f}'
    lo, hi = self.bounds
    side = 'above' if self.higher_is_better else 'below'
    level = round(100 * (1 - 2 * self.alpha))
    grain = f', grain {f(self.grain)}' if self.grain else ''
    fallback = (' (no spread in a group: exact permutation test)'
                if self.test_used != self.test and not self.grain else '')
    m = self.min_effect
    said = {SHOWN: f'shown (its lower bound clears the minimum by {f(lo - m)})',
            RULED_OUT: f'ruled out (upper bound below it by {f(m - hi)})',
            # what would have changed the verdict
            OPEN: f'neither shown nor ruled out (shown had the lower bound been {f(m - lo)} '
                  f'higher, ruled out had the upper bound been {f(hi - m)} lower)'}[self.status]
    return (f'{a_name} {side} {b_name} by {f(self.diff)} ({level} % interval {f(lo)} to '
            f'{f(hi)}{grain}; {a_name} {f(np.mean(self.a))}, {b_name} {f(np.mean(self.b))}, '
            f'n = {len(self.a)}, {len(self.b)}); {self.test_used} p = {self.p:.3f}{fallback} '
            f'for an improvement ≤ the minimum effect {f(self.min_effect)}, vs α = '
            f'{self.alpha}: {said}')


def compare(a_members, b_members, key, min_effect, test='welch', alpha=0.05,
            higher_is_better=True, grain=0.0) -> Comparison:
  """Whether group a is better than group b on `key` (each a list of runs): higher, or lower
  for a metric where lower is better (a loss)."""
  return Comparison(values(a_members, key), values(b_members, key), min_effect, test, alpha,
                    higher_is_better, grain)


def any_cell(comparisons: Sequence[Comparison], alpha: float = 0.05) -> list[bool]:
  """Which of several cells' comparisons are shown after Holm's correction (a rule that passes
  when any cell passes)."""
  return [c.ok and r for c, r in zip(comparisons, holm([c.p for c in comparisons], alpha))]


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
