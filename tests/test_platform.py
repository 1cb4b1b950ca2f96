"""training/platform.py: a machine whose accelerator JAX cannot see is refused in one line naming
the install, unless the config asks for the CPU (tested by forcing what the device files and the
backend say)."""

import fnmatch
import os

import pytest

from errors import ConfigError
from training import platform


def files(*paths):
  return lambda pattern: [p for p in paths if fnmatch.fnmatch(p, pattern)]


@pytest.mark.parametrize('device,install', [('/dev/nvidia0', 'requirements-cuda.txt'),
                                            ('/dev/accel0', 'requirements-tpu.txt')])
def test_visible_accelerator_with_a_cpu_backend_is_refused_naming_the_install(device, install):
  find = files('/dev/null', device)
  with pytest.raises(ConfigError, match=f'{device} shows a .*pip install -r {install}.*'
                                        'platform=cpu'):
    platform.check('auto', 'cpu', find)
  platform.check('cpu', 'cpu', find)        # asked for the CPU: trains there
  platform.check('auto', 'gpu', find)       # the accelerator's backend is in use
  platform.check('auto', 'cpu', files('/dev/null', '/dev/nvidiactl'))   # no device behind it


def test_unknown_platform_lists_the_valid_ones():
  with pytest.raises(ConfigError, match='valid: auto, cpu'):
    platform.check('cuda', 'cpu', files())


# ---- the persistent compilation cache survives runs that stop while writing it -------------

COMPILE = '''
import sys, jax, jax.numpy as jnp
from training import platform
platform.compilation_cache(sys.argv[1])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
print(float(jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((8, 8))).sum()))
'''


def compile_once(directory):
  import subprocess
  import sys
  return subprocess.run([sys.executable, '-c', COMPILE, str(directory)], capture_output=True,
                        text=True, cwd=platform.__file__.rsplit('/training/', 1)[0], check=True)


def entries(directory):
  return sorted(directory.glob('*-cache'))


def test_a_truncated_cache_entry_is_compiled_again_without_a_warning_and_written_whole(tmp_path):
  """A run killed while JAX wrote an entry left its first bytes: the next run says nothing on
  stderr, gets the same result, and leaves the entry whole (as a fresh compile writes it)."""
  from jax._src import compilation_cache as cache_lib
  first = compile_once(tmp_path)
  written = entries(tmp_path)
  assert written
  for entry in written:
    whole = entry.read_bytes()
    cache_lib.decompress_executable(whole)   # a whole entry decompresses
    entry.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(Exception):
      cache_lib.decompress_executable(entry.read_bytes())
  again = compile_once(tmp_path)
  assert again.stdout == first.stdout and 'cache' not in again.stderr, again.stderr
  assert entries(tmp_path) == written
  for entry in written:
    cache_lib.decompress_executable(entry.read_bytes())
  assert not list(tmp_path.glob('.*partial'))


def test_a_cache_write_the_machine_refuses_leaves_no_entry_and_raises_nothing(
    tmp_path, monkeypatch):
  import errno
  import os
  from jax._src import lru_cache
  platform._whole_cache_entries()
  cache = lru_cache.LRUCache(str(tmp_path), max_size=-1)   # no eviction: JAX's default

  def disk_full(*args):
    raise OSError(errno.ENOSPC, 'No space left on device')
  with monkeypatch.context() as patch:
    patch.setattr(os, 'replace', disk_full)
    cache.put('key', b'bytes')
  assert list(tmp_path.iterdir()) == [] and cache.get('key') is None
  cache.put('key', b'bytes')
  assert cache.get('key') == b'bytes' and [e.name for e in entries(tmp_path)] == ['key-cache']


def test_matmul_precision_reaches_every_compiled_matmul_and_bad_values_are_refused():
  """config.matmul_precision=highest: the float32 dots compiled after build_experiment ask XLA
  for full precision (what GPUs' TF32 default would drop); `default` asks for none; an
  unknown value is refused listing the valid ones."""
  import jax
  import jax.numpy as jnp
  from conftest import tiny_config
  from training import experiment
  x = jnp.ones((4, 4))
  lowered = lambda: jax.jit(lambda a: a @ a).lower(x).as_text()
  try:
    experiment.build_experiment(tiny_config(matmul_precision='highest'))
    assert 'HIGHEST' in lowered()
    experiment.build_experiment(tiny_config())
    assert 'HIGHEST' not in lowered()
  finally:
    jax.config.update('jax_default_matmul_precision', None)
  with pytest.raises(ConfigError, match="unknown matmul_precision 'tf32'; valid: default, high, "
                                        "highest"):
    experiment.build_experiment(tiny_config(matmul_precision='tf32'))


DETERMINISTIC = '''
import os, sys, jax
from configs import default
from training import experiment, platform
config = default.get_config('8')   # not conftest.tiny_config: it asks JAX for the backend
config.deterministic = True
assert not jax._src.xla_bridge.backends_are_initialized()
experiment.build_experiment(config)
print(os.environ['XLA_FLAGS'].split().count(platform.DETERMINISTIC_FLAG),
      float(jax.jit(lambda x: x.sum())(jax.numpy.ones(3))))
'''


def test_deterministic_sets_xlas_flag_before_the_backend_starts_and_after_it_is_refused():
  """config.deterministic=True puts XLA:GPU's deterministic flag in XLA_FLAGS before JAX starts
  its backend (XLA parses every backend's flags: an unknown one would abort here too); in a
  process whose backend started without it, one line refuses it."""
  import subprocess
  import sys
  import jax
  from conftest import ROOT, tiny_config
  from training import experiment
  result = subprocess.run([sys.executable, '-c', DETERMINISTIC], capture_output=True, text=True,
                          cwd=os.path.join(ROOT, 'tests'), env={
                              **os.environ, 'PYTHONPATH': ROOT, 'XLA_FLAGS': ''})
  assert result.returncode == 0 and result.stdout.split() == ['1', '3.0'], result.stderr[-2000:]
  jax.devices()   # this process: started without the flag
  if platform.DETERMINISTIC_FLAG not in os.environ.get('XLA_FLAGS', ''):
    with pytest.raises(ConfigError, match='deterministic=True after JAX started without it'):
      experiment.build_experiment(tiny_config(deterministic=True))


# ---- packed sweeps: which devices each process of `--devices_per_run` sees -----------------

def test_packing_gives_each_process_its_own_gpus_read_without_starting_jax():
  gpus = files(*(f'/dev/nvidia{i}' for i in range(8)), '/dev/nvidiactl')
  kind, ids = platform.local_devices({}, gpus)
  assert (kind, ids) == ('gpu', [str(i) for i in range(8)])
  envs = platform.slot_environments(kind, ids, 2, {'PATH': '/bin'})
  assert [e['CUDA_VISIBLE_DEVICES'] for e in envs] == ['0,1', '2,3', '4,5', '6,7']
  assert all(e['PATH'] == '/bin' for e in envs)
  # a scheduler that gave this job GPUs 4-6: two runs of one GPU... and one left over of two
  kind, ids = platform.local_devices({'CUDA_VISIBLE_DEVICES': '4,5,6'}, gpus)
  assert [e['CUDA_VISIBLE_DEVICES'] for e in platform.slot_environments(kind, ids, 2, {})] == \
      ['4,5']
  with pytest.raises(ConfigError, match=r'devices_per_run=4: this machine shows 3 gpu device\(s\) '
                                        r'\(4, 5, 6\)'):
    platform.slot_environments(kind, ids, 4, {})


def test_packing_on_the_cpu_forces_each_process_host_device_count():
  env = {'XLA_FLAGS': '--xla_cpu_foo=1 --xla_force_host_platform_device_count=4'}
  kind, ids = platform.local_devices(env, files())
  assert (kind, len(ids)) == ('cpu', 4)
  envs = platform.slot_environments(kind, ids, 2, env)
  assert [e['XLA_FLAGS'] for e in envs] == [
      '--xla_cpu_foo=1 --xla_force_host_platform_device_count=2'] * 2
  assert platform.local_devices({}, files()) == ('cpu', ['0'])


@pytest.mark.parametrize('chip_files', [[f'/dev/accel{i}' for i in range(4)],
                                        [*(f'/dev/vfio/{i}' for i in range(4)), '/dev/vfio/vfio']])
def test_packing_splits_a_tpu_hosts_chips_among_processes_that_do_not_talk(chip_files):
  kind, ids = platform.local_devices({}, files(*chip_files))
  assert (kind, ids) == ('tpu', ['0', '1', '2', '3'])
  one = platform.slot_environments(kind, ids, 1, {'PATH': '/bin'})
  assert [e['TPU_VISIBLE_CHIPS'] for e in one] == ['0', '1', '2', '3']
  assert {e['TPU_CHIPS_PER_PROCESS_BOUNDS'] for e in one} == {'1,1,1'}
  assert {e['TPU_PROCESS_BOUNDS'] for e in one} == {'1,1,1'}
  ports = [e['TPU_PROCESS_PORT'] for e in one]
  assert len(set(ports)) == 4 and all(e['PATH'] == '/bin' for e in one)
  assert [e['TPU_MESH_CONTROLLER_ADDRESS'] for e in one] == [f'localhost:{p}' for p in ports]
  two = platform.slot_environments(kind, ids, 2, {})
  assert [(e['TPU_VISIBLE_CHIPS'], e['TPU_CHIPS_PER_PROCESS_BOUNDS']) for e in two] == \
      [('0,1', '1,2,1'), ('2,3', '1,2,1')]
  # all of the host's chips: one process, the environment untouched
  assert platform.slot_environments(kind, ids, 4, {'A': '1'}) == [{'A': '1'}]
  with pytest.raises(ConfigError, match='devices_per_run=3 on a TPU host: a process holds 1, 2, 4, 8'):
    platform.slot_environments(kind, ids, 3, {})
  # a job given chips 2 and 3 only
  kind, ids = platform.local_devices({'TPU_VISIBLE_CHIPS': '2,3'}, files(*chip_files))
  assert [e['TPU_VISIBLE_CHIPS'] for e in platform.slot_environments(kind, ids, 1, {})] == ['2', '3']
