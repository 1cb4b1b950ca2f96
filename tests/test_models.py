"""The model registry (models/__init__.py): names checked with the valid choices listed, and the
speed fields resolved per backend."""

import pytest

import models
from configs import default, lstm_mnist1d
from data.base import Dataset
from errors import ConfigError
import re
import jax
import jax.numpy as jnp
import numpy as np
import config_space as cs
from models import norms


def test_unknown_model_lists_valid_models():
  with pytest.raises(ConfigError, match='resnet_imagenet'):
    cfg = default.get_config().model
    with cfg.unlocked():
      cfg.name = 'vgg'
    models.build_model(cfg, Dataset(None, None, 10, (32, 32, 3)))


def test_compute_dtype_is_checked():
  cfg = default.get_config()
  with cfg.unlocked():
    cfg.model.compute_dtype = 'float16'
  with pytest.raises(ConfigError, match='valid: float32, bfloat16'):
    models.check_model_config(cfg.model)


@pytest.mark.parametrize('family', [   # fast: the first such family; -m slow: every other
    pytest.param(f, marks=() if k == 0 else pytest.mark.slow) for k, f in enumerate(
        f for f in models.FAMILIES if 'bfloat16' in models.FAMILIES[f].compute_dtypes)])
def test_every_family_that_takes_bfloat16_computes_in_it_with_float32_weights(family):
  """compute_dtype=bfloat16, for each family declaring it: the same parameters (float32), float32
  logits and statistics, the float32 function up to bfloat16 rounding, and bfloat16 matmuls or
  convolutions in the compiled program (it really computes in bfloat16)."""
  import config_space as cs
  point = next(p for p in cs.space()[0] if p.model == family and not p.options
               and p.norm == 'layer' and not p.variable_length)
  cfg = cs.model_config(point)
  with cfg.unlocked():
    cfg.compute_dtype = 'bfloat16'
  f32, bf16 = cs.build(point), models.build_model(cfg, point.dataset)
  x, mask, _ = cs.batch(point, size=8)
  variables = f32.init(jax.random.key(0), x, train=False, mask=mask)
  assert jax.tree.map(lambda v: (v.shape, v.dtype), variables) == jax.tree.map(
      lambda v: (v.shape, v.dtype), bf16.init(jax.random.key(0), x, train=False, mask=mask))
  run = lambda m: jax.jit(lambda v: m.apply(v, x, train=True, mask=mask,
                                             mutable=['batch_stats']))(variables)
  (out32, _), (out16, upd16) = run(f32), run(bf16)
  assert out16.dtype == jnp.float32
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(upd16))
  scale = float(jnp.max(jnp.abs(out32)))
  np.testing.assert_allclose(out16, out32, atol=0.05 * scale)
  assert float(jnp.max(jnp.abs(out16 - out32))) > 0
  hlo = jax.jit(lambda v: bf16.apply(v, x, train=False, mask=mask)).lower(variables).as_text()
  assert any(op in line and 'bf16' in line for line in hlo.splitlines()
             for op in ('dot_general', 'convolution')), family


def test_speed_fields_auto_is_portable_off_cpu_and_every_choice_is_honoured():
  """For every family and each speed field it declares: `auto` is the portable choice on GPU
  and TPU (nothing there was measured), a chosen value is kept on any backend, every choice
  builds a different module (the field reaches the model), and a bad value lists the valid."""
  from models import backend
  for name, family in models.FAMILIES.items():
    kind = next(q.data for q in cs.space()[0] if q.model == name)
    cfg = cs.model_config(cs.Point(name, kind, 'layer'))
    for field in family.speed:
      spec = backend.SPEED[field]
      cfg[field] = 'auto'
      for platform in ('gpu', 'tpu'):
        assert models.resolve_speed(cfg, platform, 1)[field] == spec.portable, (name, field)
      built = set()
      for choice in spec.key.choices[1:]:
        cfg[field] = choice
        assert models.resolve_speed(cfg, 'gpu', 4)[field] == choice
        built.add(repr(models.build_model(cfg, cs.DATA[kind], backend_name='gpu')))
      assert len(built) == len(spec.key.choices) - 1, (name, field)
      cfg[field] = 'fast'
      with pytest.raises(ConfigError, match='valid: ' + ', '.join(spec.key.choices)):
        models.check_model_config(cfg)
      cfg[field] = 'auto'


def test_readme_tables_are_the_declarations():
  """README's norm, option and family tables are `models.tables()` verbatim (regenerate them
  with `python -m models`)."""
  import os
  readme = open(os.path.join(os.path.dirname(__file__), '..', 'README.md')).read()
  assert models.tables() in readme


def _residual_points():
  """Every covering point with SkipInit; the fast run takes a sequence model's (ReZero: the
  cheapest to compile; the test budget), `-m slow` every family."""
  points = [p for p in cs.variants(cs.covering(cs.space()[0])) if 'skipinit' in p.options]
  fast = min(points, key=lambda p: cs.DATA[p.data].kind == 'image')
  return [pytest.param(p, id=p.id, marks=() if p == fast else pytest.mark.slow) for p in points]


@pytest.mark.parametrize('p', _residual_points())
def test_skipinit_net_at_init_ignores_everything_inside_its_branches(p):
  """Replacing every parameter inside the residual branches (with other random values) leaves
  the outputs unchanged, in train and eval mode; the same change moves a net without SkipInit.
  The gains themselves get a gradient (the branches can switch on)."""
  model = cs.build(p)
  x, mask, y = cs.batch(p)
  variables = model.init(jax.random.key(0), x, train=False, mask=mask)
  flat = {'/'.join(k.key for k in path): v
          for path, v in jax.tree_util.tree_leaves_with_path(variables['params'])}
  branch = [k for k in flat if re.search(models.FAMILIES[p.model].branches, k)]
  gains = [k for k in flat if k.endswith('_gain')]
  assert branch and gains, sorted(flat)
  rng = np.random.default_rng(3)

  def perturbed(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, v: (v + rng.normal(size=v.shape).astype(v.dtype)
                         if '/'.join(k.key for k in path) in branch else v), params)

  def out(params, train, model=model, other=variables):
    return np.asarray(model.apply({**other, 'params': params}, x, train=train, mask=mask,
                                  mutable=['batch_stats'])[0])
  for train in (True, False):
    np.testing.assert_array_equal(out(perturbed(variables['params']), train),
                                  out(variables['params'], train))
  plain_model = cs.build(p.with_options())
  plain = plain_model.init(jax.random.key(0), x, train=False, mask=mask)
  assert not np.allclose(out(perturbed(plain['params']), True, plain_model, plain),
                         out(plain['params'], True, plain_model, plain))
  from training import tasks
  task = tasks.get_task(p.dataset.task)
  batch = {'inputs': x, 'targets': y, **({'mask': mask} if mask is not None else {})}

  def loss(params):
    logits, _ = model.apply({**variables, 'params': params}, x, train=True, mask=mask,
                            mutable=['batch_stats'])
    return task(logits, batch)[0]
  grads = jax.grad(loss)(variables['params'])
  flat_grads = {'/'.join(k.key for k in path): v
                for path, v in jax.tree_util.tree_leaves_with_path(grads)}
  assert max(abs(float(flat_grads[k])) for k in gains) > 0


def test_options_that_do_not_apply_are_refused_with_the_reason():
  """Every option on every family that does not declare it is refused, naming the families
  that take it; options' own needs and exclusive groups are refused with their reasons."""
  from errors import ConfigError
  from models import options
  for name, option in options.OPTIONS.items():
    takes = [f for f, fam in models.FAMILIES.items() if name in fam.options]
    for family in set(models.FAMILIES) - set(takes):
      kind = next(d for d in cs.DATA if cs.DATA[d].kind in models.FAMILIES[family].data)
      cfg = cs.model_config(cs.Point(family, kind, 'none'))
      cfg[name] = True if isinstance(option.key.default, bool) else 0.2
      with pytest.raises(ConfigError, match=f'not implemented by {family}; families that take '
                                            f'it: {", ".join(takes)}'):
        models.build_model(cfg, cs.DATA[kind])
  p = cs.Point('resnet', 'image', 'batch', residual=False).with_options('skipinit')
  with pytest.raises(ConfigError, match='residual=False has none'):
    cs.build(p)
  kernel = [n for n, o in options.OPTIONS.items() if o.exclusive == options.KERNEL]
  with pytest.raises(ConfigError, match='choose one'):
    cs.build(cs.Point('resnet', 'image', 'batch').with_options(*kernel[:2]))


def test_dyt_in_a_plain_net_that_would_ignore_its_input_is_refused_with_the_alpha_that_works():
  """Found by the invariants: a plain ResNet-18 with DyT (alpha 0.5, 17 norms in a row) changed
  its logits by 5e-10 when its input changed (logit scale 1e-3). Refused, naming the alpha that
  keeps the input visible; that alpha builds and its outputs depend on the input."""
  from errors import ConfigError
  p = cs.Point('resnet_imagenet', 'image32', 'dyt', residual=False)
  with pytest.raises(ConfigError, match=r'dyt_alpha >= 0\.67') as e:
    cs.build(p)
  assert 'dyt_alpha ** 17' in str(e.value)
  cfg = cs.model_config(p)
  cfg.dyt_alpha = 0.7
  model = models.build_model(cfg, p.dataset)
  x, _, _ = cs.batch(p)
  x2, _, _ = cs.batch(p, seed=1)
  variables = model.init(jax.random.key(0), x, train=False)
  a, b = (np.asarray(model.apply(variables, v, train=False)) for v in (x, x2))
  assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()
  assert cs.build(cs.dataclasses.replace(p, residual=True))   # with skips: no such limit
