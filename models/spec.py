"""The declarations everything else is derived from: a config key, a norm, a model option, a
model family, a speed field. Each is declared once, beside the code it describes; config
defaults, value checks, the keys an old workdir lacks, README's tables and the tests'
configuration space are read off these declarations (`models/__init__.py` collects them).

Importing this module starts no JAX backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from errors import ConfigError


class _Always:
  """`Key.before` for a key every config has had: no old workdir lacks it."""

  def __repr__(self):
    return 'ALWAYS'


ALWAYS = _Always()


@dataclasses.dataclass(frozen=True)
class Key:
  """A config key: its name, default, one-line meaning and the values it may take (`choices`
  for names; `low`/`high` for numbers, `low_ok` whether `low` itself is allowed). `before`: the
  value that reproduces runs written before the key existed (a workdir lacking it reads so)."""
  name: str
  default: Any
  meaning: str
  choices: tuple = ()
  low: float | None = None
  high: float | None = None
  low_ok: bool = True
  before: Any = ALWAYS

  def check(self, value, prefix: str = 'model.') -> None:
    """One line naming the key and what it allows, when `value` is not allowed."""
    if self.choices:
      if value not in self.choices:
        raise ConfigError(f'unknown {prefix}{self.name} {value!r}; valid: '
                          + ', '.join(str(c) for c in self.choices))
      return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or self.low is None:
      return
    low_fails = value < self.low if self.low_ok else value <= self.low
    if low_fails or (self.high is not None and value > self.high):
      allowed = f'{">=" if self.low_ok else ">"} {self.low}'
      allowed += f' and <= {self.high}' if self.high is not None else ''
      raise ConfigError(f'{prefix}{self.name} must be {allowed}; got {value}')

  @property
  def allowed(self) -> str:
    """The allowed values in words (README's tables)."""
    if self.choices:
      return ' \\| '.join(str(c) for c in self.choices)
    if self.low is None:
      return 'true \\| false' if isinstance(self.default, bool) else 'any'
    out = f'{">=" if self.low_ok else ">"} {self.low:g}'
    return out + (f', <= {self.high:g}' if self.high is not None else '')


def positive(name, default, meaning, **kw) -> Key:
  return Key(name, default, meaning, low=0, low_ok=False, **kw)


def at_least(low, name, default, meaning, **kw) -> Key:
  return Key(name, default, meaning, low=low, **kw)


def flag(name, meaning, **kw) -> Key:
  return Key(name, False, meaning, **kw)


@dataclasses.dataclass(frozen=True)
class NormSpec:
  """A norm in the registry: its module, its own config keys, how it builds, and the facts
  builders and config checks ask for. The defaults describe a per-token norm; each entry
  states where it differs.

  build(values, layout, devices) -> the module's keyword arguments, from `values` (a mapping of
  every model key to its value) for `layout` (image | sequence | causal) on `devices`."""
  module: type
  paper: str
  pools: str                    # what it pools its statistics over, in words (README)
  build: Callable[[Mapping, str, int], dict] = lambda values, layout, devices: {}
  keys: tuple[Key, ...] = ()    # its own knobs (a key shared by several norms: the same Key)
  has_shift: bool = True        # adds a learned per-feature bias: a bias before it is redundant
  running_stats: bool = False   # keeps running averages: eval mode computes something else
  causal_ok: bool = True        # can be made causal (an LM's position t sees no t' > t)
  erases_position_mean: bool = False  # its output, per example and feature, has a fixed mean
  #                               over the positions it pools: mean-pooling it loses the input
  recurrent: bool = True        # the LSTM implements it inside its recurrence (running_stats:
  #                               as recurrent BN, Cooijmans et al. 2016)
  identity: bool = False        # computes the identity: no normalization at all
  plain_gain: Callable[[Mapping], float] | None = None  # the factor by which one such norm
  #                               scales a small signal at init (None: none, it normalizes)


@dataclasses.dataclass(frozen=True)
class Option:
  """A model option: a config key that changes the model around any norm (or replaces it).
  `check(values) -> reason | None` refuses combinations that cannot work, whatever the family;
  `exclusive`: options sharing a group are refused together (at most one per group)."""
  key: Key
  paper: str
  check: Callable[[Mapping], str | None] = lambda values: None
  exclusive: str = ''
  switches: bool = True         # a boolean the invariant tests turn on across the space

  @property
  def name(self) -> str:
    return self.key.name

  def on(self, values: Mapping) -> bool:
    return bool(values[self.name])


@dataclasses.dataclass(frozen=True)
class SpeedField:
  """A speed formulation: the same function computed differently. `auto` becomes `fast` on the
  backends in `measured_on` (where benchmarks/RESULTS.md shows it helps; with one device only
  if `one_device`) and `portable` elsewhere."""
  key: Key
  fast: str
  portable: str
  measured_on: tuple[str, ...] = ('cpu',)
  one_device: bool = False

  def resolve(self, value: str, backend: str, devices: int, measured: bool) -> str:
    if value != 'auto':
      return value
    helps = measured and backend in self.measured_on and (devices == 1 or not self.one_device)
    return self.fast if helps else self.portable


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family: everything the registry, the config checks and the tests need to know.

  build(cfg, dataset, *, devices, speed) -> the flax module, from the validated model config
  (never rewritten), the dataset's metadata, the number of devices the batch is split over and
  the resolved speed choices {key: choice}.
  data: the kinds of data it takes (Dataset.kind: image | sequence | tokens).
  options: the names of the model options (models.options.OPTIONS) it implements.
  speed: {speed field name: whether `auto` may pick its fast choice for this family (measured)}.
  branches: a regex of the parameter paths inside its residual branches (SkipInit's test).
  """
  name: str
  about: str
  build: Callable[..., Any]
  data: tuple[str, ...]
  keys: tuple[Key, ...] = ()
  options: tuple[str, ...] = ()
  speed: Mapping[str, bool] = dataclasses.field(default_factory=dict)
  branches: str = ''
  compute_dtypes: tuple[str, ...] = ('float32',)
