"""One writer per run directory: an exclusive lock file that names its owner.

``hold(path)`` takes an exclusive ``flock`` on ``path`` and writes the owner's pid, host and start time into it.
The kernel drops the lock when its process dies (``kill -9`` included), so a lock file left by a dead process is
*stale*: the next process takes it over and says whose it was. A live owner makes ``hold`` raise ``LockedError``
naming its pid and host. The same process may hold a lock again (``meta_train_in_workdir`` holds the workdir's lock
and calls ``meta_train``, which holds it too); it is released when the outermost ``hold`` ends. On a file system
without ``flock`` support the pid is checked instead (a dead pid on the same host is stale).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Any, Iterator

from absl import logging

try:
  import fcntl
except ImportError:  # not on Windows
  fcntl = None  # type: ignore[assignment]


class LockedError(OSError):
  """Another live process holds the lock (an ``OSError``: the entry points report it in one line)."""


# realpath -> [file descriptor, depth] of the locks this process holds.
_HELD: dict[str, list[int]] = {}


def read_owner(path: str) -> dict[str, Any] | None:
  """The owner recorded in the lock file ``path`` (``pid``, ``host``, ``started``), or None."""
  try:
    with open(path, encoding="utf-8") as f:
      owner = json.load(f)
  except (OSError, ValueError):
    return None
  return owner if isinstance(owner, dict) else None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # it exists, owned by someone else
  return True


def _describe(owner: dict[str, Any] | None) -> str:
  if not owner:
    return "an unknown process"
  started = owner.get("started")
  when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else ""
  return f"process {owner.get('pid')} on host {owner.get('host')}{when}"


def _refuse(path: str, owner: dict[str, Any] | None) -> LockedError:
  return LockedError(f"{path} is held by {_describe(owner)}: another process is writing this run directory. "
                     f"Wait for it to finish or stop it; if no such process is running, delete {path}.")


def _acquire(path: str) -> int:
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  owner = read_owner(path)
  try:
    if fcntl is not None:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        raise _refuse(path, owner) from None
      except OSError:  # no flock on this file system: judge by the recorded pid
        if owner and owner.get("host") == socket.gethostname() and owner.get("pid") != os.getpid() \
            and isinstance(owner.get("pid"), int) and _pid_alive(owner["pid"]):
          raise _refuse(path, owner) from None
    if owner and owner.get("pid") is not None:
      logging.warning("Taking over the stale lock %s of %s (no longer running).", path, _describe(owner))
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
    os.fsync(fd)
  except BaseException:
    os.close(fd)
    raise
  return fd


@contextlib.contextmanager
def hold(path: str) -> Iterator[None]:
  """Holds the exclusive lock ``path`` for the block (see the module docstring).

  Raises:
    LockedError: naming the owner's pid and host when another live process holds it.
  """
  key = os.path.realpath(path)
  if key in _HELD:
    _HELD[key][1] += 1
  else:
    _HELD[key] = [_acquire(path), 1]
  try:
    yield
  finally:
    entry = _HELD[key]
    entry[1] -= 1
    if entry[1] == 0:
      del _HELD[key]
      # Empty the file before unlocking it: a later reader then sees no owner, not a finished one.
      with contextlib.suppress(OSError):
        os.ftruncate(entry[0], 0)
      os.close(entry[0])
