"""The training procedure of Section 5: the driver around the pure steps of ``steps.py``.

:func:`train_and_evaluate` is a short sequence of named helpers: set up (or resume) a run, then
loop over train, maybe evaluate, maybe save, maybe stop, and finish with the final evaluation.
"""

import itertools
import json
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from etils import epath

from alexnet_jax import (
    checkpointing,
    dataset_stats,
    datasets,
    finetune,
    input_pipeline,
    metrics,
    models,
    optim,
    parallel,
    steps,
    towers,
    workdir_lock,
)
from alexnet_jax.config_checks import validate_config

log = logging.getLogger(__name__)


def placement_for(config: ml_collections.ConfigDict, stats: dataset_stats.Stats) -> steps.Placement:
    if config.model_parallel_towers:  # Section 3.2: each tower on its own device
        return towers.placement(config, stats)
    return steps.data_parallel(config, stats)


def evaluate(
    placement: steps.Placement,
    state: steps.TrainState,
    config: ml_collections.ConfigDict,
    *,
    stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int], None] = lambda done: None,
) -> dict | None:
    """Loss and top-1/top-5 error over the evaluation split, each image counted once.

    ``config.eval_num_examples`` limits it to the split's first images (whole batches). Returns
    None when ``stop()`` turns true between batches (a signal asked the run to stop).
    """
    totals: dict[str, float] = {}
    batches = input_pipeline.create_eval_iter(config, local_device_count=placement.data_devices)
    if config.eval_num_examples:
        global_batch = config.eval_batch_size or config.batch_size
        batches = itertools.islice(batches, -(-config.eval_num_examples // global_batch))
    for batch in parallel.prefetch(batches, 1, placement.place_batch):
        if stop():
            return None
        for key, value in jax.device_get(placement.eval_step(state, batch)).items():
            totals[key] = totals.get(key, 0.0) + float(value)
        progress(int(totals['count']) * jax.process_count())
    count = totals.pop('count', 0.0)
    if count == 0:
        raise RuntimeError('The evaluation split yielded no examples.')
    result = {
        'eval_loss': totals['loss'] / count,
        'eval_top1_error': totals['top1_errors'] / count,
        'eval_count': int(count),
    }
    if 'top5_errors' in totals:
        result['eval_top5_error'] = totals['top5_errors'] / count
    return result


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


class _Run(NamedTuple):
    """What the loop needs besides the state: set up once by :func:`train_and_evaluate`."""

    config: ml_collections.ConfigDict
    total: int
    placement: steps.Placement
    ckpt: checkpointing.Checkpointer
    writer: metrics.Writer
    progress: metrics.Progress
    preemption: checkpointing.PreemptionWatcher
    lock: workdir_lock.WorkdirLock | None
    num_eval: int


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds a checkpoint), evaluates, writes results.

    A run that already finished returns its results without training or evaluating again. A
    run stopped by a signal returns ``{'step', 'stopped_by'}`` after saving a checkpoint.
    """
    config = datasets.complete_config(config)  # e.g. imagefolder: num_classes from folders
    validate_config(config, workdir)
    with workdir_lock.hold(workdir) as lock:
        return _train_and_evaluate(config, workdir, lock)


def _train_and_evaluate(config, workdir: str, lock) -> dict[str, Any]:
    info = datasets.get(config).info()
    steps_per_epoch = optim.steps_per_epoch(config, info.num_train)
    total = optim.total_steps(config, steps_per_epoch)
    ckpt = checkpointing.Checkpointer(workdir, config)
    writer = None
    try:
        finished = _finished_results(ckpt, workdir, total)
        if finished is not None:
            log.info('Already finished at step %d: %s/results.json is unchanged.', total, workdir)
            ckpt.close()
            return finished
        writer = metrics.Writer(workdir)
        stats = dataset_stats.load_stats(config)
        model = models.create_model(config, dtype=steps.compute_dtype(config)).clone(
            bn_axis_name=steps.AXIS
        )
        state = steps.create_train_state(config, model, info.image_shape, steps_per_epoch)
        state = ckpt.restore(state)
        if not ckpt.steps():  # a fresh run: config.init_from's parameters, if set
            state = finetune.load_initial_params(config, state)
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
    run = _Run(
        config,
        total,
        placement,
        ckpt,
        writer,
        metrics.Progress(config, start, total, steps_per_epoch, writer),
        checkpointing.PreemptionWatcher(),
        lock,
        info.num_eval,
    )
    try:
        return _loop(run, state, start)
    finally:
        try:
            ckpt.close()  # lets a checkpoint being written finish, also after an error
        finally:
            run.preemption.close()
            run.progress.close()
            writer.close()


def _finished_results(
    ckpt: checkpointing.Checkpointer, workdir: str, total: int
) -> dict[str, Any] | None:
    """The results of a run that already reached ``total`` and wrote them; else None."""
    saved = ckpt.steps()
    if not saved or saved[-1] < total:
        return None
    ckpt.check_config(saved[-1])  # the same network, or one error saying what differs
    results = metrics.read_results(workdir)
    return results if results is not None and results.get('step') == saved[-1] else None


def _loop(run: _Run, state: steps.TrainState, start: int) -> dict[str, Any]:
    """The steps, read as named steps: train, maybe evaluate, maybe save, maybe stop."""
    config = run.config
    batches = parallel.prefetch(
        input_pipeline.create_train_iter(
            config, local_device_count=run.placement.data_devices, start_step=start
        ),
        config.prefetch_batches,
        run.placement.place_batch,
    )
    rng = jax.random.key(config.seed + 1)
    if _evaluation_due(run, start) and run.ckpt.manager.metrics(start) is None:
        # Stopped during this step's evaluation last time: do it now, as the run would have.
        state, _ = _evaluate_and_adapt(run, state, start)
    step = start
    while step < run.total:
        state, step_metrics = run.placement.train_step(state, next(batches), rng)
        step += 1
        run.progress.record(step, step_metrics)
        run.ckpt.poll()  # a failed background write surfaces here, within a step
        if run.lock is not None:
            run.lock.heartbeat()
        if run.progress.due(step):
            _check_finite(run)
            run.progress.flush(step)
        eval_result = None
        if _evaluation_due(run, step):
            state, eval_result = _evaluate_and_adapt(run, state, step)
        stop = run.preemption.reached(step)
        every = step % config.checkpoint_every_steps == 0 and step < run.total
        if eval_result is not None or stop or every:  # (the last step: saved by _finish)
            _save(run, step, state, eval_result)
        if stop:
            run.ckpt.wait()
            log.warning('Stopped by %s at step %d, checkpoint saved: rerun to resume.', stop, step)
            return {'step': step, 'stopped_by': stop}
    return _finish(run, state, step)


def _evaluation_due(run: _Run, step: int) -> bool:
    """Periodic evaluations (centre crop) between the first step and the last."""
    evaluates = run.config.eval_num_examples != 0 and run.num_eval > 0
    return evaluates and 0 < step < run.total and step % run.config.eval_every_steps == 0


def _evaluate_and_adapt(
    run: _Run, state: steps.TrainState, step: int
) -> tuple[steps.TrainState, Any]:
    """A centre-crop evaluation, and the plateau rule applied to it; None if interrupted."""
    started = time.perf_counter()
    result = _run_evaluation(run, state, _center_crop(run.config))
    if result is not None:
        run.writer.write_scalars(step, result)
        _log_eval(step, result)
        state = _maybe_update_plateau(state, result['eval_top1_error'], run.config)
        state = run.placement.place_state(state)  # new host values, same layout: no recompile
    run.progress.exclude(time.perf_counter() - started)
    return state, result


def _run_evaluation(
    run: _Run, state: steps.TrainState, config: ml_collections.ConfigDict
) -> dict[str, Any] | None:
    """:func:`evaluate` with progress shown, abandoned (None) when a signal asks to stop."""
    return evaluate(
        run.placement,
        state,
        config,
        stop=run.preemption.requested,
        progress=run.progress.eval_progress(_eval_size(run, config)),
    )


def _eval_size(run: _Run, config: ml_collections.ConfigDict) -> int:
    if not config.eval_num_examples:
        return run.num_eval
    global_batch = config.eval_batch_size or config.batch_size
    return min(run.num_eval, -(-config.eval_num_examples // global_batch) * global_batch)


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
    config = run.config
    _check_finite(run)
    if run.progress.pending:
        run.progress.flush(step)
    eval_result: dict[str, Any] = {}
    if config.eval_num_examples != 0 and run.num_eval > 0:
        result = _run_evaluation(run, state, config)
        if result is None:  # a signal during the final evaluation: rerun evaluates again
            _save(run, step, state)
            run.ckpt.wait()
            stop = run.preemption.reached(step)
            log.warning('Stopped by %s during the final evaluation: rerun to finish.', stop)
            return {'step': step, 'stopped_by': stop}
        eval_result = result
        run.writer.write_scalars(step, eval_result)
        _log_eval(step, eval_result)
    _save(run, step, state, eval_result or None)
    run.ckpt.wait()
    results = {
        'step': step,
        **eval_result,
        'train_loss': run.progress.last.get('loss'),
        'images_per_sec': run.progress.images_per_sec(),
        'config': json.loads(config.to_json_best_effort()),
    }
    run.writer.write_results(results)
    return metrics.json_safe(results)


def _log_eval(step: int, result: dict[str, float]) -> None:
    top5 = f', top-5 error {result["eval_top5_error"]:.4f}' if 'eval_top5_error' in result else ''
    log.info(
        'eval at step %d (%d images): top-1 error %.4f%s, loss %.4f',
        step,
        result['eval_count'],
        result['eval_top1_error'],
        top5,
        result['eval_loss'],
    )


def _center_crop(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Periodic evaluations use the centre crop; the final one uses ``config.eval_crops``."""
    config = config.copy_and_resolve_references()
    config.eval_crops = 1
    return config


def config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in ``workdir`` was started with (its ``config.json``)."""
    path = epath.Path(workdir) / 'config.json'
    if not path.exists():
        raise FileNotFoundError(
            f'{path} does not exist: --workdir must be the directory of a training run '
            f'(python -m alexnet_jax.main --workdir ...).'
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_trained_state(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None, best: bool = False
) -> steps.TrainState:
    """The state of checkpoint ``step`` (or the best by validation error, or the newest).

    The restore target is built from shapes only: ``model.init`` is traced by
    ``jax.eval_shape``, never compiled or run (0.3 s for the paper's net instead of 13-28 s);
    the parameters come back as numpy arrays.
    """
    info = datasets.run_dataset_info(config, workdir)
    model = models.create_model(config, dtype=steps.compute_dtype(config))
    state = jax.eval_shape(lambda: steps.create_train_state(config, model, info.image_shape, 1))
    ckpt = checkpointing.Checkpointer(workdir, config, read_only=True)
    try:
        if best:
            step = ckpt.best_step()
            if step is None:
                raise FileNotFoundError(f'No evaluated checkpoint in {ckpt.directory}.')
        if step is None and not ckpt.manager.all_steps():
            raise FileNotFoundError(f'No checkpoint in {ckpt.directory}: train first.')
        return ckpt.restore(state, step)
    finally:
        ckpt.close()
