"""Orbax checkpoints in the workdir: atomic, asynchronous, resumable, and never pickled.

Each checkpoint ``workdir/checkpoints/<step>/`` holds the train state (parameters, optimizer
state with its learning rate and momentum, BatchNorm statistics, plateau counters, step) as one
unreplicated copy of numpy arrays, and the run's config as JSON. Orbax writes into a temporary
directory and renames it when complete, so a crash mid-write leaves the previous checkpoint as
the newest complete one. Nothing else is needed to resume exactly: the random keys are folded
from ``config.seed`` and the step, and the input pipeline restarts at any step.
"""

import contextlib
import json
import logging
import os
import signal
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import serialization
from jax.experimental import multihost_utils

from alexnet_jax import parallel

log = logging.getLogger(__name__)

# Fields that change the shapes or meaning of the saved state: a checkpoint written with other
# values cannot be resumed. Any other changed field is reported and the new value used.
STATE_DEFINING_FIELDS = (
    'dataset',
    'model',
    'num_classes',
    'norm',
    'groups',
    'lr_schedule',
    'momentum',
    'weight_decay',
    'decay_biases',
)
_ERROR_KEY = 'eval_top1_error'


class CheckpointMismatchError(ValueError):
    pass


class Checkpointer:
    """Keeps the last ``config.keep_checkpoints`` checkpoints and the best by validation error."""

    def __init__(self, workdir: str, config: ml_collections.ConfigDict):
        if '://' not in workdir:  # orbax needs absolute paths; `--workdir runs/x` is relative
            workdir = os.path.abspath(workdir)
        self.directory = epath.Path(workdir) / 'checkpoints'
        self.config = config
        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [
                ocp.checkpoint_managers.LatestN(n=config.keep_checkpoints),
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=lambda m: m[_ERROR_KEY],
                    reverse=True,  # lower error is better: keep the smallest
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=policy, enable_async_checkpointing=True, create=True
            ),
            item_names=('state', 'config'),
        )

    def save(self, step: int, state: Any, eval_result: dict | None = None, force: bool = False):
        """Starts writing ``state`` at ``step`` in the background (a no-op if already saved)."""
        if step in self.manager.all_steps():
            return
        host_state = serialization.to_state_dict(parallel.to_host(state))
        metrics = {_ERROR_KEY: eval_result[_ERROR_KEY]} if eval_result else None
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(host_state),
                config=ocp.args.JsonSave(json.loads(self.config.to_json_best_effort())),
            ),
            metrics=metrics,
            force=force,
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()  # waits for the save in flight

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def restore(self, state: Any, step: int | None = None) -> Any:
        """``state`` restored from checkpoint ``step``, or from the newest readable one.

        Without a step, a newest checkpoint that cannot be read (truncated, corrupt) is named
        and skipped in favour of the one before it, and no checkpoint at all returns ``state``
        unchanged. A checkpoint of another model or optimizer is refused.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(
                    f'No checkpoint for step {step} in {self.directory}; it has {sorted(steps)}.'
                )
            steps = [step]
        target = serialization.to_state_dict(parallel.to_host(state))
        for step in steps:
            self._check_config(step)
            try:
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
                )
            except Exception as error:  # orbax raises many types for damaged files
                log.error(
                    'Checkpoint %s is unreadable (%s: %s); trying the previous one.',
                    self.directory / str(step),
                    type(error).__name__,
                    error,
                )
                continue
            log.info('Resuming from %s.', self.directory / str(step))
            return serialization.from_state_dict(state, restored['state'])
        if steps:
            raise RuntimeError(
                f'No readable checkpoint in {self.directory} (tried steps {steps}). Move the '
                f'directory away to start afresh.'
            )
        return state

    def _check_config(self, step: int) -> None:
        try:
            saved = self.manager.restore(
                step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
            )['config']
        except Exception:  # a damaged config file: the state restore will report it
            return
        current = json.loads(self.config.to_json_best_effort())
        differ = {k for k in set(saved) | set(current) if saved.get(k) != current.get(k)}
        fatal = sorted(differ & set(STATE_DEFINING_FIELDS))
        if fatal:
            details = ', '.join(f'{k}: {saved.get(k)!r} -> {current.get(k)!r}' for k in fatal)
            raise CheckpointMismatchError(
                f'The checkpoint in {self.directory / str(step)} was written by a different model '
                f'or optimizer ({details}). Use another --workdir, or the same config.'
            )
        if differ:
            details = ', '.join(f'{k}={current.get(k)!r}' for k in sorted(differ))
            log.warning('Resuming with config fields changed since the checkpoint: %s', details)


class PreemptionWatcher:
    """Turns SIGTERM (what schedulers send before preemption) and Ctrl-C into a clean stop.

    The stop happens at a step boundary, after a checkpoint. With several processes, JAX's
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

    def reached(self, step: int) -> str | None:
        if self._multihost and multihost_utils.reached_preemption_sync_point(step):
            return 'preemption notice'
        return self.signal_name

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
