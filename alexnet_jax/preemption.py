"""A clean stop on a signal: SIGTERM (a scheduler's preemption notice) and Ctrl-C end the run
at a step boundary, after a checkpoint, with the exit status shells expect (128 + signal).
"""

import contextlib
import signal
from typing import Any

import jax
from jax.experimental import multihost_utils

_CAUGHT: list[str] = []  # every signal a watcher caught in this process, in order


def signals_caught() -> tuple[str, ...]:
    """The signals any watcher of this process caught, also those that came too late to stop
    their run (after its last evaluation, while it saved or wrote its results): a caller that
    starts more runs stops on them."""
    return tuple(_CAUGHT)


class PreemptionWatcher:
    """Turns SIGTERM (what schedulers send before preemption) and Ctrl-C into a clean stop.

    The stop happens at a step boundary, after a checkpoint; an evaluation in progress is
    abandoned (:meth:`requested` is checked between its batches). With several processes, JAX's
    distributed runtime catches SIGTERM and every host agrees on the same step through its
    preemption sync point; a single process uses a signal handler.
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._multihost = jax.process_count() > 1
        signals = (signal.SIGINT,) if self._multihost else (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            with contextlib.suppress(ValueError):  # not the main thread: no handler
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        _CAUGHT.append(self.signal_name)

    def requested(self) -> bool:
        """Whether this process has been asked to stop (no communication with other hosts)."""
        return self.signal_name is not None and not self._multihost

    def reached(self, step: int) -> str | None:
        if self._multihost and multihost_utils.reached_preemption_sync_point(step):
            return 'preemption notice'
        return self.signal_name

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def exit_code(stopped_by: str) -> int:
    """The exit status of a run stopped by a signal: 128 + its number, as shells report it.

    A preemption notice on several hosts comes from SIGTERM. Retry wrappers tell a preempted
    run (143 or 130: rerun to resume) from a finished one (0) and a failed one (1).
    """
    name = 'SIGTERM' if stopped_by == 'preemption notice' else stopped_by
    return 128 + int(signal.Signals[name])
