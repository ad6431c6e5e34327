"""One run per workdir: a lock file naming its holder, with stale locks detected.

A job resubmitted while the old one still runs would otherwise write the same checkpoints and
interleave its metrics with the old one's. Process 0 writes its host, pid, start time and a
random token into a file of its own, then hard-links it to ``workdir/lock``: the link either
fails (someone holds the lock) or publishes a complete file, so a second process starting at the
same moment never reads a half-written lock and takes it for a dead one. The holder touches the
lock while it trains (a heartbeat). A lock is stale, and taken over with a warning, when its
holder ran on this host and that process is gone, or when it ran on another host and the
heartbeat is older than ``stale_after`` seconds; a lock that cannot be read is stale once it is
older than ``UNREADABLE_GRACE_SECONDS`` (a holder killed mid-write, or a filesystem without hard
links, where the file is created and written in two steps). Release removes the lock only while
it still carries the holder's token.
"""

import contextlib
import errno
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

LOCK_NAME = 'lock'
PRIVATE_PATTERN = LOCK_NAME + '.*.tmp'  # a holder's record before it becomes the lock
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 600.0
UNREADABLE_GRACE_SECONDS = 30.0
# Filesystems that refuse hard links (FUSE mounts of object stores, some SMB shares).
_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK)


class WorkdirLockedError(RuntimeError):
    """Another live run holds the workdir; the message names it."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class WorkdirLock:
    def __init__(self, workdir: str, stale_after: float = STALE_AFTER_SECONDS):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.stale_after = stale_after
        self.held = False
        self._touched = 0.0
        self._holder: dict = {}

    def acquire(self) -> None:
        """Takes the lock, or raises :class:`WorkdirLockedError` naming the live holder."""
        self._holder = {
            'host': socket.gethostname(),
            'pid': os.getpid(),
            'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
            'token': secrets.token_hex(8),
        }
        for _ in range(2):  # a second try after removing a stale lock
            if self._publish():
                self.held, self._touched = True, time.monotonic()
                return
            holder = self._read()
            if not holder and not self._stale(holder):
                raise WorkdirLockedError(
                    f'{os.path.dirname(self.path)} is being locked by another process just now '
                    f'({self.path} is not written yet). Wait for that run, or use another '
                    f'--workdir.'
                )
            if not self._stale(holder):
                raise WorkdirLockedError(
                    f'{os.path.dirname(self.path)} is in use by pid {holder.get("pid")} on '
                    f'host {holder.get("host")} (since {holder.get("started")}). Wait for it '
                    f'to end, use another --workdir, or, if that run is dead, delete '
                    f'{self.path}.'
                )
            log.warning('Taking over the stale lock %s (%s).', self.path, holder)
            self._remove_stale(holder)
        raise WorkdirLockedError(f'Could not take {self.path}: another run took it just now.')

    def _publish(self) -> bool:
        """Makes ``self.path`` hold this process's complete record; False if it exists."""
        private = f'{self.path}.{self._holder["token"]}.tmp'  # matches PRIVATE_PATTERN
        with open(private, 'w') as f:
            json.dump(self._holder, f)
        try:
            linked = self._link(private)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(private)
        if linked is not None:
            return linked
        try:  # no hard links here: create, then write (readers wait out the grace period)
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, 'w') as f:
            json.dump(self._holder, f)
        return True

    def _remove_stale(self, stale: dict) -> None:
        """Removes the lock if it still holds ``stale``. Two runs may find one dead holder at
        once; the lock is moved aside and checked, so the later one puts back the first one's
        fresh lock instead of deleting it."""
        aside = f'{self.path}.{self._holder["token"]}.stale.tmp'  # matches PRIVATE_PATTERN
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # the other one removed it first
            return
        try:
            # Not the dead holder's: put it back, unless a third run took the lock meanwhile.
            if self._read(aside) != stale and self._link(aside) is None:
                os.rename(aside, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(aside)

    def _link(self, source: str) -> bool | None:
        """Hard-links ``source`` to the lock's path, atomically: True if linked, False if the lock
        exists, None where the filesystem has no hard links."""
        try:
            os.link(source, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in _NO_LINKS:
                raise
            return None

    def _read(self, path: str | None = None) -> dict:
        try:
            with open(path or self.path) as f:
                holder = json.load(f)
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):  # half-written by a holder killed mid-write: stale
            return {}

    def _stale(self, holder: dict) -> bool:
        try:
            age = time.time() - os.path.getmtime(self.path)
        except FileNotFoundError:
            return True
        pid, host = holder.get('pid'), holder.get('host')
        if not isinstance(pid, int) or not host:
            return age > UNREADABLE_GRACE_SECONDS
        if host == socket.gethostname():
            return not _pid_alive(pid)
        return age > self.stale_after

    def heartbeat(self) -> None:
        """Marks the lock as alive; cheap enough for every step (touches it every 30 s)."""
        now = time.monotonic()
        if self.held and now - self._touched >= HEARTBEAT_SECONDS:
            with contextlib.suppress(OSError):  # a full disk must not stop training here
                os.utime(self.path)
            self._touched = now

    def release(self) -> None:
        """Removes the lock if it is still this holder's; a lock taken over meanwhile stays."""
        if not self.held:
            return
        self.held = False
        holder = self._read()
        if holder.get('token') != self._holder['token']:
            log.warning(
                'Not removing %s: it was taken over by %s while this run held it.',
                self.path,
                holder or 'an unreadable record',
            )
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[WorkdirLock | None]:
    """The workdir's lock for the duration of the block, taken by process 0.

    Every process learns whether it was taken, so a refused multi-host job ends on all hosts at
    once instead of leaving the others waiting for process 0. Remote paths (``gs://``) are not
    locked.
    """
    lock, error = None, None
    if jax.process_index() == 0 and '://' not in workdir:
        lock = WorkdirLock(workdir)
        try:
            lock.acquire()
        except WorkdirLockedError as refused:
            error = refused
    if jax.process_count() > 1:
        taken = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not taken and error is None:
            error = WorkdirLockedError(f'Process 0 could not lock {workdir}: see its log.')
    if error is not None:
        raise error
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
