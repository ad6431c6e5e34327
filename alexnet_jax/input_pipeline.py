"""Host streaming: any dataset's source -> `tf.data` -> host batches for the local devices.

Written once for every source a dataset object gives (`datasets.get(config).source(...)`). The
host does geometry only (decode, resize, crop, flip; Sections 2 and 4.1, `preprocessing.py`)
and ships uint8 images, 4x less host-to-device traffic than float32; the colour work happens on
the device (`device_preprocessing.py`). Sources of host arrays (synthetic data, prepared
sets) are passed through. TensorFlow is kept off the accelerators by `runtime.configure()`,
which each entry point calls first.

Determinism and resume: the training stream is a function of (config, start_step, host). The
example at stream position p of a host is (epoch p // n, i = p % n). Random-access sources
(in-memory Fashion-MNIST/CIFAR-10, image folders) permute each epoch with
``tf.random.experimental.index_shuffle`` keyed on (seed, epoch), so resuming at any step costs
nothing. TFRecord sources (ImageNet) pass each epoch through a shuffle buffer seeded by
(seed, epoch) and resume by skipping serialized records before anything is decoded. Crop offsets
and flips come from stateless ops keyed on (seed, host, epoch, example index).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from alexnet_jax import datasets, preprocessing
from alexnet_jax.data_types import HostArrays, Source

__all__ = ['create_eval_iter', 'create_train_iter', 'per_device_batch']

_MAX_POS = 2**62  # "infinite" stream length


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    return pi, pc


def per_device_batch(batch_size: int, local_device_count: int, process_count: int) -> int:
    """batch_size // (process_count * local_device_count), or a ValueError naming the fix."""
    total = local_device_count * process_count
    if batch_size <= 0 or batch_size % total:
        raise ValueError(
            f'Batch size {batch_size} does not divide over {process_count} process(es) x '
            f'{local_device_count} local device(s) = {total} devices. Set config.batch_size '
            f'(or config.eval_batch_size) to a multiple of {total}.'
        )
    return batch_size // total


def _train_map(config, source: Source, base_hw: tuple[int, int], pi: int):
    """(epoch, index, example) -> cropped uint8 image, label, crop offset and flip."""
    root = tf.constant([config.seed, 0x5EED + pi], tf.int64)

    def fn(epoch, index, ex):
        key = tf.random.experimental.stateless_fold_in(root, epoch)
        key = tf.random.experimental.stateless_fold_in(key, index)
        yx, flip = preprocessing.random_crop_params(
            key,
            base_hw,
            config.image_size,
            random_crop=config.random_crop,
            random_flip=config.random_flip,
        )
        crops = preprocessing.make_crops(
            ex['image'], yx[None], flip[None], config, channels=source.channels, jpeg=source.jpeg
        )
        return {'image': crops[0], 'label': ex['label'], 'crop_yx': yx, 'flip': flip}

    return fn


def _train_dataset(
    config, source: Source, host_batch: int, start_pos: int, pi: int
) -> tf.data.Dataset:
    n = source.num_examples
    if n < host_batch:
        raise ValueError(f'{config.dataset}: {n} training examples on this host < {host_batch}.')
    fn = _train_map(config, source, preprocessing.source_base_size(config, source), pi)
    if source.lookup is not None:
        seed = tf.constant(config.seed, tf.int64)

        def by_position(pos):
            epoch, i = pos // n, pos % n
            index = tf.random.experimental.index_shuffle(i, tf.stack([seed, epoch]), n - 1)
            return fn(epoch, index, source.lookup(index))

        ds = tf.data.Dataset.range(start_pos, _MAX_POS).map(
            by_position, num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        indexed = source.records.enumerate()
        buffer = int(min(config.shuffle_buffer, n))

        def epoch_stream(epoch):
            shuffled = indexed.shuffle(buffer, seed=epoch * 1_000_003 + config.seed)
            return shuffled.map(lambda i, ex: (epoch, i, ex))

        ds = tf.data.Dataset.range(start_pos // n, _MAX_POS).flat_map(epoch_stream)
        ds = ds.skip(start_pos % n)  # still serialized bytes: nothing decoded yet
        ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    if config.skip_corrupt_images:
        ds = ds.ignore_errors()
    return ds.batch(host_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _to_devices(batch: dict, devices: int) -> dict[str, np.ndarray]:
    return {k: v.reshape((devices, -1) + v.shape[1:]) for k, v in batch.items()}


def _numpy_batches(ds: tf.data.Dataset, source: Source) -> Iterator[dict[str, np.ndarray]]:
    """Iterates `ds`; a decode error becomes one message naming the corrupt file."""
    it = ds.as_numpy_iterator()
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as e:
            if source.decode_error is None:
                raise
            raise source.decode_error(e, None) from None
        yield batch


def create_train_iter(
    config: ml_collections.ConfigDict,
    *,
    local_device_count: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite host-local training batches, each array shaped [devices, per_device, ...].

    Keys: image uint8 [D, B, S, S, C], label int32 [D, B], crop_yx int32 [D, B, 2] (offset of the
    crop in the base image) and flip bool [D, B]. Batch `start_step` onward is identical to what
    an uninterrupted run yields from that step.
    """
    pi, pc = _processes(process_index, process_count)
    per_device = per_device_batch(config.batch_size, local_device_count, pc)
    host_batch = per_device * local_device_count
    source = datasets.get(config).source('train', process_index=pi, process_count=pc)
    if isinstance(source, HostArrays):
        return source.train_batches(local_device_count, per_device, start_step)
    ds = _train_dataset(config, source, host_batch, start_step * host_batch, pi)
    return (_to_devices(b, local_device_count) for b in _numpy_batches(ds, source))


def create_eval_iter(
    config: ml_collections.ConfigDict,
    *,
    local_device_count: int,
    split: str = 'test',
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over an evaluated split (`data_types.SPLITS`: the test split by default);
    every example exactly once over all hosts.

    Every host yields the same number of batches (pmap needs it); padding examples have
    mask False. Images are [D, B, S, S, C] (centre crop) or [D, B, 10, S, S, C] (ten crops,
    Section 4.1), with crop_yx [..., 2] and flip [...] matching the crops.
    """
    pi, pc = _processes(process_index, process_count)
    per_device = per_device_batch(
        config.eval_batch_size or config.batch_size, local_device_count, pc
    )
    host_batch = per_device * local_device_count
    dataset = datasets.get(config)
    n_total = dataset.info().count(split)
    source = dataset.source(split, process_index=pi, process_count=pc)
    if isinstance(source, HostArrays):
        examples = source.eval_chunks()
    else:
        examples = _eval_examples(config, source, host_batch)
    num_batches = math.ceil(math.ceil(n_total / pc) / host_batch)  # same on every host
    return _padded(examples, num_batches, host_batch, local_device_count)


def _eval_examples(config, source: Source, host_batch: int) -> Iterator[dict[str, np.ndarray]]:
    base_hw = preprocessing.source_base_size(config, source)
    offsets, flips = preprocessing.eval_offsets(base_hw, config.image_size, config.eval_crops)
    if source.lookup is not None:
        ds = tf.data.Dataset.range(source.num_examples).map(source.lookup)
    else:
        ds = source.records
    squeeze = config.eval_crops == 1

    def fn(ex):
        crops = preprocessing.make_crops(
            ex['image'], offsets, flips, config, channels=source.channels, jpeg=source.jpeg
        )
        yx, fl = tf.constant(offsets, tf.int32), tf.constant(flips)
        if squeeze:
            crops, yx, fl = crops[0], yx[0], fl[0]
        return {'image': crops, 'label': ex['label'], 'crop_yx': yx, 'flip': fl}

    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    if config.skip_corrupt_images:
        ds = ds.ignore_errors()
    return _numpy_batches(ds.batch(host_batch).prefetch(tf.data.AUTOTUNE), source)


def _padded(
    chunks: Iterator[dict[str, np.ndarray]], num_batches: int, host_batch: int, devices: int
) -> Iterator[dict[str, np.ndarray]]:
    """Re-batches `chunks` to host_batch, pads the tail and adds empty batches up to num_batches."""
    pending, count, produced, template = [], 0, 0, None

    def emit(parts, real):
        batch = {k: np.concatenate([p[k] for p in parts]) for k in template}
        if real < host_batch:
            pad = host_batch - real
            batch = {
                k: np.concatenate([v, np.zeros((pad,) + s, d)])
                for (k, v), (s, d) in zip(batch.items(), template.values(), strict=True)
            }
        batch['mask'] = np.arange(host_batch) < real
        return _to_devices(batch, devices)

    for chunk in chunks:
        template = template or {k: (v.shape[1:], v.dtype) for k, v in chunk.items()}
        start, size = 0, len(chunk['label'])
        while start < size:
            take = min(host_batch - count, size - start)
            pending.append({k: v[start : start + take] for k, v in chunk.items()})
            count, start = count + take, start + take
            if count == host_batch:
                yield emit(pending, count)
                pending, count, produced = [], 0, produced + 1
    if template is None:
        raise RuntimeError('The eval split is empty on this host.')
    if count:
        yield emit(pending, count)
        produced += 1
    if produced > num_batches:
        raise RuntimeError(f'Eval made {produced} batches, expected at most {num_batches}.')
    for _ in range(num_batches - produced):  # this host ran out first: fully masked batches
        yield emit([{k: np.zeros((0,) + s, d) for k, (s, d) in template.items()}], 0)
