"""training/platform.py: a machine whose accelerator JAX cannot see is refused in one line naming
the install, unless the config asks for the CPU (tested by forcing what the device files and the
backend say)."""

import fnmatch

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
