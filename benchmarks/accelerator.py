"""The speed suite's accelerator section: what a GPU or TPU user needs to know, ready to run there.

  python -m benchmarks.run --only=accelerator            # on a GPU/TPU: >= 100 timed steps each
  python -m benchmarks.run --only=accelerator --smoke    # tiny shapes: the CPU check CI runs

Every contender is one jitted normlab train step on a fixed on-device batch, interleaved with the
others (`run.interleave`), with its model FLOPs from XLA's cost analysis of the compiled step,
and its MFU against the device kind's dense peak (`PEAK_TFLOPS`, by compute dtype and
`matmul_precision`):
- ResNet-20/56/110 on CIFAR shapes (32x32x3, batch 128), float32 and bfloat16 compute;
  ResNet-50 (torchvision layout) at 224x224 (synthetic, batch 64), both dtypes.
- The Transformer LM (configs/transformer_lm.py), both dtypes.
- The LSTM (configs/lstm_mnist1d.py, norm none): `nn.scan`, the hand-written backward
  (`recurrence=custom_vjp`), and `jax.experimental.rnn`'s cuDNN LSTM (the same network, GPU only;
  elsewhere its reference implementation `lstm_ref` stands in, labelled so, to keep the code
  path alive).
- The data-wait fraction: ResNet-20 fed CIFAR-shaped uint8 data (50,000 x 32x32x3, crop_flip,
  batch 128) by each `data.pipeline` place, against the same step on one cached batch:
  1 - fed rate / cached rate (the share of the step the accelerator waits for its input).
- 8 seeds: vmapped (one program), one by one, and packed (one run per device, dispatched
  asynchronously from one thread: what `experiments.sweep --devices_per_run=1` gives a node).
- A `jax.profiler` trace of ten ResNet-20 steps, saved beside the results (`trace/`; open it in
  TensorBoard's profile plugin or Perfetto).
- With PyTorch installed (benchmarks/requirements.txt on CPU, benchmarks/requirements-cuda.txt
  on NVIDIA GPUs), PyTorch's ResNet-20 and Transformer LM on the same device as reference rows.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import default, lstm_mnist1d, transformer_lm
from data.base import Dataset, Uint8Images

# Dense peak TFLOP/s per chip (vendor datasheets, no sparsity): (bfloat16, float32 as JAX's
# `default` precision computes it, float32 `highest`). GPUs from Ampere on compute `default`
# and `high` float32 in TF32; TPUs compute `default` in one bfloat16 pass, `high` in three,
# `highest` in six. More specific names first (device_kind is matched by substring).
PEAK_TFLOPS = {
    'H100 PCIe': (756.0, 378.0, 51.2),
    'H100': (989.4, 494.7, 66.9),     # SXM
    'H200': (989.4, 494.7, 66.9),
    'A100': (312.0, 156.0, 19.5),
    'TPU v4': (275.0, 275.0, 275.0 / 6),
    'TPU v5 lite': (197.0, 197.0, 197.0 / 6),   # v5e
    'TPU v5e': (197.0, 197.0, 197.0 / 6),
    'TPU v5p': (459.0, 459.0, 459.0 / 6),
    'TPU v5': (459.0, 459.0, 459.0 / 6),
    'TPU v6 lite': (918.0, 918.0, 918.0 / 6),   # Trillium (v6e)
}


def peak_tflops(device_kind: str, compute_dtype: str, precision: str = 'default',
                cpu_gflops: float = float('nan')) -> float:
  """The dense peak of one `device_kind` chip for matmuls in `compute_dtype` at
  `matmul_precision`; a CPU's is the suite's float32 estimate (`run.machine_peak`); NaN for a
  kind not in the table (its MFU is then not reported)."""
  if 'cpu' in device_kind.lower():
    return cpu_gflops / 1e3
  name = next((k for k in PEAK_TFLOPS if k.lower() in device_kind.lower()), None)
  if name is None:
    return float('nan')
  bf16, f32_default, f32_highest = PEAK_TFLOPS[name]
  if compute_dtype == 'bfloat16':
    return bf16
  if precision == 'highest':
    return f32_highest
  if precision == 'high' and name.startswith('TPU'):
    return bf16 / 3
  return f32_default


@dataclasses.dataclass(frozen=True)
class Shapes:
  """What the section runs: the real sizes, or a smoke version small enough for CI's CPU."""
  cifar_batch: int = 128
  depths: tuple[int, ...] = (20, 56, 110)
  imagenet_size: int = 224
  imagenet_batch: int = 64
  cifar_examples: int = 50_000
  seeds: int = 8
  trace_steps: int = 10
  dtypes: tuple[str, ...] = ('float32', 'bfloat16')

  @classmethod
  def smoke(cls) -> 'Shapes':
    """Every kind of contender once (bfloat16 only changes a config key: tests/test_models.py
    checks each family computes in it)."""
    return cls(cifar_batch=8, depths=(8,), imagenet_size=32, imagenet_batch=2,
               cifar_examples=64, seeds=2, trace_steps=2, dtypes=('float32',))


def cifar_shaped(n: int) -> Dataset:
  rng = np.random.default_rng(0)
  split = Uint8Images({'inputs': rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
                       'targets': rng.integers(0, 10, n).astype(np.int32)})
  return Dataset(split, split, 10, (32, 32, 3))


def _with(config, **model):
  for k, v in model.items():
    config.model[k] = v
  return config


def _lstm_cudnn_contender(run, batch: int, length: int, hidden: int):
  """norm=none, the same network as configs/lstm_mnist1d.py (one layer of `hidden`, its last
  step into a linear head, Adam), on `jax.experimental.rnn.lstm` (cuDNN) on a GPU, else on its
  reference `lstm_ref` (unpacking the same packed weights)."""
  import optax
  from jax.experimental import rnn
  on_gpu = jax.default_backend() == 'gpu'
  features = 1
  key_w, key_h, key_x = jax.random.split(jax.random.key(0), 3)
  params = {'lstm': rnn.init_lstm_weight(key_w, features, hidden, 1, False),
            'head': jax.random.normal(key_h, (hidden, 10)) / np.sqrt(hidden)}
  x = jax.random.normal(key_x, (batch, length, features))
  y = jnp.arange(batch) % 10
  lengths = jnp.full((batch,), length, jnp.int32)
  zeros = jnp.zeros((1, batch, hidden))

  def loss(p):
    if on_gpu:
      hs, _, _ = rnn.lstm(x, zeros, zeros, p['lstm'], lengths, features, hidden, 1, 0.0, False)
    else:
      w = rnn.unpack_lstm_weights(p['lstm'], features, hidden, 1, False)
      hs, _, _ = rnn.lstm_ref(x, zeros, zeros, *w, lengths, features, hidden, 1, 0.0, False)
    return optax.softmax_cross_entropy_with_integer_labels(hs[:, -1] @ p['head'], y).mean()

  opt = optax.adam(3e-3)

  def step(state, _):
    p, o = state
    value, grads = jax.value_and_grad(loss)(p)
    updates, o = opt.update(grads, o, p)
    return (optax.apply_updates(p, updates), o), value

  compiled = jax.jit(step, donate_argnums=0).lower((params, opt.init(params)), None).compile()
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, list) else cost
  stepper = run.Stepper(compiled, (params, opt.init(params)))
  name = ('jax.experimental.rnn LSTM (cuDNN)' if on_gpu else
          'jax.experimental.rnn lstm_ref (cuDNN stands in off the GPU)')
  return run.Contender(f'{name}, none', lambda n: stepper.run([None] * n),
                       cost.get('flops', float('nan')), batch)


def model_contenders(run, shapes: Shapes) -> list[tuple]:
  """(contender, compute dtype) of every model the section times."""
  out = []
  cifar = run.synthetic_images(shapes.cifar_batch, 32)
  for depth in shapes.depths:
    for dtype in shapes.dtypes:
      if dtype == 'bfloat16' and depth != shapes.depths[0]:
        continue
      config = run.resnet_config(depth, batch=shapes.cifar_batch, compute_dtype=dtype)
      out.append((run.jax_contender(f'resnet-{depth} CIFAR {dtype}', config, cifar), dtype))
  imagenet = run.synthetic_images(shapes.imagenet_batch, shapes.imagenet_size, 1000)
  for dtype in shapes.dtypes:
    config = _with(default.get_config(), name='resnet_imagenet', depth=50, compute_dtype=dtype)
    config.data.batch_size = shapes.imagenet_batch
    out.append((run.jax_contender(f'resnet-50 {shapes.imagenet_size}px {dtype}', config,
                                  imagenet), dtype))
  for dtype in shapes.dtypes:
    config = _with(transformer_lm.get_config(), compute_dtype=dtype)
    out.append((run.jax_contender(f'transformer LM {dtype}', config), dtype))
  lstm = lstm_mnist1d.get_config('none')
  for recurrence in ('scan', 'custom_vjp'):
    config = _with(lstm_mnist1d.get_config('none'), recurrence=recurrence)
    out.append((run.jax_contender(f'LSTM none, recurrence={recurrence}', config), 'float32'))
  out.append((_lstm_cudnn_contender(run, lstm.data.batch_size, 40, lstm.model.width), 'float32'))
  for c, _ in out[-3:]:
    c.flops = run.lstm_flops(lstm)   # analytic: XLA's cost analysis counts a loop body once
  return out


def torch_contenders(run, shapes: Shapes, flops: dict) -> list:
  """PyTorch's ResNet-20 and Transformer LM on the device it sees (CUDA where it has one)."""
  try:
    import torch
  except ImportError:
    return []
  from benchmarks import torch_models
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  lm = transformer_lm.get_config()
  return [run.torch_contender(f'pytorch resnet-{shapes.depths[0]} CIFAR float32 ({device})',
                              torch_models.resnet_step(shapes.cifar_batch, shapes.depths[0], 32,
                                                       True, device=device),
                              shapes.cifar_batch, flops['resnet']),
          run.torch_contender(f'pytorch transformer LM float32 ({device})',
                              torch_models.transformer_lm_step(
                                  lm.data.batch_size, lm.data.seq_length, 256, lm.model.width,
                                  lm.model.num_layers, lm.model.num_heads, lm.model.mlp_ratio,
                                  device=device),
                              lm.data.batch_size, flops['transformer'])]


def section_accelerator(a, peak_gflops: float) -> list[dict]:
  from benchmarks import run
  from training import experiment, parallel
  shapes = Shapes.smoke() if a.smoke else Shapes()
  kind = jax.devices()[0].device_kind
  precision = jax.config.jax_default_matmul_precision or 'default'
  pairs = model_contenders(run, shapes)
  contenders = [c for c, _ in pairs]
  reference = {'resnet': pairs[0][0].flops,
               'transformer': next(c for c, _ in pairs if c.name.startswith('transformer')).flops}
  contenders += torch_contenders(run, shapes, reference)
  dtypes = {c.name: d for c, d in pairs}
  rows = run.interleave(contenders, a.steps, a.repeats, a.warmup)
  for r in rows:
    peak = peak_tflops(kind, dtypes.get(r['name'], 'float32'), precision, peak_gflops)
    r.update(section='accelerator', tflops=r['gflops'] / 1e3, peak_tflops=peak,
             mfu=r['gflops'] / 1e3 / peak)
  # the data-wait fraction of ResNet-20 fed CIFAR-shaped uint8 data by each pipeline
  data = cifar_shaped(shapes.cifar_examples)
  config = run.resnet_config(shapes.depths[0], batch=shapes.cifar_batch)
  config.data.augment = 'crop_flip'
  exp = experiment.build_experiment(config, dataset=data)
  fed = run.pipeline_contenders(exp, parallel.data_mesh(jax.devices()), f'resnet-'
                                f'{shapes.depths[0]} CIFAR-shaped uint8 crop_flip')
  fed_rows = run.interleave(fed, a.steps, a.repeats, a.warmup)
  cached = fed_rows[-1]['steps_per_s']
  for r in fed_rows:
    r.update(section='accelerator', data_wait_fraction=max(0.0, 1 - r['steps_per_s'] / cached))
  from benchmarks import seeds
  seed_rows = [{'section': 'accelerator', 'name': k, 'ms_per_step': v * 1e3,
                'steps_per_s': 1 / v} for k, v in seeds.measure(
                    shapes.depths[0], shapes.seeds, a.steps, a.repeats, packed=True).items()]
  trace_dir = os.path.join(os.path.dirname(os.path.abspath(a.out)), 'trace')
  t0 = time.perf_counter()
  with jax.profiler.trace(trace_dir):
    contenders[0].run(shapes.trace_steps)
  trace = {'section': 'accelerator', 'name': f'profiler trace of {shapes.trace_steps} steps of '
           f'{contenders[0].name}: {trace_dir}', 'trace_s': time.perf_counter() - t0}
  return rows + fed_rows + seed_rows + [trace]
