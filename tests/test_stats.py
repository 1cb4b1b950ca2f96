"""The verdict machinery (experiments/stats.py, findings.decide) against independent
computations (scipy's own tests), its error rate under no difference, and its five outcomes on
constructed runs."""

import types

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments import findings, stats


def _scipy_permutation_p(a, b):
  return scipy_stats.permutation_test(
      (a, b), lambda x, y: np.mean(x) - np.mean(y), permutation_type='independent',
      n_resamples=np.inf, alternative='greater').pvalue


def test_welch_shifted_p_and_interval_equal_scipys():
  rng = np.random.default_rng(0)
  for _ in range(20):
    a, b = rng.normal(0.3, 1, size=rng.integers(2, 7)), rng.normal(0, 2, size=rng.integers(2, 7))
    shift = rng.uniform(-1, 1)
    p, (lo, hi) = stats.welch(a, b, shift)
    ref = scipy_stats.ttest_ind(a - shift, b, equal_var=False, alternative='greater')
    assert p == pytest.approx(ref.pvalue, rel=1e-9)
    # the interval matching a one-sided test at 0.05: each end a one-sided 95 % bound
    two = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.90)
    assert (lo, hi) == (pytest.approx(two.low, rel=1e-9), pytest.approx(two.high, rel=1e-9))
  with pytest.raises(ValueError, match='spread'):
    stats.welch([1.0, 1.0], [2.0, 2.0])


def test_exact_permutation_p_equals_scipys_exhaustive_test_also_shifted():
  rng = np.random.default_rng(1)
  for n in (3, 4, 5):
    a, b = rng.normal(0.5, 1, n), rng.normal(0, 1, n + 1)
    assert stats.permutation(a, b) == pytest.approx(_scipy_permutation_p(a, b), rel=1e-9)
    assert stats.permutation(a, b, 0.3) == pytest.approx(_scipy_permutation_p(a - 0.3, b),
                                                         rel=1e-9)
  # complete separation: 1 / C(8, 4), 1 / C(6, 3), 1 / C(10, 5)
  assert stats.permutation([5, 6, 7, 8], [1, 2, 3, 4]) == pytest.approx(1 / 70)
  assert stats.permutation([4, 5, 6], [1, 2, 3]) == pytest.approx(1 / 20)
  assert stats.permutation([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == pytest.approx(1 / 252)


def test_the_permutation_bound_is_where_scipys_test_stops_rejecting():
  rng = np.random.default_rng(2)
  for n, m in ((5, 5), (4, 6), (6, 6)):
    a, b = rng.normal(1.0, 1, n), rng.normal(0, 1, m)
    lo = stats.permutation_lower(a, b)
    assert np.isfinite(lo)
    assert _scipy_permutation_p(a - (lo - 1e-6), b) < 0.05
    assert _scipy_permutation_p(a - (lo + 1e-6), b) >= 0.05
  # 3 vs 3: no split count is below 0.05, so no shift is ever rejected
  assert stats.permutation_lower([4, 5, 6], [1, 2, 3]) == -np.inf


def test_holm_matches_the_step_down_by_hand_and_keeps_any_cell_rules_at_alpha():
  assert stats.holm([0.01, 0.04, 0.03]) == [True, False, False]   # 0.01 < .05/3; 0.03 > .05/2
  assert stats.holm([0.01, 0.02, 0.04]) == [True, True, True]     # .0167, .025, .05
  assert stats.holm([0.2, float('nan')]) == [False, False]
  rng = np.random.default_rng(3)
  trials, cells = 1500, 4
  held = raw = 0
  for _ in range(trials):
    cs = [stats.Comparison(rng.normal(size=5), rng.normal(size=5), 0.0) for _ in range(cells)]
    held += any(stats.any_cell(cs))
    raw += any(c.greater for c in cs)
  assert held / trials < 0.065               # family-wise: at most alpha
  assert raw / trials > 0.14                 # uncorrected: ~1 − 0.95^4 = 0.19


def test_with_no_real_difference_the_rule_fires_at_most_alpha_and_the_old_one_did_not():
  """5 seeds per arm. A true improvement of exactly the minimum effect (0.5 sd) is "no
  difference" for the shifted null: the rule fires at ~alpha; the rule it replaced (the minimum
  on the point estimate beside an unshifted test) fired 3-4 times as often (17 %). With equal means
  and a minimum of 0 both fire at ~alpha; a discrete metric (the permutation path) too."""
  rng = np.random.default_rng(4)
  trials = 3000
  at_min = old = at_zero = 0
  for _ in range(trials):
    a, b = rng.normal(0.5, 1, size=5), rng.normal(size=5)
    at_min += stats.Comparison(a, b, 0.5).greater
    old += a.mean() - b.mean() >= 0.5 and stats.welch(a, b)[0] < 0.05
    at_zero += stats.Comparison(rng.normal(size=5), rng.normal(size=5), 0.0).greater
  assert at_min / trials < 0.065 and at_zero / trials < 0.065
  assert old / trials > 0.12
  discrete = sum(stats.Comparison(rng.integers(0, 3, 5) / 100, rng.integers(0, 3, 5) / 100, 0.0,
                                  grain=0.0, test='permutation').greater for _ in range(600))
  assert discrete / 600 < 0.065


def test_zero_spread_gets_no_exact_p_from_welch():
  """lstm_norms before: every LN seed reached the target at step 60, every no-norm seed at 80
  (the 20-step logging grain); Welch said p = 0.000 with a point interval. Now: 3 seeds a side
  can never pass (the exact test's smallest p is 1/20); 5 can (1/252); declared grain 20 widens
  the bounds by one logging interval, so a 20-step difference shows nothing above 0."""
  ln, none = np.full(3, 60.0), np.full(3, 80.0)
  three = stats.Comparison(ln, none, 0.0, higher_is_better=False)
  assert three.test_used == 'permutation' and three.p == pytest.approx(0.05)
  assert not three.greater and three.status == stats.OPEN
  assert 'no spread in a group: exact permutation test' in three.text('LN', 'none')
  five = stats.Comparison(np.full(5, 60.0), np.full(5, 80.0), 0.0, higher_is_better=False)
  assert five.p == pytest.approx(1 / 252) and five.greater
  grained = stats.Comparison(np.full(5, 60.0), np.full(5, 80.0), 0.0, higher_is_better=False,
                             grain=20.0)
  assert grained.bounds == (pytest.approx(0.0), pytest.approx(40.0)) and not grained.greater


def test_a_discrete_metric_with_no_spread_needs_the_minimum_effect_on_its_bound():
  """Accuracy on 360 images, every one of 5 seeds the same: one image (0.28 points) is below a
  1-point minimum, so the effect is ruled out; four images (1.1 points) are shown."""
  same = np.full(5, 0.9)
  one = stats.Comparison(same + 1 / 360, same, min_effect=0.01)
  four = stats.Comparison(same + 4 / 360, same, min_effect=0.01)
  assert one.status == stats.RULED_OUT and four.status == stats.SHOWN
  assert 'minimum effect 0.0100' in one.text('a', 'b')
  assert one.text('a', 'b').startswith('a above b by 0.0028 (90 % interval 0.0028 to 0.0028')
  # each verdict says how far its bound was from changing it
  assert one.text('a', 'b').endswith(f'ruled out (upper bound below it by {0.01 - 1 / 360:.4f})')
  assert four.text('a', 'b').endswith(
      f'shown (its lower bound clears the minimum by {4 / 360 - 0.01:.4f})')
  spread = np.arange(5.0)
  open_ = stats.Comparison(spread + 0.5, spread, min_effect=0.5)   # the interval centred on it
  lo, hi = open_.bounds
  assert open_.status == stats.OPEN and lo < 0.5 < hi
  assert open_.text('a', 'b').endswith(
      f'neither shown nor ruled out (shown had the lower bound been {0.5 - lo:.4f} higher, '
      f'ruled out had the upper bound been {hi - 0.5:.4f} lower)')


def test_compare_orients_losses_and_needs_two_seeds():
  runs = lambda vs: [{'state': 'finished', 'loss': v} for v in vs] + [
      {'state': 'diverged', 'loss': 1e9}]
  better = stats.compare(runs([0.1, 0.11, 0.12]), runs([0.3, 0.31, 0.33]), 'loss', 0.05,
                         higher_is_better=False)
  assert better.greater and better.diff == pytest.approx(0.2033333, rel=1e-5)
  # stated in the metric's own sign: a's loss is below b's, means as measured
  assert better.text('a', 'b').startswith('a below b by 0.2033 (90 % interval ')
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


def _claim(parts):
  """A claim whose verdict is the outcome of its comparisons' statuses."""
  return types.SimpleNamespace(
      verdict=lambda keys, groups: (stats.outcome(parts), 'constructed'))


def test_five_outcomes_on_constructed_runs():
  rng = np.random.default_rng(5)
  noise = lambda mean, n=5, sd=0.01: mean + sd * rng.standard_normal(n)
  shown = stats.Comparison(noise(1.0), noise(0.5), 0.1)              # +0.5 against 0.1
  ruled_out = stats.Comparison(noise(0.52), noise(0.5), 0.1)         # +0.02, tight
  open_ = stats.Comparison(noise(0.6, 3, 0.3), noise(0.5, 3, 0.3), 0.1)   # 3 noisy seeds
  assert (shown.status, ruled_out.status, open_.status) == (
      stats.SHOWN, stats.RULED_OUT, stats.OPEN)
  cases = {stats.REPRODUCED: [shown, shown], stats.PARTLY: [shown, ruled_out],
           stats.NOT_REPRODUCED: [ruled_out, open_], stats.UNDERPOWERED: [open_, open_]}
  for expected, parts in cases.items():
    assert findings.decide(_claim(parts), [], {})[0] == expected
  gated = _claim([shown, shown])
  gated.gate = lambda keys, groups: ['train loss 0.4 > 0.05 (not converged)']
  verdict, reason = findings.decide(gated, [], {})
  assert verdict == stats.INCONCLUSIVE
  assert 'not converged' in reason and 'would say "reproduced"' in reason
  assert set(cases) | {verdict} == set(stats.OUTCOMES)


def test_equivalence_needs_the_whole_matching_interval_inside_the_margin():
  rng = np.random.default_rng(6)
  a = 1.0 + 0.01 * rng.normal(size=5)
  close = stats.Comparison(a, a + 0.005, 0.0)
  assert close.within(0.05) and not close.within(0.001)
  assert close.equivalence(0.05).status == stats.SHOWN
  assert stats.Comparison(a + 1, a, 0.0).equivalence(0.05).status == stats.RULED_OUT
  noisy = stats.Comparison(1 + rng.normal(size=3), 1 + rng.normal(size=3), 0.0)
  lo, hi = noisy.bounds
  two = scipy_stats.ttest_ind(noisy.a, noisy.b, equal_var=False).confidence_interval(0.90)
  assert (lo, hi) == (pytest.approx(two.low), pytest.approx(two.high))
  assert noisy.within(max(-lo, hi) + 1e-9) and not noisy.within(max(-lo, hi) - 1e-9)
  assert noisy.equivalence(max(-lo, hi) - 1e-9).status == stats.OPEN
  # TOST: p below alpha exactly when the interval lies inside the margin
  for margin in (max(-lo, hi) - 1e-6, max(-lo, hi) + 1e-6):
    assert (noisy.equivalence(margin).p < 0.05) == noisy.within(margin)


def test_partly_needs_a_part_shown_after_holm_and_needs_names_the_effect_first():
  shown_at = lambda p: stats.Part(stats.SHOWN, p)
  open_ = stats.Part(stats.OPEN, 0.5)
  assert stats.outcome([shown_at(0.03), open_]) == stats.UNDERPOWERED    # 0.03 > 0.05 / 2
  assert stats.outcome([shown_at(0.02), open_]) == stats.PARTLY
  assert stats.outcome([shown_at(0.03), shown_at(0.04)]) == stats.REPRODUCED   # all: no penalty
  ruled = stats.Part(stats.RULED_OUT, 0.9)
  assert stats.outcome([shown_at(0.001)], needs=ruled) == stats.NOT_REPRODUCED
  assert stats.outcome([shown_at(0.001)], needs=open_) == stats.UNDERPOWERED
  # the needed effect shown by itself reproduces nothing (every rule naming one says "partly if
  # N and one of the others"); Holm runs over the others alone (0.03 > 0.05 / 2 > 0.02)
  assert stats.outcome([ruled], needs=shown_at(0.001)) == stats.UNDERPOWERED
  assert stats.outcome([ruled, open_], needs=shown_at(0.001)) == stats.UNDERPOWERED
  assert stats.outcome([shown_at(0.02), ruled], needs=shown_at(0.0)) == stats.PARTLY
  assert stats.outcome([shown_at(0.03), open_], needs=shown_at(0.0)) == stats.UNDERPOWERED
  assert stats.outcome([shown_at(0.03), shown_at(0.04)], needs=shown_at(0.0)) == \
      stats.REPRODUCED
  assert stats.exact(True).status == stats.SHOWN and stats.exact(False).status == stats.RULED_OUT


def test_absence_of_an_effect_is_shown_only_when_the_effect_is_ruled_out():
  rng = np.random.default_rng(7)
  flat = stats.Comparison(0.5 + 0.01 * rng.normal(size=5), 0.5 + 0.01 * rng.normal(size=5), 0.1)
  drop = stats.Comparison(0.9 + 0.01 * rng.normal(size=5), 0.5 + 0.01 * rng.normal(size=5), 0.1)
  assert flat.absent.status == stats.SHOWN and drop.absent.status == stats.RULED_OUT
  # its p is the test of "improvement >= min effect": scipy's Welch on the shifted groups
  ref = scipy_stats.ttest_ind(flat.a - 0.1, flat.b, equal_var=False, alternative='less').pvalue
  assert flat.absent.p == pytest.approx(ref, rel=1e-9)


def test_one_sample_bound_is_scipys_t_test():
  rng = np.random.default_rng(8)
  v = 0.8 + 0.1 * rng.normal(size=5)
  part = stats.one_sample(v, 1.0)
  ref = scipy_stats.ttest_1samp(v, 1.0, alternative='less').pvalue
  assert part.p == pytest.approx(ref, rel=1e-9) and part.status == stats.SHOWN
  assert stats.one_sample(v, 0.5).status == stats.RULED_OUT
  assert stats.one_sample(v, 0.5, below=False).status == stats.SHOWN
  assert stats.one_sample(np.full(3, 0.2), 1.0).status == stats.SHOWN     # exact, no spread
