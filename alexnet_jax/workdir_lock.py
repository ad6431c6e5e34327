"""One run per workdir: a lock file naming its holder, with stale locks detected.

A job resubmitted while the old one still runs would otherwise write the same checkpoints and
interleave its metrics with the old one's. Process 0 creates ``workdir/lock`` exclusively and
writes its host, pid and start time into it, and touches it while it trains (a heartbeat). A
lock is stale, and taken over with a warning, when its holder ran on this host and that process
is gone, or when it ran on another host and the heartbeat is older than ``stale_after`` seconds.
"""

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

LOCK_NAME = 'lock'
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 600.0


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

    def acquire(self) -> None:
        """Takes the lock, or raises :class:`WorkdirLockedError` naming the live holder."""
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if not self._stale(holder):
                    raise WorkdirLockedError(
                        f'{os.path.dirname(self.path)} is in use by pid {holder.get("pid")} on '
                        f'host {holder.get("host")} (since {holder.get("started")}). Wait for it '
                        f'to end, use another --workdir, or, if that run is dead, delete '
                        f'{self.path}.'
                    ) from None
                log.warning('Taking over the stale lock %s (%s).', self.path, holder)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(fd, 'w') as f:
                json.dump(
                    {
                        'host': socket.gethostname(),
                        'pid': os.getpid(),
                        'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                    },
                    f,
                )
            self.held, self._touched = True, time.monotonic()
            return
        raise WorkdirLockedError(f'Could not take {self.path}: another run took it just now.')

    def _read(self) -> dict:
        try:
            with open(self.path) as f:
                holder = json.load(f)
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):  # half-written by a holder killed mid-write: stale
            return {}

    def _stale(self, holder: dict) -> bool:
        pid, host = holder.get('pid'), holder.get('host')
        if not isinstance(pid, int) or not host:
            return True
        if host == socket.gethostname():
            return not _pid_alive(pid)
        try:
            age = time.time() - os.path.getmtime(self.path)
        except FileNotFoundError:
            return True
        return age > self.stale_after

    def heartbeat(self) -> None:
        """Marks the lock as alive; cheap enough for every step (touches it every 30 s)."""
        now = time.monotonic()
        if self.held and now - self._touched >= HEARTBEAT_SECONDS:
            with contextlib.suppress(OSError):  # a full disk must not stop training here
                os.utime(self.path)
            self._touched = now

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            self.held = False


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
