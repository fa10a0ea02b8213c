"""Transparent huge pages for the host allocator: the training programs re-run themselves once
with glibc's ``glibc.malloc.hugetlb=1`` tunable.

Why: on CPU, XLA allocates each step's temporaries as one large block (92 MB for an ML-1M
RankMixer + Transformer run), which glibc maps fresh with ``mmap`` and unmaps after the step, so
every step faults the whole block in again, 4 KiB at a time: a study lane spent ~15% of its time
in the kernel, 46-88k page faults a second. With the tunable, glibc asks for transparent huge
pages on the blocks it maps (``madvise(MADV_HUGEPAGE)``; the kernel's THP mode must be
``madvise`` or ``always``): measured on one pinned core of the 2-core Intel Xeon, the mechanism
world's OneTrans_S step 199 -> 171 ms and the page faults 1.16M -> 0.27M per benchmark
(tools/hugepages_ab.sh; README, Speed). Numbers are unchanged: only where the memory comes from.

glibc reads its tunables when the process starts, so the only way to set one for the running
program is to start it again: ``os.execv`` with the same interpreter and command line
(``sys.orig_argv``), the same PID, stdin and stdout. It happens at most once (the child sees the
tunable already set) and only where it can matter: Linux, glibc >= 2.35 (the tunable's first
release), THP not ``never``. ``ONETRANS_HUGEPAGES=0`` keeps the process as started; a
``GLIBC_TUNABLES`` that already names ``glibc.malloc.hugetlb`` is the user's and is left alone.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = 'glibc.malloc.hugetlb'
OPT_OUT = 'ONETRANS_HUGEPAGES'
THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def _glibc_at_least(major: int, minor: int) -> bool:
  lib, version = platform.libc_ver()
  if lib != 'glibc' or not version:
    return False
  try:
    return tuple(int(x) for x in version.split('.')[:2]) >= (major, minor)
  except ValueError:
    return False


def _thp_mode(path: str = THP_MODE) -> str | None:
  """The kernel's THP mode ('always', 'madvise' or 'never'), None when it cannot be read."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


_READ = object()   # wanted()'s default: read the machine's THP mode


def wanted(environ: dict[str, str] | None = None, thp_mode: str | None | object = _READ,
           glibc_ok: bool | None = None) -> bool:
  """Whether this process should re-run itself with the tunable. The arguments stand in for
  the process's environment, the kernel's THP mode (None: unreadable) and the glibc check."""
  env = os.environ if environ is None else environ
  if env.get(OPT_OUT, '1').strip().lower() in ('0', 'false', 'no', 'off'):
    return False
  if TUNABLE in env.get('GLIBC_TUNABLES', ''):
    return False   # already set: by the user, or by this module in the parent
  if sys.platform != 'linux':
    return False
  if not (_glibc_at_least(2, 35) if glibc_ok is None else glibc_ok):
    return False
  mode = _thp_mode() if thp_mode is _READ else thp_mode
  return mode in ('madvise', 'always')


def tunables(current: str) -> str:
  """``GLIBC_TUNABLES`` with the hugetlb tunable added to what the user set."""
  return f'{current}:{TUNABLE}=1' if current else f'{TUNABLE}=1'


def status(environ: dict[str, str] | None = None) -> str:
  """What this process runs with, for benchmark records: 'huge pages (THP <mode>)' or 'off'."""
  env = os.environ if environ is None else environ
  settings = dict(kv.split('=', 1) for kv in env.get('GLIBC_TUNABLES', '').split(':') if '=' in kv)
  if settings.get(TUNABLE, '0') in ('0', ''):
    return 'off'
  return f'huge pages ({TUNABLE}={settings[TUNABLE]}, THP {_thp_mode() or "unknown"})'


def enable() -> None:
  """Re-runs this program with glibc's huge-page tunable where it helps; returns otherwise.

  Call it first in an entry point, before reading input or writing output: what ran before the
  ``execv`` runs again.
  """
  if not wanted():
    return
  argv = list(getattr(sys, 'orig_argv', []))
  if not argv:
    return
  env = dict(os.environ)
  env['GLIBC_TUNABLES'] = tunables(env.get('GLIBC_TUNABLES', ''))
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable] + argv[1:], env)
  except OSError:
    return  # the program goes on as started: slower, never wrong
