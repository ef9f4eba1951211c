"""One Opencode process per data directory, held with an OS advisory lock.

Opening a data directory recovers it (`SqliteStore.recover` marks every reply still `streaming`
as `interrupted`): right after a crash, and wrong while another process serves from it (a
`serve`, or ComfyUI, whose live replies an in-process `opencode-agent run` would cut off). So
whoever opens the service locks `opencode.lock` in the directory first, and a second opener is
told who holds it. The OS drops the lock when its process ends, however it ends, so a crash never
leaves a stale lock behind; the pid written in the file is only there to name the holder.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import weakref
from pathlib import Path
from typing import IO

from .config import Config
from .errors import OpencodeError

log = logging.getLogger("opencode.datadir")

LOCK_NAME = "opencode.lock"
# What a lock held elsewhere raises: anything else (NFS without lockd: ENOLCK; some FUSE and SMB
# mounts: EOPNOTSUPP) means this file system cannot lock, and Opencode runs without the guard.
_HELD_ELSEWHERE = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)}
# The locks this process holds: a forked child closes its copies, or a child that outlives the
# parent's `release()` would keep the directory locked (flock belongs to the open file, shared).
_HELD: "weakref.WeakSet[DataDirLock]" = weakref.WeakSet()
_WINDOWS_LOCK_OFFSET = 64  # past the pid: Windows keeps others from reading a locked range


class DataDirUnusable(OpencodeError):
    """The data directory cannot be created or written (a file, no permission, a read-only disk)."""

    code = "data_dir_unusable"
    status = 500


class DataDirInUse(OpencodeError):
    """Another process has the data directory open."""

    code = "data_dir_in_use"
    status = 409


class DataDirLock:
    """The lock of one data directory, held until `release()` (or this process's end)."""

    def __init__(self, handle: IO[bytes] | None) -> None:
        self._handle: IO[bytes] | None = handle
        if handle is not None:
            _HELD.add(self)

    @classmethod
    def acquire(cls, data_dir: Path) -> "DataDirLock":
        try:  # unbuffered: a read of the pid must not reach the byte Windows keeps locked
            handle = open(data_dir / LOCK_NAME, "a+b", buffering=0)  # never truncates the holder's pid
        except OSError as exc:
            raise DataDirUnusable(f"cannot use the data directory {data_dir}: {exc.strerror or exc}") from exc
        try:
            _lock(handle)
        except OSError as exc:
            if exc.errno not in _HELD_ELSEWHERE:
                log.warning("cannot lock %s (%s): running without the one-process guard", data_dir,
                            exc.strerror or exc)
                handle.close()
                return cls(None)
            holder = _read_pid(handle)
            handle.close()
            who = "this process" if holder == os.getpid() else f"another Opencode process (pid {holder or 'unknown'})"
            raise DataDirInUse(f"the data directory {data_dir} is in use by {who}", details={"pid": holder}) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()).encode())
        handle.flush()
        return cls(handle)

    def release(self) -> None:
        """Unlock; idempotent."""
        if self._handle is not None:
            _unlock(self._handle)
            self._handle.close()
            self._handle = None
        _HELD.discard(self)

    def _forget_in_child(self) -> None:
        """In a forked child: close this copy of the file without unlocking the parent's lock."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _close_copies_in_child() -> None:
    for lock in list(_HELD):
        lock._forget_in_child()
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_copies_in_child)


def open_data_dir(config: Config) -> DataDirLock:
    """Create the data directory and lock it for this process: `DataDirUnusable` or
    `DataDirInUse` (a clear message either way) rather than an error deep inside the store."""
    if config.data_dir.exists() and not config.data_dir.is_dir():
        raise DataDirUnusable(f"cannot use the data directory {config.data_dir}: it is a file, not a directory")
    try:
        config.ensure_dirs()
    except OSError as exc:
        raise DataDirUnusable(f"cannot use the data directory {config.data_dir}: {exc.strerror or exc}") from exc
    return DataDirLock.acquire(config.data_dir)


def _lock(handle: IO[bytes]) -> None:
    """Lock without waiting; OSError when another open file holds it (this process's too)."""
    if sys.platform == "win32":
        import msvcrt

        handle.seek(_WINDOWS_LOCK_OFFSET)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # freed by Windows when the file closes
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # per open file: two opens conflict


def _unlock(handle: IO[bytes]) -> None:
    """Closing the file unlocks it; Windows asks for the range to be unlocked first."""
    if sys.platform == "win32":
        import msvcrt

        try:
            handle.seek(_WINDOWS_LOCK_OFFSET)
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        except OSError:
            pass


def _read_pid(handle: IO[bytes]) -> int | None:
    try:
        handle.seek(0)
        text = handle.read(32).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
