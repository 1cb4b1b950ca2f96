"""The speed suite: normlab against PyTorch on the same machine, and the costs a sweep pays.

  pip install -r benchmarks/requirements.txt          # adds torch==2.13.0 (CPU wheel)
  python -m benchmarks.run                             # all sections; table + benchmarks/results.json
  python -m benchmarks.run --only=resnet,norms --repeats=7 --out=/tmp/bench.json

Sections (each prints its rows; all rows go to one JSON file):
  resnet       ResNet-20 (BN, residual) train step, batch 128, 32x32x3: normlab (jax.jit, float32,
               and the opt-in bfloat16 compute) vs PyTorch eager (NCHW and channels_last), same
               network and optimizer (benchmarks/torch_models.py).
  sequence     LSTM classifier (configs/lstm_mnist1d.py, norm none) vs torch nn.LSTM, and the
               Transformer LM (configs/transformer_lm.py) vs a hand-written PyTorch pre-LN block.
  norms        step time of every norm in the registry on ResNet-20 and on the Transformer LM.
  depth        compile time and step time of ResNet-20/56/110, and ResNet-110 without the
               fusion barriers (models/resnet.py `materialize`) to show what they buy.
  data         the default experiment's step fed by each input pipeline (data.pipeline device
               and host) vs the same step on one cached batch, and what making one batch
               costs on the host and on the device (the default data; CIFAR-shaped crop_flip).
  seeds        8 seeds: one after another vs vmapped (ResNet-20 on digits), vs one seed.
  accelerator  what a GPU/TPU run needs (benchmarks/accelerator.py): ResNet-20/56/110 and
               ResNet-50 at 224, the Transformer LM, the LSTM three ways (scan, custom VJP,
               cuDNN), MFU against the device kind's peak, the data-wait fraction, vmapped vs
               one-by-one vs packed seeds, a profiler trace. `--smoke`: tiny shapes (CI).
On a GPU or TPU each contender runs 100 timed steps per round by default (--steps), on a CPU 3.
Every timed comparison interleaves its contenders (A B C A B C ...) over --repeats rounds, each
contender's turn starting with --warmup untimed steps, and reports the median rate with its
min-max spread, so machine noise hits all contenders alike;
compare ratios within a section, not absolute numbers across runs. GFLOP/s uses XLA's cost
analysis of normlab's compiled step (for ResNet also an analytic count of the convolutions and
the head: 3x the forward multiply-adds x 2); PyTorch rows are credited with the same FLOPs.
Peak: the larger of cores x FLOP/cycle x clock and a measured large matmul (see `machine_peak`). Memory: XLA's planned memory for the
compiled step (arguments + outputs + temporaries) and the process's peak RSS.
"""

from __future__ import annotations

# ruff: noqa: E402  (imports after the restart below)
if __name__ == '__main__':   # first, before JAX loads (training/huge_pages.py)
  from training import huge_pages
  huge_pages.restart_with_huge_pages()

import argparse
import dataclasses
import itertools
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from configs import default, lstm_mnist1d, transformer_lm
from data.base import ArraySplit, Dataset
from data.pipeline import DeviceBatches, TrainBatches, prefetch
from training import experiment
from training.step import compile_steps

SECTIONS = ('resnet', 'sequence', 'norms', 'depth', 'data', 'seeds', 'accelerator')


@dataclasses.dataclass
class Contender:
  name: str
  run: Callable[[int], None]       # run(n): n train steps, finished on return
  flops: float = float('nan')      # per step
  items: int = 0                   # examples per step
  compile_s: float = float('nan')
  memory_mb: float = float('nan')  # XLA's planned memory of the compiled step


def machine_peak() -> tuple[float, str]:
  """float32 GFLOP/s peak of this CPU and how it was derived: the larger of the nominal peak
  (cores x FLOP/cycle x the clock /proc/cpuinfo reports) and a measured 2048x2048 float32 matmul,
  because cloud CPUs boost above their reported clock (here XLA's matmul ran ~1.2x "nominal")."""
  cores = len(os.sched_getaffinity(0))
  flags, mhz = '', 0.0
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('flags') and not flags:
          flags = line
        if line.startswith('cpu MHz') and not mhz:
          mhz = float(line.split(':')[1])
  except OSError:
    pass
  # 2 FMA pipes x 8 float32 lanes (256-bit) x 2 FLOP per FMA: AVX2+FMA cores, and AMD Zen 4,
  # whose AVX-512 runs as two 256-bit halves. (Intel cores with two 512-bit FMA units: 64.)
  per_cycle = 32 if ' fma' in flags else 16
  nominal = cores * per_cycle * mhz / 1e3
  matmul = measured_matmul_gflops()
  how = (f'max of nominal {nominal:.0f} = {cores} cores x {per_cycle} FLOP/cycle x {mhz:.0f} MHz '
         f'and a measured 2048^2 float32 matmul, {matmul:.0f}')
  return max(nominal, matmul), how


def measured_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
  a = jax.device_put(np.ones((n, n), np.float32))
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best / 1e9


def interleave(contenders: list[Contender], steps: int, repeats: int,
               warmup: int = 1) -> list[dict]:
  """Median steps/s of each contender over `repeats` rounds of A B C ... In each round a
  contender first runs `warmup` untimed steps: a long run steps one model over and over, and the
  timed steps should see that state (its memory mapped again, its caches warm), not the switch
  from the other contenders (on this machine, ResNet-110's first step after the others ran paid
  for re-faulting its 1.8 GB of temporaries)."""
  for c in contenders:        # warm up (and finish any compilation) outside the timing
    c.run(1)
  rates = {c.name: [] for c in contenders}
  for _ in range(repeats):
    for c in contenders:
      if warmup:
        c.run(warmup)
      t0 = time.perf_counter()
      c.run(steps)
      rates[c.name].append(steps / (time.perf_counter() - t0))
  rows = []
  for c in contenders:
    r = rates[c.name]
    med = statistics.median(r)
    rows.append({'name': c.name, 'steps_per_s': med, 'min': min(r), 'max': max(r),
                 'items_per_s': med * c.items, 'gflops': c.flops * med / 1e9,
                 'compile_s': c.compile_s, 'memory_mb': c.memory_mb})
  return rows


# ----------------------------------------------------------------------------- normlab steps

def synthetic_images(batch: int, size: int, num_classes: int = 10) -> Dataset:
  rng = np.random.default_rng(0)
  split = ArraySplit({'inputs': rng.normal(size=(batch, size, size, 3)).astype(np.float32),
                      'targets': rng.integers(0, num_classes, batch).astype(np.int32)})
  return Dataset(split, split, num_classes, (size, size, 3))


def jax_contender(name: str, config, dataset: Dataset | None = None, model_fn=None,
                  batch: dict | None = None) -> Contender:
  """A jitted normlab train step of `config` on one fixed batch (the first training batch)."""
  exp = experiment.build_experiment(config, dataset=dataset)
  if model_fn:
    exp = dataclasses.replace(exp, model=model_fn(exp.model))
  state = experiment.create_train_state(exp, jax.random.key(0))
  if batch is None:
    batch = TrainBatches(exp.dataset.train, config.data.batch_size, 0)(0)
  batch = jax.device_put(batch)
  t0 = time.perf_counter()
  compiled = compile_steps(exp).train.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, list) else cost
  mem = compiled.memory_analysis()
  memory_mb = ((mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)
               / 2**20 if mem is not None else float('nan'))
  stepper = Stepper(compiled, state)
  return Contender(name, lambda n: stepper.run(itertools.repeat(batch, n)),
                   cost.get('flops', float('nan')),
                   len(next(iter(batch.values()))), compile_s, memory_mb)


class Stepper:
  """Threads a train state through `step` over the batches it is given; `run` returns when the
  last step has finished (the state's buffers are donated, so the state lives here)."""

  def __init__(self, step, state):
    self.step, self.state = step, state

  def run(self, batches) -> None:
    metrics = None
    for batch in batches:
      self.state, metrics = self.step(self.state, batch)
    jax.block_until_ready(metrics)


def torch_contender(name: str, step, items: int, flops: float) -> Contender:
  def run(n):
    for _ in range(n):
      step.step()     # float(loss) synchronizes
  return Contender(name, run, flops, items)


def resnet_config(depth=20, norm='batch', batch=128, compute_dtype='float32', conv_wgrad='auto'):
  config = default.get_config(str(depth))
  config.model.norm = norm
  config.model.compute_dtype = compute_dtype
  config.model.conv_wgrad = conv_wgrad
  config.data.batch_size = batch
  return config


def resnet_analytic_flops(depth: int, batch: int, size: int = 32, width: int = 16) -> float:
  """3 x forward FLOPs (forward, input gradient, weight gradient) of the convolutions and head."""
  n = (depth - 2) // 6
  stem = size * size * 3 * width * 9          # no input gradient: 2x forward, not 3x
  macs, ch, hw = 0, width, size
  for stage in range(3):
    out = width * 2 ** stage
    for i in range(n):
      if stage > 0 and i == 0:
        hw //= 2
      macs += hw * hw * 9 * (ch * out + out * out)
      ch = out
  macs += ch * 10
  return 2 * (3 * macs + 2 * stem) * batch


def lstm_analytic_flops(batch: int, length: int, features: int, hidden: int, classes: int,
                        layers: int = 1) -> float:
  """3 x forward FLOPs of an LSTM classifier's matmuls: per step the embedding (features -> H)
  and, per layer, W_x x_t and W_h h_{t-1} (H -> 4H each); the head once. XLA's cost analysis
  counts a loop's body once, not once per step: the hoisted W_x x is counted in full, W_h h for
  one step (tests/test_benchmarks.py), so it undercounts a recurrence."""
  per_step = features * hidden + layers * 2 * hidden * 4 * hidden
  return 2 * 3 * batch * (length * per_step + hidden * classes)


def lstm_flops(config) -> float:
  """lstm_analytic_flops of an mnist1d LSTM config (40 steps of 1 feature, 10 classes)."""
  return lstm_analytic_flops(config.data.batch_size, 40, 1, config.model.width, 10,
                             config.model.num_layers)


# ----------------------------------------------------------------------------- sections

def section_resnet(a, peak):
  from benchmarks import torch_models
  batch, size = 128, 32
  flops = resnet_analytic_flops(20, batch, size)
  ds = synthetic_images(batch, size)
  jax32 = jax_contender('normlab jax float32', resnet_config(), ds)
  jax16 = jax_contender('normlab jax bfloat16 compute', resnet_config(compute_dtype='bfloat16'), ds)
  jax_xla = jax_contender('normlab jax float32, conv_wgrad=xla', resnet_config(conv_wgrad='xla'), ds)
  torch_cl = torch_contender('pytorch eager channels_last',
                             torch_models.resnet_step(batch, 20, size, True), batch, jax32.flops)
  torch_nchw = torch_contender('pytorch eager NCHW',
                               torch_models.resnet_step(batch, 20, size, False), batch, jax32.flops)
  rows = interleave([jax32, jax16, jax_xla, torch_cl, torch_nchw], a.steps, a.repeats, a.warmup)
  ref = rows[3]['steps_per_s']
  for r in rows:
    r.update(section='resnet', vs_pytorch_channels_last=r['steps_per_s'] / ref,
             analytic_gflops=flops * r['steps_per_s'] / 1e9,
             percent_of_peak=100 * flops * r['steps_per_s'] / 1e9 / peak)
  return rows


def section_sequence(a, peak):
  """Each LSTM (norm none, layer, batch) as it runs by default, and with the straightforward
  formulation (nn.scan, no folding), against PyTorch's nn.LSTM (none) or a PyTorch
  implementation of the same equations (layer, batch); the Transformer LM against a hand-written
  PyTorch block."""
  from benchmarks import torch_models
  rows = []
  for norm in ('none', 'layer', 'batch'):
    lstm = lstm_mnist1d.get_config(norm)
    jl = jax_contender(f'normlab LSTM {norm} (mnist1d, width 128)', lstm)
    plain = lstm_mnist1d.get_config(norm)
    plain.model.recurrence, plain.model.fold_input = 'scan', 'off'
    jp = jax_contender(f'normlab LSTM {norm}, nn.scan, not folded', plain)
    jl.flops = jp.flops = lstm_flops(lstm)   # the matmuls; XLA counts a loop body once
    b, t = lstm.data.batch_size, 40
    step = (torch_models.lstm_step(b, t, lstm.model.width) if norm == 'none' else
            torch_models.norm_lstm_step(b, t, lstm.model.width, norm))
    tl = torch_contender('pytorch nn.LSTM' if norm == 'none' else
                         f'pytorch {norm}-norm LSTM (same equations)', step, b, jl.flops)
    out = interleave([jl, jp, tl], a.steps, a.repeats, a.warmup)
    for r in out:
      r.update(section='sequence', model=f'lstm {norm}',
               vs_pytorch=r['steps_per_s'] / out[2]['steps_per_s'])
    rows += out
  lm = transformer_lm.get_config()
  jt = jax_contender('normlab Transformer LM (pre-LN)', lm)
  exp = experiment.build_experiment(lm)
  tt = torch_contender('pytorch hand-written pre-LN block',
                       torch_models.transformer_lm_step(
                           lm.data.batch_size, lm.data.seq_length, exp.dataset.vocab_size,
                           lm.model.width, lm.model.num_layers, lm.model.num_heads,
                           lm.model.mlp_ratio), lm.data.batch_size, jt.flops)
  out = interleave([jt, tt], a.steps, a.repeats, a.warmup)
  for r in out:
    r.update(section='sequence', model='transformer_lm',
             vs_pytorch=r['steps_per_s'] / out[1]['steps_per_s'])
  for r in rows + out:
    r['percent_of_peak'] = 100 * r['gflops'] / peak
  return rows + out


def _flax_fast_variance(kind: str):
  """flax's own norm with its default E[x²] - E[x]² variance, behind the registry's call
  signature: the reference for what the registry's exact (shifted two-pass) arithmetic costs."""
  import flax.linen as nn

  class FlaxNorm(nn.Module):
    @nn.compact
    def __call__(self, x, *, train, mask=None):
      if kind == 'batch':
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
      return nn.LayerNorm(epsilon=1e-5)(x)

  return FlaxNorm


def section_norms(a, peak):
  from models import norms
  rows = []
  ds = synthetic_images(128, 32)
  contenders = [jax_contender(f'resnet-20 {n}', resnet_config(norm=n), ds) for n in norms.NORMS]
  contenders.append(jax_contender('resnet-20 batch, flax fast variance', resnet_config(), ds,
                                  model_fn=lambda m: m.clone(norm=_flax_fast_variance('batch'))))
  # the options beside the norm (README's second table), each on the norm it is meant for
  for label, norm, key, value in (('group + weight_std', 'group', 'weight_std', True),
                                  ('none + skipinit', 'none', 'skipinit', True),
                                  ('none + fixup', 'none', 'fixup', True),
                                  ('none + nf_alpha 0.2 (NF-ResNet)', 'none', 'nf_alpha', 0.2),
                                  ('none + weight_norm', 'none', 'weight_norm', True),
                                  ('none + spectral_norm', 'none', 'spectral_norm', True)):
    config = resnet_config(norm=norm)
    config.model[key] = value
    contenders.append(jax_contender(f'resnet-20 {label}', config, ds))
  out = interleave(contenders, a.steps, a.repeats, a.warmup)
  ref = next(r for r in out if r['name'].endswith(' none'))['steps_per_s']
  for r in out:
    r.update(section='norms', model='resnet-20', time_vs_none=ref / r['steps_per_s'])
  rows += out
  contenders = []
  for n in norms.causal_norms():
    config = transformer_lm.get_config()
    config.model.norm = n
    contenders.append(jax_contender(f'transformer LM {n}', config))
  contenders.append(jax_contender('transformer LM layer, flax fast variance',
                                  transformer_lm.get_config(),
                                  model_fn=lambda m: m.clone(norm=_flax_fast_variance('layer'))))
  for label, norm, key in (('layer + qk_norm', 'layer', 'qk_norm'),
                           ('none + skipinit (ReZero)', 'none', 'skipinit')):
    config = transformer_lm.get_config()
    config.model.norm, config.model[key] = norm, True
    contenders.append(jax_contender(f'transformer LM {label}', config))
  out = interleave(contenders, a.steps * 4, a.repeats, a.warmup)
  ref = next(r for r in out if r['name'].endswith(' none'))['steps_per_s']
  for r in out:
    r.update(section='norms', model='transformer_lm', time_vs_none=ref / r['steps_per_s'])
  return rows + out


def section_depth(a, peak):
  ds = synthetic_images(128, 32)
  contenders = [jax_contender(f'resnet-{d}', resnet_config(d), ds) for d in (20, 56, 110)]
  no_barriers = resnet_config(110)
  no_barriers.model.fusion_barriers = 'off'
  contenders.append(jax_contender('resnet-110 without fusion barriers', no_barriers, ds))
  out = interleave(contenders, 1, a.repeats, a.warmup)
  base = out[0]['steps_per_s']
  for r, d in zip(out, (20, 56, 110, 110)):
    r.update(section='depth', step_time_vs_resnet20=base / r['steps_per_s'],
             analytic_flops_vs_resnet20=resnet_analytic_flops(d, 128) / resnet_analytic_flops(20, 128))
  return out


def pipeline_contenders(exp, mesh, label: str) -> list[Contender]:
  """`exp`'s train step fed as train.py feeds it by each data.pipeline place (device: the batch
  made on the mesh in the step's thread; host: made on the host one batch ahead in a thread,
  then transferred), and on one cached on-device batch (last)."""
  from training import parallel
  b, augment = exp.config.data.batch_size, exp.config.data.augment
  on_host = TrainBatches(exp.dataset.train, b, 0, augment, transform=exp.dataset.train_transform)
  on_device = DeviceBatches([exp.dataset.train], b, [0], mesh, augment,
                            exp.dataset.train_transform)
  state = parallel.replicate(experiment.create_train_state(exp, jax.random.key(0)), mesh)
  placed = lambda i: parallel.shard_batch(on_host(i), mesh)
  cached = placed(0)
  stepper, counter = Stepper(compile_steps(exp).train, state), [0]

  def fed(prefetched):
    def run(n):
      start, counter[0] = counter[0], counter[0] + n
      stepper.run(batch for _, batch in prefetched(start, start + n))
    return run

  def cached_batch(n):
    stepper.run(itertools.repeat(cached, n))

  return [Contender(f'{label}, device pipeline', fed(on_device.prefetch), items=b),
          Contender(f'{label}, host pipeline', fed(lambda i, j: prefetch(placed, i, j)), items=b),
          Contender(f'{label}, one cached batch', cached_batch, items=b)]


def section_data(a, peak):
  """The default experiment's train step fed as train.py feeds it, by each data.pipeline
  (device: the batch made on the mesh in the step's thread; host: made on the host one batch
  ahead in a thread, then transferred) vs the same step fed one cached on-device batch; and
  what making one CIFAR-shaped batch costs each way (50,000 x 32x32x3 uint8, crop_flip,
  batch 128)."""
  from training import parallel
  config = default.get_config()
  exp = experiment.build_experiment(config)
  mesh = parallel.data_mesh(jax.devices())
  b, augment = config.data.batch_size, config.data.augment
  on_host = TrainBatches(exp.dataset.train, b, 0, augment, transform=exp.dataset.train_transform)
  on_device = DeviceBatches([exp.dataset.train], b, [0], mesh, augment,
                            exp.dataset.train_transform)
  placed = lambda i: parallel.shard_batch(on_host(i), mesh)
  out = interleave(pipeline_contenders(exp, mesh, 'default experiment'), a.steps * 10, a.repeats,
                   a.warmup)
  cifar = ArraySplit({
      'inputs': np.random.default_rng(0).integers(0, 256, (50_000, 32, 32, 3), np.uint8),
      'targets': np.zeros(50_000, np.int32)})
  make = {'default experiment': (lambda i: placed(i), on_device),
          'CIFAR-shaped crop_flip 128': (
              lambda i, h=TrainBatches(cifar, 128, 0, 'crop_flip'): parallel.shard_batch(
                  h(i), mesh), DeviceBatches([cifar], 128, [0], mesh, 'crop_flip'))}
  for name, (host_make, device_make) in make.items():
    ms = {}
    for where, fn in (('host', host_make), ('device', device_make)):
      jax.block_until_ready(fn(999))   # compiled
      t0 = time.perf_counter()
      for i in range(1000, 1050):    # steps not seen yet
        jax.block_until_ready(fn(i))
      ms[where] = (time.perf_counter() - t0) / 50 * 1e3
    t0 = time.perf_counter()    # the device path as the loop runs it: dispatched, not waited for
    pending = [device_make(i) for i in range(2000, 2050)]
    dispatch_ms = (time.perf_counter() - t0) / 50 * 1e3
    jax.block_until_ready(pending)
    out.append({'section': 'data', 'name': f'make one batch: {name}',
                'host_ms': ms['host'], 'device_ms': ms['device'],
                'host_over_device': ms['host'] / ms['device'],
                # what the host spends per train step on data: all of it on the host path,
                # the dispatch on the device path
                'host_ms_per_step': dispatch_ms})
  cached_rate = out[2]['steps_per_s']
  for r in out[:3]:
    r.update(section='data', vs_cached_batch=r['steps_per_s'] / cached_rate,
             data_wait_fraction=max(0.0, 1 - r['steps_per_s'] / cached_rate))
  return out


def section_seeds(a, peak):
  from benchmarks import seeds
  med = seeds.measure(depth=20, n_seeds=8, steps=a.steps, repeats=a.repeats)
  one = med['1 seed']
  return [{'section': 'seeds', 'name': k, 'ms_per_step': v * 1e3, 'vs_one_seed': v / one,
           'steps_per_s': 1 / v} for k, v in med.items()]


def section_accelerator(a, peak):
  from benchmarks import accelerator
  return accelerator.section_accelerator(a, peak)


def fmt_row(r) -> str:
  extra = {k: v for k, v in r.items() if k not in ('name', 'section', 'steps_per_s', 'min', 'max')
           and isinstance(v, (int, float)) and np.isfinite(v)}
  spread = f' ({r["min"]:.2f}-{r["max"]:.2f})' if 'min' in r else ''
  rate = f'{r["steps_per_s"]:8.2f} steps/s' if 'steps_per_s' in r else ' ' * 16
  return (f'  {r["name"]:<44} {rate}{spread}  ' +
          '  '.join(f'{k}={v:.3g}' for k, v in extra.items()))


COLUMNS = {  # section -> extra columns shown in the markdown table
    'resnet': ['vs_pytorch_channels_last', 'gflops', 'analytic_gflops', 'percent_of_peak',
               'compile_s', 'memory_mb'],
    'sequence': ['vs_pytorch', 'gflops', 'percent_of_peak', 'compile_s', 'memory_mb'],
    'norms': ['time_vs_none', 'compile_s', 'memory_mb'],
    'depth': ['step_time_vs_resnet20', 'analytic_flops_vs_resnet20', 'gflops', 'compile_s',
              'memory_mb'],
    'data': ['vs_cached_batch', 'data_wait_fraction', 'host_ms', 'device_ms', 'host_over_device',
             'host_ms_per_step'],
    'seeds': ['ms_per_step', 'vs_one_seed'],
    'accelerator': ['tflops', 'peak_tflops', 'mfu', 'data_wait_fraction', 'ms_per_step',
                    'compile_s', 'memory_mb'],
}


def markdown(info, rows) -> str:
  lines = [f'Device: {info["device"]} ({info["backend"]}), jax {info["jax"]}, torch '
           f'{info["torch"]}; float32 peak {info["peak_gflops_float32"]:.0f} GFLOP/s '
           f'({info["peak_derivation"]}); {info["repeats"]} interleaved rounds of '
           f'{info["steps"]} timed steps (after {info.get("warmup", 0)} untimed); '
           f'process peak RSS {info["peak_rss_mb"]:.0f} MB.', '']
  for section, cols in COLUMNS.items():
    mine = [r for r in rows if r.get('section') == section]
    if not mine:
      continue
    lines += [f'### {section}', '', '| | steps/s (min–max) | ' + ' | '.join(cols) + ' |',
              '|---|---|' + '---|' * len(cols)]
    for r in mine:
      spread = f' ({r["min"]:.2f}–{r["max"]:.2f})' if 'min' in r else ''
      rate = f'{r["steps_per_s"]:.2f}' if 'steps_per_s' in r else '–'
      lines.append(f'| {r["name"]} | {rate}{spread} | ' + ' | '.join(
          f'{r[c]:.3g}' if isinstance(r.get(c), (int, float)) and np.isfinite(r[c]) else '–'
          for c in cols) + ' |')
    lines.append('')
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--only', default=','.join(SECTIONS), help=f'sections: {",".join(SECTIONS)}')
  p.add_argument('--steps', type=int, default=None,
                 help='timed steps per contender per round (default: 100 on a GPU/TPU, 3 on a '
                 'CPU, 2 with --smoke)')
  p.add_argument('--smoke', action='store_true',
                 help='the accelerator section with tiny shapes (the CPU check CI runs)')
  p.add_argument('--repeats', type=int, default=5, help='interleaved rounds')
  p.add_argument('--warmup', type=int, default=1,
                 help='untimed steps of each contender at the start of each round')
  p.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results.json'))
  p.add_argument('--markdown', default=None, help='also write the tables as markdown here')
  a = p.parse_args()
  chosen = [s for s in a.only.split(',') if s]
  unknown = sorted(set(chosen) - set(SECTIONS))
  if unknown:
    p.error(f'unknown sections {unknown}; valid: {", ".join(SECTIONS)}')
  if a.steps is None:
    a.steps = 2 if a.smoke else 3 if jax.default_backend() == 'cpu' else 100
  peak, how = machine_peak()
  info = {'machine': platform.processor() or platform.machine(), 'backend': jax.default_backend(),
          'device': jax.devices()[0].device_kind, 'jax': jax.__version__,
          'peak_gflops_float32': peak, 'peak_derivation': how,
          'steps': a.steps, 'repeats': a.repeats, 'warmup': a.warmup}
  try:
    import torch
    info['torch'], info['torch_threads'] = torch.__version__, torch.get_num_threads()
  except ImportError:
    info['torch'] = None
  print(f'normlab speed suite on {info["device"]} ({info["backend"]}), jax {info["jax"]}, '
        f'torch {info["torch"]}; float32 peak {peak:.0f} GFLOP/s ({how})', flush=True)
  rows = []
  for name in chosen:
    if name in ('resnet', 'sequence') and info['torch'] is None:
      print(f'[{name}] skipped: torch is not installed (pip install -r benchmarks/requirements.txt)')
      continue
    t0 = time.perf_counter()
    out = globals()[f'section_{name}'](a, peak)
    print(f'[{name}]  ({time.perf_counter() - t0:.0f} s)', flush=True)
    for r in out:
      print(fmt_row(r), flush=True)
    rows += out
  info['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  if jax.default_backend() != 'cpu':   # the devices' own peak (what XLA allocated)
    stats = jax.devices()[0].memory_stats() or {}
    info['device_peak_mb'] = stats.get('peak_bytes_in_use', float('nan')) / 2**20
  print(f'process peak RSS {info["peak_rss_mb"]:.0f} MB')
  with open(a.out, 'w') as f:
    json.dump({'info': info, 'rows': rows}, f, indent=1, default=float)
  print(f'wrote {a.out}')
  if a.markdown:
    with open(a.markdown, 'w') as f:
      f.write(markdown(info, rows) + '\n')
    print(f'wrote {a.markdown}')


if __name__ == '__main__':
  jnp.zeros(())   # start the backend before timing anything
  main()
