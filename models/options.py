"""The model options: config keys that change the model around any norm, or replace it.

Each is declared once here (its key, paper, and what it needs whatever the family); a family
lists the options it implements (`Family.options`), and `models.check_model_config` refuses an
option a family does not take in one loop. At most one option of each `exclusive` group.
"""

from __future__ import annotations

from models.spec import Key, Option, flag


def _needs_residual(values):
  if not values['residual']:
    return ('model.skipinit gates residual branches, and residual=False has none (every block '
            'would output 0 at init); use residual=True')
  return None


REPLACES_NORM = 'replaces normalization'   # the exclusive group of Fixup and NF-ResNets
KERNEL = 'reparameterizes the convolution kernels'


def _replaces_norm(what: str):
  def check(values):
    from models import norms   # noqa: PLC0415 (norms imports flax; the check runs late)
    if not norms.NORMS[values['norm']].identity or not values['residual']:
      return (f'{what} replaces normalization in a residual net: it needs model.norm=none '
              f'and residual=True (got norm={values["norm"]}, residual={values["residual"]})')
    return None
  return check


OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option(flag('skipinit', 'a learnable scalar, init 0, on each residual branch', before=False),
           'De & Smith 2020 (SkipInit), Bachlechner et al. 2020 (ReZero)', _needs_residual),
    Option(flag('weight_std', 'weight-standardized convolutions (BiT\'s StdConv)', before=False),
           'Qiao et al. 2019', exclusive=KERNEL),
    Option(flag('weight_norm', 'convolutions wrapped in flax\'s WeightNorm', before=False),
           'Salimans & Kingma 2016', exclusive=KERNEL),
    Option(flag('spectral_norm', 'convolutions wrapped in flax\'s SpectralNorm', before=False),
           'Miyato et al. 2018', exclusive=KERNEL),
    Option(flag('qk_norm', 'LayerNorm on each head\'s queries and keys (flax normalize_qk)',
                before=False), 'Dehghani et al. 2023'),
    Option(flag('deepnorm', 'post-LN N(alpha x + f(x)), alpha = (2N)^(1/4), value/out/MLP init '
                'times (8N)^(-1/4)', before=False), 'Wang et al. 2022'),
    # replace the norm (norm=none), with their own branch scalars and initialization: the
    # invariant tests do not switch them on around every norm; they have their own tests
    Option(flag('fixup', 'Fixup initialization (needs norm=none)', before=False),
           'Zhang, Dauphin & Ma 2019', _replaces_norm('model.fixup makes Fixup initialization, '
                                                      'which'),
           exclusive=REPLACES_NORM, switches=False),
    Option(Key('nf_alpha', 0.0, '> 0: a Normalizer-Free ResNet, h + alpha * f(h / beta) (paper: '
               '0.2; needs norm=none)', low=0, before=0.0), 'Brock, De & Smith 2021',
           _replaces_norm('model.nf_alpha makes a Normalizer-Free ResNet, which'),
           exclusive=REPLACES_NORM, switches=False),
)}

# options that Fixup and NF-ResNets bring their own version of
_BRANCH_SCALARS = ('skipinit',)


def check(values, family) -> None:
  """The options set in `values` (a model config): each taken by `family`, each's own needs,
  and no two of one exclusive group (an option that replaces the norm combines with no branch
  scalar or kernel option either)."""
  from errors import ConfigError   # noqa: PLC0415
  on = [o for o in OPTIONS.values() if o.on(values)]
  for o in on:
    if o.name not in family.options:
      takes = [f for f in _families() if o.name in _families()[f].options]
      raise ConfigError(f'model.{o.name} ({o.key.meaning}; {o.paper}) is not implemented by '
                        f'{family.name}; families that take it: {", ".join(takes)}')
  for o in on:
    reason = o.check(values)
    if reason:
      raise ConfigError(reason)
  for o in on:
    if o.exclusive == REPLACES_NORM:
      others = [p.name for p in on if p is not o and (p.exclusive in (REPLACES_NORM, KERNEL)
                                                       or p.name in _BRANCH_SCALARS)]
      if others:
        raise ConfigError(f'model.{o.name} {REPLACES_NORM}, with its own branch scalars and '
                          f'initialization: combine it with none of {", ".join(others)}')
  for group in {o.exclusive for o in on if o.exclusive}:
    clash = [o.name for o in on if o.exclusive == group]
    if len(clash) > 1:
      raise ConfigError(f'model.{clash[0]} and model.{clash[1]} both {group}: choose one')


def switches() -> list[str]:
  """The boolean options the invariant tests switch on around every norm."""
  return [name for name, o in OPTIONS.items() if o.switches]


def _families():
  import models   # noqa: PLC0415 (the registry collects the families, which import this)
  return models.FAMILIES
