"""Evaluation over the validation split: loss and top-1/top-5 error, each image counted once.

Used by the training driver (periodic centre-crop evaluations, the final one with
``config.eval_crops``) and by the ``evaluate`` command. The per-batch arithmetic is
``steps.eval_step``; this module sums it over the split.
"""

import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections

from alexnet_jax import input_pipeline, parallel, steps

log = logging.getLogger(__name__)


def _batch_limit(config: ml_collections.ConfigDict) -> int | None:
    """How many whole batches ``config.eval_num_examples`` allows (None: the whole split)."""
    if not config.eval_num_examples:
        return None
    global_batch = config.eval_batch_size or config.batch_size
    return -(-config.eval_num_examples // global_batch)


def _batches(config: ml_collections.ConfigDict, data_devices: int) -> Iterator[dict]:
    batches = input_pipeline.create_eval_iter(config, local_device_count=data_devices)
    limit = _batch_limit(config)
    return batches if limit is None else itertools.islice(batches, limit)


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
    batches = _batches(config, placement.data_devices)
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


def size(config: ml_collections.ConfigDict, num_eval: int) -> int:
    """How many images :func:`evaluate` reads from a split of ``num_eval`` (for progress)."""
    limit = _batch_limit(config)
    if limit is None:
        return num_eval
    return min(num_eval, limit * (config.eval_batch_size or config.batch_size))


def center_crop(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` for a centre-crop evaluation (the periodic ones during training)."""
    config = config.copy_and_resolve_references()
    config.eval_crops = 1
    return config


def log_result(step: int, result: dict[str, Any]) -> None:
    top5 = f', top-5 error {result["eval_top5_error"]:.4f}' if 'eval_top5_error' in result else ''
    log.info(
        'eval at step %d (%d images): top-1 error %.4f%s, loss %.4f',
        step,
        result['eval_count'],
        result['eval_top1_error'],
        top5,
        result['eval_loss'],
    )
