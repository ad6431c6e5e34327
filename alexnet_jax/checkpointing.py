"""Orbax checkpoints in the workdir: atomic, asynchronous, resumable, and never pickled.

Each checkpoint ``workdir/checkpoints/<step>/`` holds the train state (parameters, optimizer
state with its learning rate and momentum, BatchNorm statistics, plateau counters, step) as one
unreplicated copy of numpy arrays, and the run's config as JSON. Orbax writes into a temporary
directory and renames it when complete, so a crash mid-write leaves the previous checkpoint as
the newest complete one. Nothing else is needed to resume exactly: the random keys are folded
from ``config.seed`` and the step, and the input pipeline restarts at any step.

Faults: a write that fails in orbax's background thread (read-only or full disk) is raised in
the training loop by :meth:`Checkpointer.poll` within a step of finishing, as one
:class:`CheckpointWriteError` naming the path and the OS reason. A checkpoint found unreadable
on resume is skipped, and replaced when the run reaches its step again.
"""

import contextlib
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import serialization

from alexnet_jax import parallel, specs

log = logging.getLogger(__name__)

# The error that ranks checkpoints ("the best"): the validation split's where the run holds
# one out, else the evaluation split's (runs without one, and checkpoints written before).
_ERROR_KEYS = ('val_top1_error', 'eval_top1_error')


def selection_error(metrics: dict) -> float:
    """The error the best checkpoint and the plateau rule go by (see `_ERROR_KEYS`)."""
    return next(metrics[key] for key in _ERROR_KEYS if key in metrics)


class CheckpointMismatchError(ValueError):
    """The checkpoint holds another network or another state layout than the config makes."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the message names the path and the OS reason."""


def network_fields(config: ml_collections.ConfigDict) -> frozenset[str]:
    """The config fields that define the network: those ``specs.resolve_model`` reads for
    :meth:`~alexnet_jax.specs.ModelSpec.network` (model, classes, the variant's switches)."""
    del config  # the same fields for every config
    return frozenset(specs.NETWORK_CONFIG_FIELDS)


def _network(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What the network is, independent of how the config spells it (None vs the preset)."""
    return specs.resolve_model(config).network()


class Checkpointer:
    """Keeps the last ``config.keep_checkpoints`` checkpoints and the best by validation error."""

    def __init__(self, workdir: str, config: ml_collections.ConfigDict, read_only: bool = False):
        if '://' not in workdir:  # orbax needs absolute paths; `--workdir runs/x` is relative
            workdir = os.path.abspath(workdir)
        self.directory = epath.Path(workdir) / 'checkpoints'
        self.config = config
        self._verbose = not read_only  # `evaluate` and `predict` only read: no "Resuming"
        self._unreadable: set[int] = set()  # found damaged on restore: replace when reached
        self._in_flight: int | None = None  # step of the save orbax is writing
        self._failed = False
        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [
                ocp.checkpoint_managers.LatestN(n=config.keep_checkpoints),
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=selection_error,
                    reverse=True,  # lower error is better: keep the smallest
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=policy,
                # Also needed for orbax to write the metrics into the checkpoint, so that "the
                # best" survives a restart (`evaluate --best`, the ranking for retention).
                best_fn=selection_error,
                best_mode='min',
                enable_async_checkpointing=True,
                create=not read_only,  # (orbax's own read_only mode warns on every use)
            ),
            # Named handlers: the layout of a saved state can be read before restoring it.
            item_handlers={
                'state': ocp.StandardCheckpointHandler(),
                'config': ocp.JsonCheckpointHandler(),
            },
        )
        _shorten_orbax_log()

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first."""
        return sorted(self.manager.all_steps())

    def has(self, step: int) -> bool:
        """Whether ``step`` is on disk and not known to be damaged (then saving it is a no-op)."""
        return step in self.manager.all_steps() and step not in self._unreadable

    def save(self, step: int, state: Any, eval_result: dict | None = None, force: bool = False):
        """Starts writing ``state`` at ``step`` in the background.

        A step already on disk is kept (the state at a step is a function of the step), unless
        it was found unreadable: then it is replaced.
        """
        self.poll()
        if step in self.manager.all_steps():
            if step not in self._unreadable:
                return
            log.warning('Replacing the unreadable checkpoint %s.', self.directory / str(step))
            self.manager.delete(step)
            self._unreadable.discard(step)
        host_state = serialization.to_state_dict(parallel.to_host(state))
        metrics = None
        if eval_result:
            key = next(k for k in _ERROR_KEYS if k in eval_result)
            metrics = {key: eval_result[key]}
        with self._write_errors(step):
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(host_state),
                    config=ocp.args.JsonSave(json.loads(self.config.to_json_best_effort())),
                ),
                metrics=metrics,
                force=force,
            )
        self._in_flight = step

    def poll(self) -> None:
        """Raises :class:`CheckpointWriteError` if the last background write has failed.

        Cheap enough for every step: it reads a flag unless a write has just finished.
        """
        if self._in_flight is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Blocks until the write in flight is on disk; raises if it failed."""
        step, self._in_flight = self._in_flight, None
        with self._write_errors(step):
            self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the write in flight (raising if it fails), then releases orbax."""
        if self._failed:  # already reported; orbax's failed threads would raise it again
            return
        step, self._in_flight = self._in_flight, None
        with self._write_errors(step):
            self.manager.close()

    @contextlib.contextmanager
    def _write_errors(self, step: int | None):
        try:
            yield
        except Exception as error:  # orbax re-raises the background thread's exception
            self._failed = True
            os_error = error if isinstance(error, OSError) else None
            reason = (os_error.strerror if os_error else None) or f'{type(error).__name__}: {error}'
            path = (os_error.filename if os_error else None) or self.directory / str(step)
            kept = self._complete_steps()
            newest = f'step {kept[-1]}' if kept else 'none'
            raise CheckpointWriteError(
                f'Writing checkpoint {step} failed: {path}: {reason}. Newest complete checkpoint: '
                f'{newest}. Free space or fix permissions under {self.directory}, then rerun '
                f'to resume.'
            ) from None

    def _complete_steps(self) -> list[int]:
        """Complete steps on disk, read from the directory (the manager may be broken)."""
        with contextlib.suppress(OSError):
            return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
        return []

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def restore(self, state: Any, step: int | None = None) -> Any:
        """``state`` restored from checkpoint ``step``, or from the newest readable one.

        ``state`` may hold arrays or ``jax.ShapeDtypeStruct``s (then only numpy arrays come
        back). Without a step, a newest checkpoint that cannot be read (truncated, corrupt) is
        named and skipped in favour of the one before it, and replaced when its step is saved
        again; no checkpoint at all returns ``state`` unchanged. A checkpoint of another network
        or state layout is refused, naming what differs.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(
                    f'No checkpoint for step {step} in {self.directory}; it has {sorted(steps)}.'
                )
            steps = [step]
        target = jax.tree.map(
            lambda x: np.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x,
            serialization.to_state_dict(parallel.to_host(state)),
        )
        for step in steps:
            self.check_config(step)
            self._check_layout(step, target)
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
                self._unreadable.add(step)
                continue
            if self._verbose:
                log.info('Resuming from %s.', self.directory / str(step))
            return serialization.from_state_dict(state, restored['state'])
        if steps:
            raise RuntimeError(
                f'No readable checkpoint in {self.directory} (tried steps {steps}). Move the '
                f'directory away to start afresh.'
            )
        return state

    def check_config(self, step: int) -> None:
        """Refuses another network or dataset; reports other changed fields and goes on."""
        try:
            saved = self.manager.restore(
                step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
            )['config']
        except Exception:  # a damaged config file: the state restore will report it
            return
        current = json.loads(self.config.to_json_best_effort())
        differ = {k for k in set(saved) | set(current) if saved.get(k) != current.get(k)}
        # What the labels mean, and the network: checked by meaning, so `norm=None` on the
        # paper model equals `norm='lrn'`.
        fatal = sorted(differ & (network_fields(self.config) | {'dataset'}))
        if fatal:
            saved_config = self.config.copy_and_resolve_references()
            with saved_config.unlocked():
                saved_config.update({k: v for k, v in saved.items() if k in saved_config})
            try:
                same_network = _network(saved_config) == _network(self.config)
            except specs.ConfigError:  # the saved fields do not even make a network here
                same_network = False
            if same_network and 'dataset' not in fatal:
                fatal = []
        if fatal:
            details = ', '.join(f'{k}: {saved.get(k)!r} -> {current.get(k)!r}' for k in fatal)
            raise CheckpointMismatchError(
                f'The checkpoint in {self.directory / str(step)} was written for another network '
                f'or dataset ({details}). Use another --workdir, or the same config.'
            )
        if differ and self._verbose:
            details = ', '.join(f'{k}={current.get(k)!r}' for k in sorted(differ))
            log.warning('Resuming with config fields changed since the checkpoint: %s', details)

    def _check_layout(self, step: int, target: Any) -> None:
        """Refuses a checkpoint whose arrays differ in name or shape from the state's."""
        try:
            metadata = self.manager.item_metadata(step)['state']
            saved = {
                jax.tree_util.keystr(path): tuple(leaf.shape)
                for path, leaf in jax.tree_util.tree_leaves_with_path(metadata)
            }
        except Exception:  # unreadable metadata: the restore itself will report the damage
            return
        differences = shape_differences(saved, leaf_shapes(target))
        if differences:
            raise CheckpointMismatchError(
                f'The checkpoint in {self.directory / str(step)} holds other arrays than this '
                f'config makes ({differences}). Use another --workdir, or the same config.'
            )


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{"['conv1']['kernel']": shape, ...}`` for every array of ``tree``."""
    return {
        jax.tree_util.keystr(path): tuple(np.shape(leaf))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def shape_differences(saved: dict, wanted: dict, ignore: frozenset = frozenset()) -> str:
    """The arrays whose shapes differ (or that one side lacks), up to four named; '' if none."""
    differ = sorted(k for k in (set(saved) | set(wanted)) - ignore if saved.get(k) != wanted.get(k))
    details = '; '.join(
        f'{k}: saved {saved.get(k, "absent")}, now {wanted.get(k, "absent")}' for k in differ[:4]
    )
    return details + (f' (and {len(differ) - 4} more)' if len(differ) > 4 else '')


class _OrbaxLogFilter(logging.Filter):
    """Orbax's log, shortened where this module reports the same thing itself.

    Drops the warning on every save without metrics (most saves have none), and the tracebacks
    of a failed background write (:class:`CheckpointWriteError` names the path and reason).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith('Requested `tracked_metric`'):
            return False
        if record.exc_info and 'orbax' in record.pathname:
            record.exc_info, record.exc_text = None, None
        return True


def _shorten_orbax_log() -> None:
    absl_logger = logging.getLogger('absl')
    if not any(isinstance(f, _OrbaxLogFilter) for f in absl_logger.filters):
        absl_logger.addFilter(_OrbaxLogFilter())
