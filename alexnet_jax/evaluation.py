"""Evaluation over a split: loss and top-1/top-5 error, each image counted once.

Used by the training driver (periodic centre-crop evaluations of the validation split, or of the
test split in a run that holds none out, and of the clean training subset; the final one of the
test split with ``config.eval_crops``) and by the ``evaluate`` command. The per-batch arithmetic
is ``steps.eval_step``; this module sums it over the split. The result's keys carry the split's
prefix (`data_types.METRIC_PREFIX`): ``val_top1_error``, ``train_clean_top1_error``,
``eval_top1_error`` (the test split).
"""

import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections

from alexnet_jax import input_pipeline, parallel, steps
from alexnet_jax.data_types import METRIC_PREFIX

log = logging.getLogger(__name__)


def _batch_limit(config: ml_collections.ConfigDict) -> int | None:
    """How many whole batches ``config.eval_num_examples`` allows (None: the whole split)."""
    if not config.eval_num_examples:
        return None
    global_batch = config.eval_batch_size or config.batch_size
    return -(-config.eval_num_examples // global_batch)


def _batches(config: ml_collections.ConfigDict, data_devices: int, split: str) -> Iterator[dict]:
    batches = input_pipeline.create_eval_iter(config, local_device_count=data_devices, split=split)
    limit = _batch_limit(config)
    return batches if limit is None else itertools.islice(batches, limit)


def evaluate(
    placement: steps.Placement,
    state: steps.TrainState,
    config: ml_collections.ConfigDict,
    *,
    split: str = 'test',
    stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int], None] = lambda done: None,
) -> dict | None:
    """Loss and top-1/top-5 error over ``split`` (the test split by default), each image
    counted once; the keys carry the split's prefix.

    ``config.eval_num_examples`` limits it to the split's first images (whole batches). Returns
    None when ``stop()`` turns true between batches (a signal asked the run to stop).
    """
    totals: dict[str, float] = {}
    batches = _batches(config, placement.data_devices, split)
    for batch in parallel.prefetch(batches, 1, placement.place_batch):
        if stop():
            return None
        for key, value in jax.device_get(placement.eval_step(state, batch)).items():
            totals[key] = totals.get(key, 0.0) + float(value)
        progress(int(totals['count']) * jax.process_count())
    count = totals.pop('count', 0.0)
    if count == 0:
        raise RuntimeError(f'The {split} split yielded no examples.')
    name = METRIC_PREFIX[split]
    result = {
        f'{name}_loss': totals['loss'] / count,
        f'{name}_top1_error': totals['top1_errors'] / count,
        f'{name}_count': int(count),
    }
    if 'top5_errors' in totals:
        result[f'{name}_top5_error'] = totals['top5_errors'] / count
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
    """One line per split evaluated in ``result``."""
    for split, name in METRIC_PREFIX.items():
        if f'{name}_count' not in result:
            continue
        top5 = result.get(f'{name}_top5_error')
        log.info(
            'eval at step %d, %s (%d images): top-1 error %.4f%s, loss %.4f',
            step,
            split,
            result[f'{name}_count'],
            result[f'{name}_top1_error'],
            '' if top5 is None else f', top-5 error {top5:.4f}',
            result[f'{name}_loss'],
        )
