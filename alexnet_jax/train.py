"""The training procedure of Section 5: state, the pure ``pmap``-ed steps, and the loop.

``train_step`` and ``eval_step`` are plain functions of (state, batch, rng); the driver
:func:`train_and_evaluate` is a short sequence of named helpers around them.
"""

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from etils import epath
from flax.training import train_state

from alexnet_jax import checkpointing, input_pipeline, metrics, models, optim, parallel
from alexnet_jax.config_checks import validate_config

log = logging.getLogger(__name__)

AXIS = parallel.AXIS


class TrainState(train_state.TrainState):
    batch_stats: Any  # BatchNorm running statistics (the `bn` variant); {} otherwise
    plateau: optim.Plateau  # the divide-on-plateau rule's counters, checkpointed with the rest


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
    return jnp.bfloat16 if config.half_precision else jnp.float32


def create_train_state(
    config: ml_collections.ConfigDict, model: nn.Module, image_shape: tuple[int, ...], steps: int
) -> TrainState:
    """Fresh parameters (Section 5's initialisation unless the variant says otherwise)."""
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(config.seed), dummy
    )
    params = variables['params']
    return TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=optim.make_optimizer(config, params, steps),
        batch_stats=variables.get('batch_stats', {}),
        plateau=optim.Plateau.initial(),
    )


def _classification_sums(logits_or_probs: jax.Array, labels: jax.Array, mask: jax.Array) -> dict:
    """Top-1 / top-5 error counts over the real (masked-in) examples."""
    top5 = jax.lax.top_k(logits_or_probs, 5)[1]
    hit = top5 == labels[:, None]
    mask = mask.astype(jnp.float32)
    return {
        'top1_errors': jnp.sum((1.0 - hit[:, 0]) * mask),
        'top5_errors': jnp.sum((1.0 - hit.any(axis=1)) * mask),
        'count': jnp.sum(mask),
    }


def _after_all(grads: Any) -> Any:
    """``grads`` unchanged, each now depending on all of them (as after an all-reduce).

    The donated parameters are updated in place only if XLA can see that every read of them
    (forward and backward) comes first. Without an all-reduce, fc6's update depends only on
    fc6's gradient, which is ready while conv1-5's backward still reads fc6, so XLA copies
    every parameter first (CPU, `owt`: ~20 ms a step). Adding zero times one element of each
    gradient orders the updates after the whole backward pass; the add fuses into the update.
    A non-finite gradient makes every gradient NaN, which the step's loss reports anyway.
    """
    leaves = jax.tree.leaves(grads)
    zero = 0.0 * sum(leaf.reshape(-1)[0].astype(jnp.float32) for leaf in leaves)
    return jax.tree.map(lambda g: g + zero.astype(g.dtype), grads)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    config: ml_collections.ConfigDict,
    stats: input_pipeline.Stats,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on this device's shard; gradients and metrics averaged over devices."""
    # Different dropout masks and colour noise on every step and every device.
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(AXIS))
    dropout_rng, noise_rng = jax.random.split(rng)
    images = input_pipeline.device_preprocess(
        batch, noise_rng, stats, config, train=True, dtype=compute_dtype(config)
    )
    labels = batch['label']
    has_bn = bool(state.batch_stats)

    def loss_fn(params):
        variables = {'params': params, 'batch_stats': state.batch_stats}
        logits, updates = state.apply_fn(
            variables,
            images,
            train=True,
            rngs={'dropout': dropout_rng},
            mutable=['batch_stats'] if has_bn else [],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # Every device holds the same number of examples, so the mean of the per-device means is
    # the gradient of the global batch's mean loss. On one device XLA would still copy every
    # gradient through the all-reduce (~50 ms a step for 61M parameters on CPU).
    one_device = jax.lax.axis_size(AXIS) == 1
    grads = _after_all(grads) if one_device else jax.lax.pmean(grads, AXIS)
    new_state = state.apply_gradients(grads=grads)
    if has_bn:  # BatchNorm already averaged its statistics over AXIS (bn_axis_name)
        new_state = new_state.replace(batch_stats=updates['batch_stats'])
    sums = _classification_sums(logits, labels, jnp.ones_like(labels))
    count = jax.lax.psum(sums['count'], AXIS)
    step_metrics = {
        'loss': jax.lax.pmean(loss, AXIS),
        'top1_error': jax.lax.psum(sums['top1_errors'], AXIS) / count,
        'top5_error': jax.lax.psum(sums['top5_errors'], AXIS) / count,
        'learning_rate': optim.current_learning_rate(state.opt_state),
    }
    return new_state, step_metrics


def eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    config: ml_collections.ConfigDict,
    stats: input_pipeline.Stats,
) -> dict[str, jax.Array]:
    """Summed loss and error counts over this batch, all devices; padding masked out.

    Ten-crop batches (``[B, 10, H, W, C]``) average the softmax over the crops (Section 4.1).
    """
    images = input_pipeline.device_preprocess(
        batch, None, stats, config, train=False, dtype=compute_dtype(config)
    )
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    crops = images.shape[1] if images.ndim == 5 else 1
    flat = images.reshape(-1, *images.shape[-3:])
    probs = jax.nn.softmax(state.apply_fn(variables, flat, train=False))
    probs = probs.reshape(-1, crops, probs.shape[-1]).mean(axis=1)
    labels, mask = batch['label'], batch['mask']
    true_prob = jnp.take_along_axis(probs, labels[:, None], axis=1)[:, 0]
    sums = _classification_sums(probs, labels, mask)
    sums['loss'] = jnp.sum(-jnp.log(jnp.maximum(true_prob, 1e-12)) * mask)
    return jax.lax.psum(sums, AXIS)


def pmap_steps(
    config: ml_collections.ConfigDict,
    stats: input_pipeline.Stats,
    devices: list[jax.Device] | None = None,
) -> tuple[Callable, Callable]:
    """The two steps, ``pmap``-ed over local devices with the state unstacked (see parallel)."""
    p_train = jax.pmap(
        functools.partial(train_step, config=config, stats=stats),
        axis_name=AXIS,
        in_axes=(None, 0, None),
        out_axes=(None, None),
        donate_argnums=(0,),
        devices=devices,
    )
    p_eval = jax.pmap(
        functools.partial(eval_step, config=config, stats=stats),
        axis_name=AXIS,
        in_axes=(None, 0),
        out_axes=None,
        devices=devices,
    )
    return p_train, p_eval


class Placement(NamedTuple):
    """How the state and batches are laid out on the devices, and the steps that fit that."""

    data_devices: int  # local data-parallel width: the pipeline's leading batch axis
    place_state: Callable[[Any], Any]
    place_batch: Callable[[Any], Any]
    train_step: Callable  # (state, batch, rng) -> (state, metrics)
    eval_step: Callable  # (state, batch) -> summed metrics


def data_parallel(config: ml_collections.ConfigDict, stats: input_pipeline.Stats) -> Placement:
    """Every local device holds the whole model and a slice of the batch (the default)."""
    p_train, p_eval = pmap_steps(config, stats)
    return Placement(jax.local_device_count(), parallel.replicate, parallel.shard, p_train, p_eval)


def placement_for(config: ml_collections.ConfigDict, stats: input_pipeline.Stats) -> Placement:
    if config.model_parallel_towers:  # Section 3.2: each tower on its own device
        from alexnet_jax import towers

        return towers.placement(config, stats)
    return data_parallel(config, stats)


def evaluate(placement: Placement, state: TrainState, config: ml_collections.ConfigDict) -> dict:
    """Loss and top-1/top-5 error over the whole evaluation split, each image counted once."""
    totals: dict[str, float] = {}
    batches = input_pipeline.create_eval_iter(config, local_device_count=placement.data_devices)
    for batch in parallel.prefetch(batches, 1, placement.place_batch):
        for key, value in jax.device_get(placement.eval_step(state, batch)).items():
            totals[key] = totals.get(key, 0.0) + float(value)
    count = totals.pop('count', 0.0)
    if count == 0:
        raise RuntimeError('The evaluation split yielded no examples.')
    return {
        'eval_loss': totals['loss'] / count,
        'eval_top1_error': totals['top1_errors'] / count,
        'eval_top5_error': totals['top5_errors'] / count,
        'eval_count': int(count),
    }


def _maybe_update_plateau(state: TrainState, error: float, config) -> TrainState:
    if config.lr_schedule != 'plateau':
        return state
    plateau, divide = optim.update_plateau(state.plateau, error, config)
    opt_state = state.opt_state
    if divide:
        lr = float(optim.current_learning_rate(opt_state)) * config.plateau_factor
        log.info('Validation error stopped improving: learning rate now %g.', lr)
        opt_state = optim.set_learning_rate(opt_state, lr)
    return state.replace(plateau=plateau, opt_state=opt_state)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds a checkpoint), evaluates, writes results."""
    config = input_pipeline.complete_config(config)  # e.g. imagefolder: num_classes from folders
    validate_config(config, workdir)
    info = input_pipeline.get_dataset_info(config)
    stats = input_pipeline.load_stats(config)
    steps_per_epoch = optim.steps_per_epoch(config, info.num_train)
    total = optim.total_steps(config, steps_per_epoch)
    model = models.create_model(config, dtype=compute_dtype(config)).clone(bn_axis_name=AXIS)
    state = create_train_state(config, model, info.image_shape, steps_per_epoch)
    ckpt = checkpointing.Checkpointer(workdir, config)
    state = ckpt.restore(state)
    start = int(state.step)
    placement = placement_for(config, stats)
    state = placement.place_state(state)
    writer = metrics.Writer(workdir)
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

    batches = parallel.prefetch(
        input_pipeline.create_train_iter(
            config, local_device_count=placement.data_devices, start_step=start
        ),
        config.prefetch_batches,
        placement.place_batch,
    )
    rng = jax.random.key(config.seed + 1)
    progress = metrics.Progress(start, total, steps_per_epoch, config.batch_size, writer)
    preemption = checkpointing.PreemptionWatcher()
    eval_result: dict[str, Any] = {}
    step = start
    try:
        while step < total:
            state, step_metrics = placement.train_step(state, next(batches), rng)
            step += 1
            progress.record(step, step_metrics)
            if step % config.log_every_steps == 0 or step == total:
                progress.flush(step)  # raises FloatingPointError on a NaN loss, naming the step
            if step % config.eval_every_steps == 0 and step < total:
                started = time.perf_counter()
                eval_result = evaluate(placement, state, _center_crop(config))
                writer.write_scalars(step, eval_result)
                _log_eval(step, eval_result)
                state = _maybe_update_plateau(state, eval_result['eval_top1_error'], config)
                state = placement.place_state(state)  # new host values, same layout: no recompile
                ckpt.save(step, state, eval_result)  # ranked for "keep the best"
                progress.exclude(time.perf_counter() - started)
            stop = preemption.reached(step)
            if (step % config.checkpoint_every_steps == 0 and step < total) or stop:
                ckpt.save(step, state)
            if stop:
                ckpt.wait()
                log.warning(
                    'Stopped by %s at step %d, checkpoint saved: rerun to resume.', stop, step
                )
                return {'step': step, 'stopped_by': stop}
        eval_result = evaluate(placement, state, config)
        writer.write_scalars(step, eval_result)
        _log_eval(step, eval_result)
        ckpt.save(step, state, eval_result)
        ckpt.wait()
    finally:
        ckpt.close()  # lets a checkpoint being written finish, also after an error
        preemption.close()
        progress.close()
    results = {
        'step': step,
        **eval_result,
        'train_loss': progress.last.get('loss', float('nan')),
        'images_per_sec': progress.images_per_sec(),
        'config': json.loads(config.to_json_best_effort()),
    }
    writer.write_results(results)
    writer.close()
    return results


def _log_eval(step: int, result: dict[str, float]) -> None:
    log.info(
        'eval at step %d (%d images): top-1 error %.4f, top-5 error %.4f, loss %.4f',
        step,
        result['eval_count'],
        result['eval_top1_error'],
        result['eval_top5_error'],
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
) -> TrainState:
    """The state of checkpoint ``step`` (or the best by validation error, or the newest).

    The restore target is built from shapes only: ``model.init`` is traced by
    ``jax.eval_shape``, never compiled or run (0.3 s for the paper's net instead of 13-28 s),
    and its leaves are zero numpy arrays, which orbax restores into as numpy arrays.
    """
    import numpy as np  # here, not at the top: this function's edit stays inside it

    info = input_pipeline.get_dataset_info(config)
    model = models.create_model(config, dtype=compute_dtype(config))
    shapes = jax.eval_shape(lambda: create_train_state(config, model, info.image_shape, 1))
    state = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)
    ckpt = checkpointing.Checkpointer(workdir, config)
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
