"""training/huge_pages.py: when the process restarts, with what, and that the restart keeps the
program's arguments and results."""

import json
import os
import subprocess
import sys

import pytest

from training import huge_pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def supported(monkeypatch):
  monkeypatch.setattr(huge_pages, 'supported', lambda: True)


def test_restart_env_adds_the_tunable_and_keeps_the_others(supported):
  assert huge_pages.restart_env({'A': '1'}) == {
      'A': '1', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  env = huge_pages.restart_env({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'


@pytest.mark.parametrize('environ', [
    {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'},       # already restarted (no loop)
    {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'},       # the user chose
    {'NORMLAB_HUGE_PAGES': '0'},                        # opted out
])
def test_no_restart_when_set_or_opted_out(supported, environ):
  assert huge_pages.restart_env(environ) is None


def test_no_restart_where_unsupported(monkeypatch):
  monkeypatch.setattr(huge_pages, 'supported', lambda: False)
  assert huge_pages.restart_env({}) is None


def test_supported_reads_glibc_version_and_the_kernel_setting(monkeypatch, tmp_path):
  setting = tmp_path / 'enabled'
  monkeypatch.setattr(huge_pages, 'THP_SETTING', str(setting))
  monkeypatch.setattr(huge_pages.sys, 'platform', 'linux')
  for libc, thp, expected in [(('glibc', '2.36'), 'always [madvise] never', True),
                              (('glibc', '2.36'), 'always madvise [never]', False),
                              (('glibc', '2.34'), '[always] madvise never', False),
                              (('musl', '1.2'), '[always] madvise never', False)]:
    monkeypatch.setattr(huge_pages.platform, 'libc_ver', lambda libc=libc: libc)
    setting.write_text(thp + '\n')
    assert huge_pages.supported() is expected, (libc, thp)


PROBE = '''
if __name__ == '__main__':
  from training import huge_pages
  huge_pages.restart_with_huge_pages()
import json, os, sys
import jax, jax.numpy as jnp
x = jnp.arange(12_000_000, dtype=jnp.float32)  # temporaries of ~48 MB: mmapped by malloc
y = jax.jit(lambda v: jnp.sort(jnp.sin(v) * v)[::1000].sum() + jnp.cumsum(v)[-1])(x)
print(json.dumps({'argv': sys.argv[1:], 'tunables': os.environ.get('GLIBC_TUNABLES'),
                  'value': float(y)}))
'''


def _probe(tmp_path, env):
  script = tmp_path / 'probe.py'
  script.write_text(PROBE)
  out = subprocess.run([sys.executable, str(script), '--a=1', 'b c'], cwd=ROOT, check=True,
                       capture_output=True, text=True,
                       env={**os.environ, 'PYTHONPATH': ROOT, **env})
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not huge_pages.supported(), reason='needs glibc >= 2.35 and THP not off')
def test_restarted_program_keeps_its_arguments_and_its_results(tmp_path):
  restarted = _probe(tmp_path, {'GLIBC_TUNABLES': '', 'NORMLAB_HUGE_PAGES': '1'})
  plain = _probe(tmp_path, {'GLIBC_TUNABLES': '', 'NORMLAB_HUGE_PAGES': '0'})
  assert restarted['tunables'] == 'glibc.malloc.hugetlb=1'
  assert plain['tunables'] == ''
  assert restarted['argv'] == plain['argv'] == ['--a=1', 'b c']
  assert restarted['value'] == plain['value']     # bit-identical: only the memory's source differs
