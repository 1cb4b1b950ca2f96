"""Data parallelism on 8 (simulated) CPU devices, in a subprocess: JAX fixes its device count
when it starts, and the rest of the suite runs on one device."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_batch_norm_scopes_and_collectives_on_8_devices():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'multidevice_checks.py')],
                          cwd=os.path.join(ROOT, 'tests'), env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'ALL OK' in result.stdout
