"""Which hardware a run trains on, and a refusal when JAX cannot see the accelerator that the
machine has (a CPU-only jaxlib on a GPU machine trains on the CPU with one warning otherwise).

`config.platform`: `auto` (JAX's default backend: the accelerator where its plugin is
installed) or `cpu` (the CPU, even where an accelerator is visible: asked for, not by accident).
"""

from __future__ import annotations

import glob

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
  return jax.config.jax_compilation_cache_dir
