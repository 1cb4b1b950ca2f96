"""The model registry: every family declared in a module of this package, collected by name.

A family is one module exporting `FAMILIES`, a tuple of `models.spec.Family` declarations
(builder, keys, the data it takes, the options it implements, its speed fields, where its
residual branches are). Adding a family is writing that module: nothing here lists families.

Every model is a pure Flax module called as `model.apply(variables, inputs, train=..., mask=...)`
that returns logits. The train loop calls `build_model` (through `training.experiment`); it
never branches on the family, and nothing in models/ or training/ compares a family's or a
norm's name: they ask the declarations.
"""

from __future__ import annotations

import importlib
import pkgutil

import flax.linen as nn

from errors import ConfigError
from models import backend, norms, options
from models.spec import ALWAYS, Family, Key

FAMILIES: dict[str, Family] = {}
for _info in pkgutil.iter_modules(__path__):
  if _info.name.startswith('_'):
    continue
  _module = importlib.import_module(f'{__name__}.{_info.name}')
  for _family in getattr(_module, 'FAMILIES', ()):
    FAMILIES[_family.name] = _family

COMPUTE_DTYPES = ('float32', 'bfloat16')
# the keys every model config has, whatever its family (name, norm, residual and width are set
# by each config file; the defaults here are what common.model fills in for the rest)
COMMON_KEYS = (
    Key('name', None, 'the model family', choices=tuple(FAMILIES)),
    Key('norm', None, 'the normalization (models/norms.py)', choices=tuple(norms.NORMS)),
    Key('residual', True, 'False: no skip connections'),
    Key('width', None, 'ResNet: first-stage filters; LSTM: hidden size; Transformer, ViT: '
        'd_model', low=0, low_ok=False),
    Key('compute_dtype', 'float32', 'convs/matmuls in bf16, params + norm statistics float32',
        choices=COMPUTE_DTYPES, before='float32'),
)


def shared_keys() -> list[Key]:
  """The keys of every model config, family keys aside: common, norms', options', speed."""
  return [*COMMON_KEYS, *norms.keys(), *(o.key for o in options.OPTIONS.values()),
          *(f.key for f in backend.SPEED.values())]


def all_keys() -> list[Key]:
  """Every model key any family declares (a key shared by families: the first one)."""
  out = {k.name: k for k in shared_keys()}
  for family in FAMILIES.values():
    for k in family.keys:
      out.setdefault(k.name, k)
  return list(out.values())


def later_keys() -> dict[str, object]:
  """{model.key: the value that reproduces runs written before the key existed}."""
  return {f'model.{k.name}': k.before for k in all_keys() if k.before is not ALWAYS}


def family_of(model_config) -> Family:
  name = model_config.name
  if name not in FAMILIES:
    raise ConfigError(f'unknown model {name!r}; valid models: {", ".join(FAMILIES)}')
  return FAMILIES[name]


def check_model_config(model_config) -> Family:
  """Every name and value of `model_config`, without building anything: the family, the
  norm, each key against its declaration, the compute dtype and the options the family takes.
  Returns the family."""
  family = family_of(model_config)
  norms.check_norm_name(model_config.norm)
  for key in (*shared_keys()[len(('name', 'norm')):], *family.keys):
    if key.name in model_config:
      key.check(model_config[key.name])
  if model_config.compute_dtype not in family.compute_dtypes:
    raise ConfigError(f'model.compute_dtype={model_config.compute_dtype} is not implemented '
                      f'by {family.name}; it computes in {", ".join(family.compute_dtypes)}')
  options.check(model_config, family)
  return family


def resolve_speed(model_config, backend_name: str, devices: int) -> dict:
  """{speed field: concrete choice} for the fields of `model_config`'s family on `backend_name`
  with `devices`: `auto` becomes the fast choice only where it was measured to help
  (models/backend.py; numbers in benchmarks/RESULTS.md)."""
  return backend.resolve(model_config, family_of(model_config).speed, backend_name, devices)


def depends_on_devices(model_config) -> bool:
  """Whether the function the model computes in training depends on how many devices the batch
  is split over (per-device BatchNorm: one statistics group per device). Such a run resumes
  only on as many devices as it started on."""
  return (norms.NORMS[model_config.norm].running_stats
          and model_config.bn_scope == 'per_device')


def build(model_config, dataset, *, devices: int, speed: dict) -> nn.Module:
  """The module (no parameters yet) of a model config that `check_model_config` passed, with
  the resolved speed choices: what training.experiment builds after its one validation pass.
  Refuses here only what depends on the dataset (its kind, then the family's own checks)."""
  family = family_of(model_config)
  if dataset.kind not in family.data:
    kinds = ' or '.join(dict.fromkeys('an image' if k == 'image' else 'a sequence'
                                      for k in family.data))
    hint = 'digits, cifar10, mnist' if 'image' in family.data else 'mnist1d, digits_rows'
    raise ConfigError(f'model {family.name} needs {kinds} dataset; got {dataset.kind} data '
                      f'(try data.name={hint})')
  return family.build(model_config, dataset, devices=devices, speed=speed)


def build_model(model_config, dataset, *, devices: int = 1,
                backend_name: str | None = None) -> nn.Module:
  """`check_model_config`, `resolve_speed` for `backend_name` (by default JAX's), `build`: a
  model from a config on its own (tests, benchmarks)."""
  check_model_config(model_config)
  if backend_name is None:
    import jax   # noqa: PLC0415 (asking for the backend starts it)
    backend_name = jax.default_backend()
  speed = resolve_speed(model_config, backend_name, devices)
  return build(model_config, dataset, devices=devices, speed=speed)


def tables() -> str:
  """README's tables of norms, options and families, made from their declarations (README holds
  this text verbatim between its `<!-- tables -->` markers; `python -m models` prints it)."""
  def row(*cells):
    return '| ' + ' | '.join(str(c).replace('|', '\\|') for c in cells) + ' |'

  def keys(ks):
    return ', '.join(f'`{k.name}`={k.default!r}' for k in ks) or '-'
  out = ['| norm | paper | pools over (B batch, P positions, C features) | its keys |',
         '|---|---|---|---|']
  out += [row(f'`{n}`', s.paper, s.pools, keys(s.keys)) for n, s in norms.NORMS.items()]
  out += ['', '| option | paper | what it does | families |', '|---|---|---|---|']
  out += [row(f'`model.{o.name}`', o.paper, o.key.meaning,
              ', '.join(f for f, fam in FAMILIES.items() if o.name in fam.options))
          for o in options.OPTIONS.values()]
  out += ['', '| family | what | data | its keys | speed fields |', '|---|---|---|---|---|']
  out += [row(f'`{f.name}`', f.about, ', '.join(f.data), keys(f.keys),
              ', '.join(f'`{s}`' for s in f.speed) or '-') for f in FAMILIES.values()]
  return '\n'.join(out)
