"""A run's working directory: one run at a time, nothing left behind by a refused start, and files
that are never read half-written.

* ``WorkdirLock``: ``<workdir>/run.lock`` holds the pid, host and start time of the run using it.
  A second run on the same workdir refuses with a message naming the holder; a lock left by a
  process that no longer runs on this host, or whose pid now belongs to a process started after
  the lock was written, is taken over (with a warning). Two runs interleaving
  checkpoints and metrics would corrupt both, which is worse than refusing.
* ``prepare``: creates the workdir, checks that it is writable, and returns a cleanup that removes
  it again when the start is refused before anything was written into it.
* ``write_json``: atomic (temp file + rename), NaN/inf written as null so the file stays JSON.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import socket
from collections.abc import Callable
from typing import Any

from onetrans_jax.errors import WorkdirError

LOCK_FILE = 'run.lock'


def _alive(pid: int) -> bool:
  """Whether process ``pid`` runs on this host (a process of another user counts as running)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _start_time(pid: int) -> float | None:
  """When process ``pid`` started, in seconds since the epoch (Linux /proc; None elsewhere)."""
  try:
    with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
      # Field 22 (starttime, clock ticks after boot); the command name (field 2) may hold spaces,
      # so count from the closing parenthesis.
      ticks = int(f.read().rsplit(')', 1)[1].split()[19])
    with open('/proc/stat', encoding='utf-8') as f:
      boot = next(int(line.split()[1]) for line in f if line.startswith('btime '))
    return boot + ticks / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, IndexError, StopIteration):
    return None


def _pid_reused(pid: int, started: Any) -> bool:
  """Whether the live process ``pid`` started after the lock was written (``started``, ISO time):
  then it is not the lock's writer but a later process given the same pid (a run killed at a
  session's end leaves its lock; after a reboot its pid may belong to anything)."""
  t = _start_time(pid)
  try:
    when = datetime.datetime.fromisoformat(str(started))
  except ValueError:
    return False
  if t is None:   # no /proc: the pid counts as the writer's, as before
    return False
  if when.tzinfo is None:
    when = when.replace(tzinfo=datetime.timezone.utc)
  return t > when.timestamp() + 2.0   # the lock's time and the boot time are whole seconds


class WorkdirLock:
  """Exclusive use of a workdir by one run (only process 0 of a multi-process job takes it)."""

  def __init__(self, workdir: str, log: Callable[[str], None] = print):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._log = log
    self._held = False

  def _holder(self) -> dict[str, Any] | None:
    try:
      with open(self.path, encoding='utf-8') as f:
        return json.load(f)
    except FileNotFoundError:
      return {}
    except (OSError, ValueError):
      return None  # a lock whose writer died before finishing it

  def acquire(self) -> None:
    me = {'pid': os.getpid(), 'host': socket.gethostname(),
          'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder, reused = self._holder(), False
        if holder == {}:
          continue  # released meanwhile: try again
        if holder is not None:
          pid, host = int(holder.get('pid', -1)), str(holder.get('host', '?'))
          if host != me['host']:
            raise WorkdirError(
                f'{os.path.dirname(self.path)} is in use by pid {pid} on host {host} (since '
                f'{holder.get("started", "?")}); use another --workdir, or, if that run is no '
                f'longer running, delete {self.path}') from None
          alive = pid == me['pid'] or _alive(pid)
          reused = alive and pid != me['pid'] and _pid_reused(pid, holder.get('started'))
          if alive and not reused:
            raise WorkdirError(
                f'{os.path.dirname(self.path)} is in use by another run (pid {pid}, since '
                f'{holder.get("started", "?")}); wait for it to finish or use another --workdir')
        why = ('unreadable' if holder is None else
               f'pid {holder.get("pid")} is a process started after it' if reused else
               f'pid {holder.get("pid")} no longer runs')
        self._log(f'warning: taking over the stale lock {self.path} ({why})')
        try:
          os.remove(self.path)
        except FileNotFoundError:
          pass
        continue
      with os.fdopen(fd, 'w', encoding='utf-8') as f:
        json.dump(me, f)
      self._held = True
      return
    raise WorkdirError(f'could not take the lock {self.path}: another run keeps taking it')

  def release(self) -> None:
    if not self._held:
      return
    holder = self._holder()
    if holder and holder.get('pid') == os.getpid():
      os.remove(self.path)
    self._held = False

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc: Any) -> None:
    self.release()


def prepare(workdir: str) -> Callable[[], None]:
  """Create ``workdir`` (clear error when impossible); -> a cleanup that removes what this start
  created if the start is refused: the directories it made, when they are still empty."""
  made = []
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    made.append(path)
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir {workdir} is a file, not a directory; choose another path')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f'cannot create --workdir {workdir}: {e.strerror}; choose a path you can '
                       'write to') from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise WorkdirError(f'--workdir {workdir} is not writable; choose a path you can write to')

  def cleanup() -> None:
    for d in made:  # deepest first
      try:
        os.rmdir(d)
      except OSError:
        return  # not empty (something was written) or already gone: keep it

  return cleanup


def _finite(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _finite(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_finite(v) for v in tree]
  if isinstance(tree, float) and not math.isfinite(tree):
    return None
  return tree


def write_json(path: str, tree: Any) -> None:
  """``tree`` as JSON at ``path``, atomically; NaN / inf become null (strict JSON)."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(_finite(json.loads(json.dumps(tree, default=float))), f, indent=1,
              allow_nan=False)
    f.write('\n')
  os.replace(tmp, path)
