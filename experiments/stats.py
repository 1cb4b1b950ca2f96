"""Statistics the claims' verdicts share: a group's mean and spread over seeds, and when one
group is clearly above another."""

from __future__ import annotations

import numpy as np


def group_stat(members, key='train_loss'):
  """(mean, sample std) over the finished runs of a group; (nan, nan) when none finished."""
  values = [r[key] for r in members if r['state'] == 'finished' and r[key] is not None]
  if not values:
    return float('nan'), float('nan')
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def clearly_greater(a, b) -> bool:
  """a > b by more than the larger of the two seed spreads (a, b: (mean, std))."""
  return a[0] - b[0] > max(a[1], b[1])


def lookup(group_keys, groups, **values) -> list:
  """The runs of the group whose swept keys equal `values` (keys given as dotted names; keys not
  swept are ignored); [] when there is none."""
  index = {k: i for i, k in enumerate(group_keys)}
  for key, members in groups.items():
    if all(key[index[k]] == v for k, v in values.items() if k in index):
      return members
  return []
