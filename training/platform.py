"""Which hardware a run trains on, and a refusal when JAX cannot see the accelerator that the
machine has (a CPU-only jaxlib on a GPU machine trains on the CPU with one warning otherwise).

`config.platform`: `auto` (JAX's default backend: the accelerator where its plugin is
installed) or `cpu` (the CPU, even where an accelerator is visible: asked for, not by accident).
"""

from __future__ import annotations

import glob
import os
import re

from errors import ConfigError

PLATFORMS = ('auto', 'cpu')
# device files an accelerator's kernel driver makes, and the install that lets JAX use it
ACCELERATORS = (
    ('NVIDIA GPU', '/dev/nvidia[0-9]*', 'pip install -r requirements-cuda.txt'),
    ('TPU', '/dev/accel[0-9]*', 'pip install -r requirements-tpu.txt'),
    ('TPU', '/dev/vfio/[0-9]*', 'pip install -r requirements-tpu.txt'),
)


def check(platform: str, backend: str, find=glob.glob) -> None:
  """One line, before anything is loaded, when accelerator hardware is visible but JAX's
  backend is the CPU and the config did not ask for the CPU. `find`: glob (tests pass theirs)."""
  if platform not in PLATFORMS:
    raise ConfigError(f'unknown platform {platform!r}; valid: {", ".join(PLATFORMS)}')
  if platform == 'cpu' or backend != 'cpu':
    return
  for kind, pattern, install in ACCELERATORS:
    found = sorted(find(pattern))
    if found:
      raise ConfigError(f'{found[0]} shows a {kind}, but JAX runs on the CPU (this install has '
                        f'no {kind} support): {install}, or --config.platform=cpu to train on '
                        'the CPU')


# XLA:GPU's deterministic mode: reductions, scatters and the autotuner's choices run the same way
# every time (slower); the CPU and TPU backends are deterministic already and ignore it
DETERMINISTIC_FLAG = '--xla_gpu_deterministic_ops=true'


def deterministic(on: bool) -> None:
  """config.deterministic: adds DETERMINISTIC_FLAG to XLA_FLAGS, which XLA reads when its
  backend starts: so before that, or a one-line refusal (a process whose backend started
  without it cannot turn it on)."""
  import os   # noqa: PLC0415
  from jax._src import xla_bridge   # noqa: PLC0415
  flags = os.environ.get('XLA_FLAGS', '')
  if not on or DETERMINISTIC_FLAG in flags.split():
    return
  if xla_bridge.backends_are_initialized():
    raise ConfigError('config.deterministic=True after JAX started without it in this process '
                      '(a sweep: give every run the same value, or set XLA_FLAGS='
                      f'{DETERMINISTIC_FLAG})')
  os.environ['XLA_FLAGS'] = f'{flags} {DETERMINISTIC_FLAG}'.strip()


def devices(platform: str) -> list:
  """The devices a run's mesh spans: JAX's default backend's, or the CPU's when asked."""
  import jax   # noqa: PLC0415 (asking for devices starts the backend)
  return jax.devices('cpu') if platform == 'cpu' else jax.devices()


def describe(mesh) -> dict:
  """What the run trains on, for resolved.json and the first line of its log."""
  device = mesh.devices.flat[0]
  return {'backend': device.platform, 'devices': mesh.size, 'device_kind': device.device_kind}


def compilation_cache(setting: str) -> str | None:
  """JAX's persistent compilation cache, so that a second identical run (a sweep's next seed, a
  resumed run) loads its compiled steps instead of compiling them again. `setting`
  (config.compilation_cache): '' for the user cache directory ($XDG_CACHE_HOME or ~/.cache,
  then normlab/jax), a directory, or 'off'. Returns the directory in use (None: off). Set
  before the first compile of the process; later settings in the same process are ignored."""
  import os   # noqa: PLC0415
  import jax   # noqa: PLC0415
  if setting == 'off':
    return None
  directory = setting or os.path.join(
      os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'normlab', 'jax')
  if jax.config.jax_compilation_cache_dir is None:
    jax.config.update('jax_compilation_cache_dir', directory)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
    _whole_cache_entries()
  return jax.config.jax_compilation_cache_dir


def _whole_cache_entries() -> None:
  """JAX (0.10) writes a cache entry in place and never rewrites one that exists: a run killed
  or refused (disk full, a file-size limit) during the write leaves a truncated entry that every
  later run of the same step fails to read, with a warning on stderr, and compiles again. Here
  an entry is written to a temporary file and renamed (a reader sees all of it or none), a
  write the machine refuses costs the cache entry and nothing else, and an entry that cannot be
  read is deleted so that the compile that follows writes it whole."""
  import contextlib   # noqa: PLC0415
  import os   # noqa: PLC0415
  import jax   # noqa: PLC0415
  from absl import logging   # noqa: PLC0415
  from jax._src import compilation_cache as cache_lib, lru_cache   # noqa: PLC0415
  if getattr(lru_cache.LRUCache.put, 'whole', False):
    return
  original_put, original_get = lru_cache.LRUCache.put, cache_lib.get_executable_and_time

  def put(self, key: str, value: bytes) -> None:
    if self.eviction_enabled or not lru_cache._is_local_filesystem(str(self.path)):
      return original_put(self, key, value)   # under the cache's lock / on remote storage
    path = self.path / f'{key}{lru_cache._CACHE_SUFFIX}'
    if path.exists():
      return
    partial = path.with_name(f'.{path.name}.{os.getpid()}.partial')
    try:
      partial.write_bytes(value)
      os.replace(partial, path)
    except OSError as error:
      with contextlib.suppress(OSError):
        partial.unlink()
      logging.info('compilation cache entry %s not written: %s', key, error)

  def get(cache_key, *args, **kwargs):
    try:
      return original_get(cache_key, *args, **kwargs)
    except cache_lib.CacheVerificationError:
      raise
    except Exception as error:   # noqa: BLE001 (truncated or foreign bytes: compile again)
      directory = jax.config.jax_compilation_cache_dir
      if directory:
        (lru_cache.pathlib.Path(directory) / f'{cache_key}{lru_cache._CACHE_SUFFIX}').unlink(
            missing_ok=True)
      logging.info('compilation cache entry %s unreadable (%s): compiling again', cache_key,
                   error)
      return None, None

  put.whole = True
  lru_cache.LRUCache.put = put
  cache_lib.get_executable_and_time = get


# ---- packing runs onto a machine's devices (experiments/sweep.py --devices_per_run) ----------

FORCED_CPU_DEVICES = re.compile(r'--xla_force_host_platform_device_count=(\d+)')


def local_devices(environ=os.environ, find=glob.glob) -> tuple[str, list[str]]:
  """The kind and ids of this machine's devices, read without starting JAX (a process that
  starts it on a GPU holds memory on every GPU): `gpu` (CUDA_VISIBLE_DEVICES where set, else the
  /dev/nvidia<N> files), `tpu` (chips: TPU_VISIBLE_CHIPS where set, else the /dev/accel<N> or
  /dev/vfio/<N> files), else `cpu` (as many as XLA_FLAGS forces, else 1)."""
  gpus = _numbered(find, '/dev/nvidia')
  if gpus:
    return 'gpu', _visible(environ, 'CUDA_VISIBLE_DEVICES', gpus)
  chips = _numbered(find, '/dev/accel') or _numbered(find, '/dev/vfio/')
  if chips:
    return 'tpu', _visible(environ, 'TPU_VISIBLE_CHIPS', chips)
  forced = FORCED_CPU_DEVICES.search(environ.get('XLA_FLAGS', ''))
  return 'cpu', [str(i) for i in range(int(forced.group(1)) if forced else 1)]


def _numbered(find, prefix: str) -> list[str]:
  return sorted((p[len(prefix):] for p in find(f'{prefix}[0-9]*') if p[len(prefix):].isdigit()),
                key=int)


def _visible(environ, variable: str, found: list[str]) -> list[str]:
  visible = environ.get(variable)
  return [v for v in visible.split(',') if v] if visible is not None else found


# A TPU host's chips split among processes that do not talk to each other (the recipe of JAX's
# Cloud TPU notes): each process sees its chips (TPU_VISIBLE_CHIPS; TPU_VISIBLE_DEVICES for
# older libtpu), lays them out as a chips-per-process box in a 1x1x1 process grid, and has a
# port of its own. Boxes for the chip counts a process can hold on one host (a v4 or v5p host
# has 4 chips, a v5e/v6e host up to 8).
TPU_CHIP_BOUNDS = {1: '1,1,1', 2: '1,2,1', 4: '2,2,1', 8: '2,4,1'}
TPU_FIRST_PORT = 8476


def slot_environments(kind: str, ids: list[str], per_run: int, environ=os.environ) -> list[dict]:
  """One environment per group of `per_run` devices, for a process that sees only those: GPUs
  by CUDA_VISIBLE_DEVICES; TPU chips by TPU_VISIBLE_CHIPS, chip bounds and a port each (all of
  a host's chips: the environment as it is); the CPU (tests) by XLA's forced host device count.
  Devices left over (fewer than `per_run`) stay idle."""
  if not 1 <= per_run <= len(ids):
    raise ConfigError(f'--devices_per_run={per_run}: this machine shows {len(ids)} {kind} '
                      f'device(s) ({", ".join(ids)})')
  if kind == 'tpu' and per_run not in TPU_CHIP_BOUNDS:
    raise ConfigError(f'--devices_per_run={per_run} on a TPU host: a process holds '
                      f'{", ".join(map(str, TPU_CHIP_BOUNDS))} chips')
  out = []
  for start in range(0, len(ids) - per_run + 1, per_run):
    env = dict(environ)
    group = ','.join(ids[start:start + per_run])
    if kind == 'gpu':
      env['CUDA_VISIBLE_DEVICES'] = group
    elif kind == 'tpu':
      if per_run < len(ids):
        port = str(TPU_FIRST_PORT + start // per_run)
        env.update(TPU_VISIBLE_CHIPS=group, TPU_VISIBLE_DEVICES=group,
                   TPU_CHIPS_PER_PROCESS_BOUNDS=TPU_CHIP_BOUNDS[per_run],
                   TPU_PROCESS_BOUNDS='1,1,1', TPU_PROCESS_PORT=port,
                   TPU_MESH_CONTROLLER_PORT=port, TPU_MESH_CONTROLLER_ADDRESS=f'localhost:{port}')
    else:
      env = with_cpu_devices(env, per_run)
    out.append(env)
  return out


def with_cpu_devices(environ: dict, n: int) -> dict:
  """`environ` with XLA_FLAGS forcing `n` host (CPU) devices, its other flags kept."""
  rest = FORCED_CPU_DEVICES.sub('', environ.get('XLA_FLAGS', '')).split()
  return {**environ, 'XLA_FLAGS': ' '.join([*rest, f'--xla_force_host_platform_device_count={n}'])}
