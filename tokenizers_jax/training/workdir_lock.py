"""One training run per workdir: a lock file that names its holder.

  with workdir_lock.hold(workdir):
    ...  # train

`hold` creates `<workdir>/train.lock` atomically (the file appears complete,
or not at all), holding the pid, host and start time of the run, and removes
it when the block ends (normally or by an exception). A second run on the same
workdir fails with `WorkdirLockedError` naming the holder. A lock left by a
run that died without releasing it (kill -9, a crash, a lost VM) is taken
over with a warning when it is provably stale:

  * same host: its pid is gone, or the pid now belongs to a process that
    started later than the holder (pid reuse, e.g. a restarted container);
  * another host: its heartbeat (the file's mtime, touched by a thread every
    `HEARTBEAT_SECS`) is older than `STALE_AFTER_SECS`.

With several processes only process 0 holds the lock; its outcome is
broadcast, so every process fails together when the workdir is taken.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
import uuid

from absl import logging
import jax
import numpy as np

LOCK_NAME = 'train.lock'
HEARTBEAT_SECS = 60.0
STALE_AFTER_SECS = 600.0

# Tokens of the locks this process holds (to tell its own live locks from a
# dead holder whose pid this process reuses).
_HELD_TOKENS: set[str] = set()


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


def _process_start_ticks(pid: int) -> int | None:
  """The start time of `pid` in clock ticks since boot (Linux), else None."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      stat = f.read()
  except OSError:
    return None
  # The command name (field 2) may hold spaces; fields after it are plain.
  fields = stat[stat.rfind(')') + 2:].split()
  try:
    return int(fields[19])
  except (IndexError, ValueError):
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Exists, owned by another user.
  return True


def _describe(holder: dict) -> str:
  return (f"pid {holder.get('pid')} on host {holder.get('host')!r} "
          f"(started {holder.get('started')})")


class WorkdirLock:
  """The lock file of one workdir (see the module docstring).

  Attributes:
    path: the lock file, `<workdir>/train.lock`.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
    self._token = None
    self._stop = threading.Event()
    self._thread = None

  def acquire(self) -> None:
    """Takes the lock (or a stale one) or raises `WorkdirLockedError`."""
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    me = {
        'pid': os.getpid(),
        'host': socket.gethostname(),
        'started': datetime.datetime.now().isoformat(timespec='seconds'),
        'proc_start': _process_start_ticks(os.getpid()),
        'token': uuid.uuid4().hex,
    }
    text = json.dumps(me)
    for _ in range(3):
      if self._create(text):
        self._token = me['token']
        _HELD_TOKENS.add(self._token)
        self._start_heartbeat()
        return
      try:
        with open(self.path) as f:
          stale_text = f.read()
      except FileNotFoundError:
        continue  # Released meanwhile: try again.
      reason = self._stale_reason(stale_text)
      if reason is None:
        raise WorkdirLockedError(self._held_message(stale_text))
      logging.warning('Taking over the lock %s: %s.', self.path, reason)
      self._remove_if_unchanged(stale_text)
    raise WorkdirLockedError(
        f'could not take {self.path}: other runs keep creating it')

  def release(self) -> None:
    """Removes the lock file if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
      self._thread = None
    if self._token is None:
      return
    try:
      with open(self.path) as f:
        mine = json.loads(f.read()).get('token') == self._token
    except (OSError, ValueError):
      mine = False
    if mine:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
    _HELD_TOKENS.discard(self._token)
    self._token = None

  def _create(self, text: str) -> bool:
    """Creates the lock file with `text` unless it exists; True if created."""
    tmp = f'{self.path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp'
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    try:
      os.link(tmp, self.path)  # Atomic, fails if the lock exists.
      return True
    except FileExistsError:
      return False
    except OSError:
      # No hard links on this filesystem: exclusive create instead.
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, 'w') as f:
        f.write(text)
      return True
    finally:
      os.remove(tmp)

  def _stale_reason(self, text: str) -> str | None:
    """Why the lock described by `text` is stale, or None if it may be live."""
    try:
      holder = json.loads(text)
      pid = int(holder['pid'])
    except (ValueError, KeyError, TypeError):
      return None  # Unreadable: refuse (the message says how to clear it).
    if holder.get('host') == socket.gethostname():
      if pid == os.getpid():
        if holder.get('token') in _HELD_TOKENS:
          return None
        return f'{_describe(holder)} is not this process (pid reused)'
      if not _pid_alive(pid):
        return f'{_describe(holder)} is no longer running'
      recorded, now = holder.get('proc_start'), _process_start_ticks(pid)
      if recorded is not None and now is not None and recorded != now:
        return f'{_describe(holder)} is no longer running (pid reused)'
      return None
    try:
      age = time.time() - os.path.getmtime(self.path)
    except OSError:
      return None
    if age > STALE_AFTER_SECS:
      return f'{_describe(holder)} sent no heartbeat for {age:.0f}s'
    return None

  def _held_message(self, text: str) -> str:
    try:
      holder = _describe(json.loads(text))
    except ValueError:
      return (f'{self.path} exists but cannot be read ({text[:80]!r}); if no '
              'run uses this workdir, remove it and start again')
    return (f'the workdir is in use by another training run: {holder} holds '
            f'{self.path}. Use another --workdir, or stop that run; if it is '
            'gone, remove the lock file')

  def _remove_if_unchanged(self, stale_text: str) -> None:
    """Removes the stale lock unless another run replaced it meanwhile."""
    aside = f'{self.path}.stale.{os.getpid()}'
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return
    with open(aside) as f:
      moved = f.read()
    if moved != stale_text:
      # Another run took it over first; put its live lock back.
      try:
        os.link(aside, self.path)
      except OSError:
        pass
    os.remove(aside)

  def _start_heartbeat(self) -> None:
    self._stop.clear()

    def beat():
      while not self._stop.wait(HEARTBEAT_SECS):
        try:
          os.utime(self.path)
        except OSError:
          pass

    self._thread = threading.Thread(target=beat, name='workdir_lock',
                                    daemon=True)
    self._thread.start()


@contextlib.contextmanager
def hold(workdir: str):
  """Holds the workdir's lock for the block (process 0; see module doc).

  Args:
    workdir: the training directory (created if missing).

  Yields:
    The `WorkdirLock` on process 0, None on the other processes.

  Raises:
    WorkdirLockedError: another live run holds the workdir (on every process).
  """
  lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
  error = None
  if lock is not None:
    try:
      lock.acquire()
    except WorkdirLockedError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if error is None and not int(ok):
      error = WorkdirLockedError(
          f'process 0 could not lock {os.path.join(workdir, LOCK_NAME)}: '
          'the workdir is in use by another training run (see process 0)')
  if error is not None:
    raise error
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
