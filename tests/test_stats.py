"""The verdict machinery (experiments/stats.py, findings.decide) against independent
computations (scipy's own tests), its error rate under no difference, and its outcomes."""

import types

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments import findings, stats


def test_welch_p_and_interval_equal_scipys():
  rng = np.random.default_rng(0)
  for _ in range(20):
    a, b = rng.normal(0.3, 1, size=rng.integers(2, 6)), rng.normal(0, 2, size=rng.integers(2, 6))
    p, (lo, hi) = stats.welch(a, b)
    ref = scipy_stats.ttest_ind(a, b, equal_var=False, alternative='greater')
    assert p == pytest.approx(ref.pvalue, rel=1e-9)
    two = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (lo, hi) == (pytest.approx(two.low, rel=1e-9), pytest.approx(two.high, rel=1e-9))


def test_exact_permutation_p_equals_scipys_exhaustive_test():
  rng = np.random.default_rng(1)
  for n in (3, 4, 5):
    a, b = rng.normal(0.5, 1, n), rng.normal(0, 1, n)
    ref = scipy_stats.permutation_test(
        (a, b), lambda x, y: np.mean(x) - np.mean(y), permutation_type='independent',
        n_resamples=np.inf, alternative='greater').pvalue
    assert stats.permutation(a, b) == pytest.approx(ref, rel=1e-9)
  # complete separation: 1 / C(8, 4) and 1 / C(6, 3)
  assert stats.permutation([5, 6, 7, 8], [1, 2, 3, 4]) == pytest.approx(1 / 70)
  assert stats.permutation([4, 5, 6], [1, 2, 3]) == pytest.approx(1 / 20)


def test_with_no_real_difference_the_rule_fires_at_most_alpha_and_the_old_rule_did_not():
  """3 seeds per arm, equal means: the rule (min effect 0) fires one-sided at ~alpha; the rule it
  replaced (a − b > the larger std) fired at ~10 %."""
  rng = np.random.default_rng(2)
  trials = 4000
  new = old = 0
  for _ in range(trials):
    a, b = rng.normal(size=3), rng.normal(size=3)
    new += stats.Comparison(a, b, 0.0).greater
    old += a.mean() - b.mean() > max(a.std(ddof=1), b.std(ddof=1))
  assert new / trials < 0.065
  assert old / trials > 0.08


def test_a_discrete_metric_with_no_spread_needs_the_minimum_effect():
  """Accuracy on 360 images, every seed the same: one image (0.28 points) is exact but below a
  1-point minimum effect; four images are above it."""
  same = np.full(3, 0.9)
  one = stats.Comparison(same + 1 / 360, same, min_effect=0.01)
  four = stats.Comparison(same + 4 / 360, same, min_effect=0.01)
  assert one.p == 0 and not one.greater
  assert four.greater
  assert 'minimum effect 0.0100' in one.text('a', 'b') and one.text('a', 'b').endswith('not shown')
  assert one.text('a', 'b').startswith('a above b by 0.0028')


def test_compare_orients_losses_and_needs_two_seeds():
  runs = lambda vs: [{'state': 'finished', 'loss': v} for v in vs] + [
      {'state': 'diverged', 'loss': 1e9}]
  better = stats.compare(runs([0.1, 0.11, 0.12]), runs([0.3, 0.31, 0.33]), 'loss', 0.05,
                         higher_is_better=False)
  assert better.greater and better.diff == pytest.approx(0.2033333, rel=1e-5)
  # stated in the metric's own sign: a's loss is below b's, means as measured
  assert better.text('a', 'b').startswith('a below b by 0.2033 (95 % CI ')
  assert 'a 0.1100, b 0.3133' in better.text('a', 'b')
  too_few = stats.compare(runs([0.1]), runs([0.3, 0.31]), 'loss', 0.05, higher_is_better=False)
  assert not too_few.greater and 'too few finished seeds' in too_few.text('a', 'b')
  with pytest.raises(ValueError, match='welch, permutation'):
    stats.Comparison(np.ones(2), np.ones(2), 0.0, test='sign')


def test_mean_ci_is_the_t_interval():
  v = [1.0, 2.0, 4.0]
  m, lo, hi = stats.mean_ci(v)
  ref = scipy_stats.t.interval(0.95, 2, loc=np.mean(v), scale=scipy_stats.sem(v))
  assert (m, lo, hi) == (pytest.approx(7 / 3), pytest.approx(ref[0]), pytest.approx(ref[1]))


def test_a_gate_that_finds_the_regime_unreached_makes_the_verdict_inconclusive():
  claim = types.SimpleNamespace(verdict=lambda keys, groups: ('reproduced', 'a beat b.'),
                                gate=lambda keys, groups: ['train loss 0.4 > 0.05 (not converged)'])
  verdict, reason = findings.decide(claim, [], {})
  assert verdict == stats.INCONCLUSIVE
  assert 'not converged' in reason and 'would say "reproduced"' in reason
  claim.gate = lambda keys, groups: []
  assert findings.decide(claim, [], {}) == ('reproduced', 'a beat b.')


def test_equivalence_needs_the_whole_interval_inside_the_margin():
  rng = np.random.default_rng(3)
  a = 1.0 + 0.01 * rng.normal(size=4)
  close = stats.Comparison(a, a + 0.005, 0.0)
  assert close.within(0.05) and not close.within(0.001)
  noisy = stats.Comparison(1 + rng.normal(size=3), 1 + rng.normal(size=3), 0.0)
  lo, hi = noisy.ci
  assert noisy.within(max(-lo, hi) + 1e-9) and not noisy.within(max(-lo, hi) - 1e-9)
