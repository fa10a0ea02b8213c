"""host_memory.py: when a program re-runs itself with glibc's huge-page tunable, and that it works."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from onetrans_jax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Re-runs itself (host_memory.enable), then reports its PID, the tunables and how much of a 96 MB
# malloc'd and written block the kernel backs with huge pages.
SCRIPT = r'''
import ctypes, os, sys
from onetrans_jax import host_memory
host_memory.enable()
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
n = 96 << 20
ptr = libc.malloc(n)
ctypes.memset(ptr, 1, n)
huge = 0
with open('/proc/self/smaps_rollup') as f:
  for line in f:
    if line.startswith('AnonHugePages:'):
      huge = int(line.split()[1])
print(os.getpid(), os.environ.get('GLIBC_TUNABLES', ''), huge, host_memory.status(), sep='|')
'''


@pytest.mark.parametrize('environ, thp, glibc_ok, expected', [
    ({}, 'madvise', True, True),
    ({}, 'always', True, True),
    ({}, 'never', True, False),          # the kernel would ignore the advice
    ({}, None, True, False),             # no THP at all (not Linux's sysfs)
    ({}, 'madvise', False, False),       # glibc before 2.35 has no such tunable
    ({'ONETRANS_HUGEPAGES': '0'}, 'madvise', True, False),
    ({'ONETRANS_HUGEPAGES': 'off'}, 'madvise', True, False),
    ({'ONETRANS_HUGEPAGES': '1'}, 'madvise', True, True),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, 'madvise', True, False),  # the user's choice
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, 'madvise', True, True),
])
def test_wanted(environ, thp, glibc_ok, expected):
  if sys.platform != 'linux':
    expected = False
  assert host_memory.wanted(environ, thp_mode=thp, glibc_ok=glibc_ok) is expected


def test_tunables_keep_the_users():
  assert host_memory.tunables('') == 'glibc.malloc.hugetlb=1'
  assert host_memory.tunables('glibc.malloc.arena_max=2') == (
      'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1')


def test_status():
  assert host_memory.status({}) == 'off'
  assert host_memory.status({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}) == 'off'
  on = host_memory.status({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'})
  assert on.startswith('huge pages (glibc.malloc.hugetlb=1, THP ')


def _run(env_extra: dict[str, str]) -> tuple[subprocess.Popen, list[str]]:
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', 'ONETRANS_HUGEPAGES')}
  env.update(env_extra)
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  proc = subprocess.Popen([sys.executable, '-c', SCRIPT], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  return proc, out.strip().split('|')


@pytest.mark.skipif(not host_memory.wanted({}), reason='no glibc huge-page tunable or no THP here')
def test_the_program_reruns_itself_with_huge_pages():
  proc, (pid, tunables, huge_kb, status) = _run({})
  assert int(pid) == proc.pid                   # the same process, re-run in place (execve)
  assert tunables == 'glibc.malloc.hugetlb=1'
  assert status.startswith('huge pages')
  assert int(huge_kb) > 0                       # the malloc'd block sits on huge pages


@pytest.mark.skipif(not host_memory.wanted({}), reason='no glibc huge-page tunable or no THP here')
def test_a_users_tunables_are_kept_and_extended():
  _, (_, tunables, _, _) = _run({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})
  assert tunables == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'


@pytest.mark.skipif(sys.platform != 'linux', reason='reads /proc')
def test_opting_out_runs_as_started():
  _, (_, tunables, _, status) = _run({'ONETRANS_HUGEPAGES': '0'})
  assert tunables == ''
  assert status == 'off'
