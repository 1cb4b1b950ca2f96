"""Large host allocations on transparent huge pages: restart the process once with glibc's
`glibc.malloc.hugetlb=1` tunable.

On CPU, XLA allocates each train step's temporary buffers (all activations kept for the backward
pass: 320 MB for ResNet-20 at batch 128, 1.8 GB for ResNet-110) with malloc, which maps blocks
that large with a fresh `mmap` and returns them with `munmap` when the step ends. The next step
touches every page anew, so the kernel takes one page fault per 4 KiB and zeroes it: ResNet-20
spent 150-200 ms of system time per ~470 ms step on that (80,000 faults per step). With the
tunable, glibc asks for transparent huge pages on those mappings (2 MiB per fault): ~40 ms of
system time, a step of ~390 ms; in alternating fresh processes ResNet-20 ran 1.12x and
ResNet-110 1.19x faster (`python -m benchmarks.ab --huge-pages`, benchmarks/RESULTS.md). That was
measured in this project's Firecracker microVMs, whose kernel reports freed memory to the host
(`page_reporting_order=11`), so that a page faulted in again may cost the host a fault too: on a
bare Linux host the gain is likely smaller. Huge pages do not avoid zeroing the pages.

glibc reads tunables only when a program starts, hence the restart; it happens before anything is
parsed or written, with the same interpreter and arguments. Nothing changes when the tunable is
already set, when glibc is older than 2.35 or not the C library, when the kernel has transparent
huge pages off (`never`), or with `NORMLAB_HUGE_PAGES=0`. Results are bit-identical either way:
only where the memory comes from changes.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = 'glibc.malloc.hugetlb'
OPT_OUT = 'NORMLAB_HUGE_PAGES'   # =0: leave the process alone
THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def supported() -> bool:
  """glibc >= 2.35 on Linux (the tunable's first release) with transparent huge pages not off."""
  if sys.platform != 'linux':
    return False
  libc, version = platform.libc_ver()
  try:
    if libc != 'glibc' or tuple(int(v) for v in version.split('.')[:2]) < (2, 35):
      return False
    with open(THP_SETTING) as f:
      return '[never]' not in f.read()
  except (OSError, ValueError):
    return False


def restart_env(environ) -> dict[str, str] | None:
  """The environment to restart with, or None when the process should go on as it is."""
  tunables = environ.get('GLIBC_TUNABLES', '')
  if environ.get(OPT_OUT, '1') == '0' or TUNABLE in tunables or not supported():
    return None
  return {**environ, 'GLIBC_TUNABLES': ':'.join(filter(None, [tunables, f'{TUNABLE}=1']))}


def restart_with_huge_pages():
  """Call first thing in a program's `if __name__ == '__main__':` (a script run from a file or
  with -m: the restart re-runs `sys.orig_argv`)."""
  env = restart_env(os.environ)
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
