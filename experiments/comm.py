"""What each norm communicates under data parallelism, read off the compiled train step.

  python -m experiments.comm                                  # ResNet-20 on 8 CPU devices
  python -m experiments.comm --config=configs/transformer_mnist1d.py --devices=8

Compiles one train step per (norm, BatchNorm scope) with the batch split over a Mesh of
`--devices` devices and counts the collectives in the optimized HLO (number and bytes). On CPU
the devices are simulated (XLA_FLAGS=--xla_force_host_platform_device_count, set here before
JAX starts); the HLO is what XLA would run on that many real devices. XLA may combine several
all-reduces into one, so compare bytes as well as counts.
"""

import argparse
import os
import re
import sys

import numpy as np

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'collective-permute', 'all-to-all')
DTYPE_BYTES = {'f32': 4, 'f16': 2, 'bf16': 2, 'f64': 8, 's32': 4, 'u32': 4, 's64': 8, 'u64': 8,
               's8': 1, 'u8': 1, 'pred': 1, 's16': 2, 'u16': 2}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--config', default='configs/default.py')
  p.add_argument('--devices', type=int, default=8)
  p.add_argument('--norms', default='batch:global,batch:per_device,layer,group,rms,none')
  p.add_argument('--json', default=None, help='also write the rows to this JSON file')
  a = p.parse_args()
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={a.devices}')
  import jax

  import cli
  from errors import ConfigError
  try:
    config = cli.load_config([f'--config={a.config}'], strict=True)
  except ConfigError as e:
    cli.fail(str(e))
  rows = measure(config, a.norms.split(','), jax.devices()[:a.devices])
  print(f'{a.config}: collectives per train step on {a.devices} devices '
        f'(batch {rows[0]["batch"]}, {jax.default_backend()})')
  print(f'{"norm":<22} {"all-reduce":>10} {"other":>6} {"bytes":>12} {"beyond gradients":>18}')
  for r in rows:
    print(f'{r["norm"]:<22} {r["all-reduce"]:>10} {r["other"]:>6} {r["bytes"]:>12,} '
          f'{r["extra_bytes"]:>+18,}')
  if a.json:
    import json
    with open(a.json, 'w') as f:
      json.dump({'config': a.config, 'devices': a.devices, 'backend': jax.default_backend(),
                 'rows': rows}, f, indent=1)


def measure(base_config, norm_specs, devices):
  import jax

  from training import experiment, parallel, step
  rows = []
  for spec in norm_specs:
    norm, _, scope = spec.partition(':')
    config = base_config.copy_and_resolve_references()
    config.model.norm = norm
    config.model.bn_scope = scope or 'global'
    mesh = parallel.data_mesh(devices)
    exp = experiment.build_experiment(config, mesh)
    state = parallel.replicate(experiment.create_train_state(exp, jax.random.key(0)), mesh)
    batch = parallel.shard_batch(exp.dataset.train.get(range(config.data.batch_size)), mesh)
    hlo = step.compile_steps(exp).train.lower(state, batch).compile().as_text()
    found = collectives(hlo)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    total = sum(b for _, b in found)
    rows.append({'norm': spec, 'batch': config.data.batch_size,
                 'all-reduce': sum(op == 'all-reduce' for op, _ in found),
                 'other': sum(op != 'all-reduce' for op, _ in found), 'bytes': total,
                 # gradients (float32) + the summed metrics are the floor every norm pays
                 'extra_bytes': total - 4 * n_params})
  return rows


def _shape_bytes(shape_text: str) -> int:
  total = 0
  for dtype, dims in re.findall(r'([a-z]+\d*)\[([\d,]*)\]', shape_text):
    if dtype in DTYPE_BYTES:
      total += DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(',') if d] or [1]))
  return total


def collectives(hlo_text: str) -> list[tuple[str, int]]:
  """(op, bytes of its result) for each collective in an optimized HLO module's text."""
  found = []
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([a-z\-]+)(?:-start)?\(', line)
    if m and m.group(2) in COLLECTIVES:
      found.append((m.group(2), _shape_bytes(m.group(1))))
  return found


if __name__ == '__main__':
  sys.exit(main())
