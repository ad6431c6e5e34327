"""The training procedure of Section 5: the driver around the pure steps of ``steps.py``.

:func:`train_and_evaluate` sets up (or resumes) a run, then loops over named steps: train,
maybe evaluate, maybe save, maybe stop; it finishes with the final evaluation and results.json.
What it drives lives elsewhere: the steps (``steps.py``, ``towers.py``), the evaluation loop
(``evaluation.py``), checkpoints (``checkpointing.py``), signals (``preemption.py``), logs
(``metrics.py``). A finished run is read back by ``trained.py``.
"""

import itertools
import json
import logging
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from alexnet_jax import (
    checkpointing,
    dataset_stats,
    datasets,
    evaluation,
    finetune,
    input_pipeline,
    metrics,
    models,
    optim,
    parallel,
    preemption,
    specs,
    steps,
    towers,
    trained,
    workdir_lock,
)
from alexnet_jax.config_checks import validate_config
from alexnet_jax.data_types import DatasetInfo

log = logging.getLogger(__name__)


def placement_for(config: ml_collections.ConfigDict, stats: dataset_stats.Stats) -> steps.Placement:
    """Data parallel over the local devices, or the paper's two towers (training, evaluate)."""
    if config.model_parallel_towers:  # Section 3.2: each tower on its own device
        return towers.placement(config, stats)
    return steps.data_parallel(config, stats)


class _Run(NamedTuple):
    """What the loop needs besides the state: set up once by :func:`train_and_evaluate`."""

    config: ml_collections.ConfigDict
    total: int
    placement: steps.Placement
    ckpt: checkpointing.Checkpointer
    writer: metrics.Writer
    progress: metrics.Progress
    preemption: preemption.PreemptionWatcher
    lock: workdir_lock.WorkdirLock | None
    info: DatasetInfo


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds a checkpoint), evaluates, writes results.

    A run that already finished returns its results without training or evaluating again. A
    run stopped by a signal returns ``{'step', 'stopped_by'}`` after saving a checkpoint.
    """
    config = datasets.complete_config(config)  # e.g. imagefolder: num_classes from folders
    validate_config(config, workdir)
    # The devices this run uses (the placement checks again, for evaluate and the benchmarks).
    specs.check_devices(config, jax.device_count(), jax.local_device_count())
    with workdir_lock.hold(workdir) as lock:
        return _train_and_evaluate(config, workdir, lock)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, lock: workdir_lock.WorkdirLock | None
) -> dict[str, Any]:
    """Sets up (or resumes) the run, runs :func:`_loop`, and releases what it opened."""
    info = datasets.get(config).info()
    steps_per_epoch = optim.steps_per_epoch(config, info.num_train)
    total = optim.total_steps(config, steps_per_epoch)
    ckpt = checkpointing.Checkpointer(workdir, config)
    writer = None
    try:
        finished = trained.finished_results(ckpt, workdir, total)
        if finished is not None:
            log.info('Already finished at step %d: %s/results.json is unchanged.', total, workdir)
            ckpt.close()
            return finished
        writer = metrics.Writer(workdir)
        stats = dataset_stats.load_stats(config)
        state = _initial_state(config, ckpt, info.image_shape, steps_per_epoch)
    except BaseException:
        ckpt.close()
        if writer is not None:
            writer.close()
        raise
    start = int(state.step)
    placement = placement_for(config, stats)
    state = placement.place_state(state)
    writer.write_config(config)
    log.info(
        '%s: %s parameters, %d steps of %d images (%d per epoch), from step %d.',
        config.model,
        f'{models.param_count(state.params):,}',
        total,
        config.batch_size,
        steps_per_epoch,
        start,
    )
    progress = metrics.Progress(config, start, total, steps_per_epoch, writer)
    watcher = preemption.PreemptionWatcher()
    run = _Run(config, total, placement, ckpt, writer, progress, watcher, lock, info)
    try:
        return _loop(run, state, start)
    finally:
        try:
            ckpt.close()  # lets a checkpoint being written finish, also after an error
        finally:
            run.preemption.close()
            run.progress.close()
            writer.close()


def _initial_state(
    config: ml_collections.ConfigDict,
    ckpt: checkpointing.Checkpointer,
    image_shape: tuple[int, ...],
    steps_per_epoch: int,
) -> steps.TrainState:
    """The newest readable checkpoint's state; for a fresh run, new or ``init_from`` weights."""
    model = models.create_model(config).clone(bn_axis_name=steps.AXIS)
    state = steps.create_train_state(config, model, image_shape, steps_per_epoch)
    state = ckpt.restore(state)
    if not ckpt.steps():  # a fresh run: config.init_from's parameters, if set
        state = finetune.load_initial_params(config, state)
    return state


def _loop(run: _Run, state: steps.TrainState, start: int) -> dict[str, Any]:
    """Train, maybe evaluate, maybe save, maybe stop; after the last step, :func:`_finish`."""
    batches = parallel.prefetch(
        input_pipeline.create_train_iter(
            run.config, local_device_count=run.placement.data_devices, start_step=start
        ),
        run.config.prefetch_batches,
        run.placement.place_batch,
    )
    rng = jax.random.key(run.config.seed + 1)
    state = _redo_interrupted_evaluation(run, state, start)
    if start < run.total:
        first = next(batches)
        steps.compile_ahead(run.placement.train_step, state, first, rng)
        batches = itertools.chain([first], batches)
    step = start
    while step < run.total:
        state, step = _train(run, state, next(batches), rng, step)
        state, eval_result = _maybe_evaluate(run, state, step)
        stop = run.preemption.reached(step)
        _maybe_save(run, step, state, eval_result, stop)
        if stop:
            return _stopped(run, step, stop, f'at step {step}, checkpoint saved: rerun to resume')
    return _finish(run, state, step)


def _train(
    run: _Run, state: steps.TrainState, batch: Any, rng: jax.Array, step: int
) -> tuple[steps.TrainState, int]:
    """One SGD step, recorded; a failed checkpoint write or a non-finite loss raises here."""
    state, step_metrics = run.placement.train_step(state, batch, rng)
    step += 1
    run.progress.record(step, step_metrics)
    run.ckpt.poll()  # a failed background write surfaces here, within a step
    if run.lock is not None:
        run.lock.heartbeat()
    if run.progress.due(step):
        _check_finite(run)
        run.progress.flush(step)
    return state, step


def _splits(run: _Run, *names: str) -> list[str]:
    """Those of the evaluated splits ``names`` that have images (none: no evaluation at all)."""
    if run.config.eval_num_examples == 0:
        return []
    return [split for split in names if run.info.count(split) > 0]


def _periodic_splits(run: _Run) -> list[str]:
    """What the evaluations during training read: the validation split (the test split in a run
    that holds none out), which the plateau rule and the best checkpoint go by, and the clean
    training subset."""
    return _splits(run, 'validation' if run.info.num_validation else 'test', 'train_clean')


def _final_splits(run: _Run) -> list[str]:
    """The last evaluation: the test split (read once, here, in a run with a validation split),
    then the validation split and the clean training subset."""
    return _splits(run, 'test', 'validation', 'train_clean')


def _evaluation_due(run: _Run, step: int) -> bool:
    """Periodic evaluations (centre crop) between the first step and the last."""
    due = 0 < step < run.total and step % run.config.eval_every_steps == 0
    return due and bool(_periodic_splits(run))


def _redo_interrupted_evaluation(run: _Run, state: steps.TrainState, start: int):
    """A run stopped during its evaluation at ``start`` does it now, as it would have."""
    if _evaluation_due(run, start) and run.ckpt.manager.metrics(start) is None:
        state, _ = _maybe_evaluate(run, state, start)
    return state


def _maybe_evaluate(
    run: _Run, state: steps.TrainState, step: int
) -> tuple[steps.TrainState, dict | None]:
    """When due, a centre-crop evaluation and the plateau rule applied to it (Section 5).

    The result is None when no evaluation was due, or when a signal interrupted it.
    """
    if not _evaluation_due(run, step):
        return state, None
    started = time.perf_counter()
    result = _run_evaluation(run, state, _periodic_splits(run))
    if result is not None:
        _record_evaluation(run, step, result)
        error = checkpointing.selection_error(result)
        state = _maybe_update_plateau(state, error, run.config)
        state = run.placement.place_state(state)  # new host values, same layout: no recompile
    run.progress.exclude(time.perf_counter() - started)
    return state, result


def _maybe_update_plateau(state: steps.TrainState, error: float, config) -> steps.TrainState:
    if config.lr_schedule != 'plateau':
        return state
    plateau, divide = optim.update_plateau(state.plateau, error, config)
    opt_state = state.opt_state
    if divide:
        lr = float(optim.current_learning_rate(opt_state)) * config.plateau_factor
        log.info('Validation error stopped improving: learning rate now %g.', lr)
        opt_state = optim.set_learning_rate(opt_state, lr)
    return state.replace(plateau=plateau, opt_state=opt_state)


def _run_evaluation(
    run: _Run, state: steps.TrainState, splits: list[str], *, final: bool = False
) -> dict[str, Any] | None:
    """:func:`evaluation.evaluate` of each of ``splits``, their results in one dict, progress
    shown; None when a signal asks to stop. Centre crops, except the final evaluation of the
    test split: ``config.eval_crops`` (Section 4.1's ten crops in the paper's configs)."""
    centre = evaluation.center_crop(run.config)
    configs = {s: run.config if final and s == 'test' else centre for s in splits}
    sizes = [evaluation.size(configs[s], run.info.count(s)) for s in splits]
    show = run.progress.eval_progress(sum(sizes))
    result: dict[str, Any] = {}
    for split, before in zip(splits, np.cumsum([0, *sizes]).tolist(), strict=False):
        part = evaluation.evaluate(
            run.placement,
            state,
            configs[split],
            split=split,
            stop=run.preemption.requested,
            progress=lambda done, before=before: show(before + done),
        )
        if part is None:
            return None
        result.update(part)
    return result


def _record_evaluation(run: _Run, step: int, result: dict[str, Any]) -> None:
    run.writer.write_scalars(step, result)
    evaluation.log_result(step, result)


def _maybe_save(
    run: _Run, step: int, state: steps.TrainState, eval_result: dict | None, stop: str | None
) -> None:
    """Saves after an evaluation, on a stop and every ``checkpoint_every_steps`` (not the last
    step: :func:`_finish` saves it once, with the final evaluation)."""
    every = step % run.config.checkpoint_every_steps == 0 and step < run.total
    if eval_result is not None or stop or every:
        _save(run, step, state, eval_result)


def _check_finite(run: _Run, step: int | None = None, state: steps.TrainState | None = None) -> Any:
    """Stops the run at the first step whose loss is not finite, or before saving a ``state``
    (of ``step``) whose parameters are not; returns the state on the host, ready to save."""
    bad, where = run.progress.check_finite(), 'at step'
    host_state = None
    if bad is None and state is not None:
        host_state = parallel.to_host(state)
        if not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(host_state.params)):
            bad, where = step, 'at or before step'
    if bad is not None:
        kept = run.ckpt.steps()
        newest = f'step {kept[-1]}' if kept else 'none (the run starts afresh when rerun)'
        raise FloatingPointError(
            f'The training loss or parameters became NaN or infinite {where} {bad}; nothing '
            f'from that step on was saved. Newest checkpoint: {newest}. Lower '
            f'config.learning_rate or check the data.'
        )
    return host_state


def _save(run: _Run, step: int, state: steps.TrainState, eval_result: dict | None = None) -> None:
    """A checkpoint of a state known to be finite; ranked by ``eval_result`` when given."""
    started = time.perf_counter()
    if not run.ckpt.has(step):  # a step already saved (and readable) is kept as it is
        run.ckpt.save(step, _check_finite(run, step, state), eval_result)
    run.progress.exclude(time.perf_counter() - started)


def _finish(run: _Run, state: steps.TrainState, step: int) -> dict[str, Any]:
    """The final evaluation (``config.eval_crops``), the last checkpoint and results.json."""
    _check_finite(run)
    if run.progress.pending:
        run.progress.flush(step)
    eval_result: dict[str, Any] = {}
    if _final_splits(run):
        result = _run_evaluation(run, state, _final_splits(run), final=True)
        if result is None:  # a signal during the final evaluation: rerun evaluates again
            _save(run, step, state)
            stop = run.preemption.reached(step)
            return _stopped(run, step, stop, 'during the final evaluation: rerun to finish')
        eval_result = result
        _record_evaluation(run, step, eval_result)
    _save(run, step, state, eval_result or None)
    run.ckpt.wait()
    results = {
        'step': step,
        **eval_result,
        'train_loss': run.progress.last.get('loss'),
        'images_per_sec': run.progress.images_per_sec(),
        'config': json.loads(run.config.to_json_best_effort()),
    }
    run.writer.write_results(results)
    return metrics.json_safe(results)


def _stopped(run: _Run, step: int, stop: str | None, when: str) -> dict[str, Any]:
    """The answer of a run stopped by a signal, once its checkpoint is on disk."""
    run.ckpt.wait()
    log.warning('Stopped by %s %s.', stop, when)
    return {'step': step, 'stopped_by': stop}
