"""From a dataset on disk to host batches for `pmap`, and the on-device colour work.

The host does geometry only (decode, resize, crop, flip; Sections 2 and 4.1) and ships uint8
images, 4x less host-to-device traffic than float32. `device_preprocess` then casts, adds the PCA
colour noise (Section 4.1) and normalises inside the jitted step.

Determinism and resume: the training stream is a function of (config, start_step, host). The
example at stream position p of a host is (epoch p // n, i = p % n). Random-access sources
(in-memory Fashion-MNIST/CIFAR-10, image folders) permute each epoch with
``tf.random.experimental.index_shuffle`` keyed on (seed, epoch), so resuming at any step costs
nothing. TFRecord sources (ImageNet) pass each epoch through a shuffle buffer seeded by
(seed, epoch) and resume by skipping serialized records before anything is decoded. Crop offsets
and flips come from stateless ops keyed on (seed, host, epoch, example index).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from alexnet_jax import datasets, preprocessing
from alexnet_jax.dataset_stats import Stats, load_stats

__all__ = [
    'DatasetInfo',
    'Stats',
    'complete_config',
    'create_eval_iter',
    'create_train_iter',
    'device_preprocess',
    'get_dataset_info',
    'load_stats',
    'run_dataset_info',
]

log = logging.getLogger(__name__)

_MAX_POS = 2**62  # "infinite" stream length


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    num_train: int
    num_eval: int
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C) of the model input
    class_names: list[str]
    num_skipped: int = 0  # corrupt images skipped (imagefolder with skip_corrupt_images)
    image_hw: tuple[int, int] | None = None  # the stored images' (H, W), when all have one size


def hide_gpus_from_tf() -> None:
    """TensorFlow would otherwise grab all accelerator memory that JAX needs."""
    # RuntimeError: TF already initialised its devices (then hidden before, or none seen).
    with contextlib.suppress(RuntimeError):
        tf.config.set_visible_devices([], 'GPU')


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


def _eval_split(config) -> str | None:
    if config.dataset == 'imagefolder':
        return datasets.image_folder_eval_split(config.dataset_path)
    return datasets.EVAL_SPLITS.get(config.dataset)


def _source(config, *, train: bool, pi: int = 0, pc: int = 1) -> datasets.Source:
    datasets.check_dataset_name(config.dataset)
    hide_gpus_from_tf()
    split = 'train' if train else _eval_split(config)
    if split is None:
        raise ValueError(
            f'imagefolder: no val/, validation/ or test/ folder in {config.dataset_path} '
            'to evaluate on.'
        )
    if config.dataset == 'imagefolder':
        return datasets.image_folder_source(config, split, pi, pc, train=train)
    return datasets.tfds_source(config, split, pi, pc, train=train)


def complete_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` with the fields the dataset decides filled in.

    imagefolder: ``num_classes`` is the number of class folders under ``dataset_path/train``
    (logged when it changes the config's value). Other datasets: an unchanged copy.
    """
    config = config.copy_and_resolve_references()
    if config.dataset == 'imagefolder':
        classes = datasets.image_folder_classes(config.dataset_path)
        if config.num_classes != len(classes):
            log.info(
                'imagefolder: %d class folders in %s: num_classes = %d.',
                len(classes),
                os.path.join(config.dataset_path, 'train'),
                len(classes),
            )
            config.num_classes = len(classes)
    return config


def run_dataset_info(config, workdir: str) -> DatasetInfo:
    """What applying a trained run needs of its dataset: the input shape and the class names.

    A run directory written by ``alexnet_jax.convert`` carries its class names
    (``class_names.txt``) and takes RGB images, so ``predict`` and the figures work on it where
    the dataset itself (ImageNet) is not prepared. Any other run asks the dataset.
    """
    names_path = os.path.join(workdir, 'class_names.txt')
    if not os.path.isfile(names_path):
        return get_dataset_info(config)
    with open(names_path) as f:
        names = [line.strip() for line in f if line.strip()]
    size = config.image_size
    return DatasetInfo(0, 0, len(names), (size, size, 3), names)


def get_dataset_info(config) -> DatasetInfo:
    """Sizes, classes and the model input shape of `config.dataset`."""
    datasets.check_dataset_name(config.dataset)
    size = config.image_size
    skipped, image_hw = 0, None
    if config.dataset == 'synthetic':
        n_train, n_eval = config.synthetic_num_train, config.synthetic_num_eval
        names, channels = [f'class_{i}' for i in range(config.num_classes)], 3
        image_hw = (size, size)
    elif config.dataset == 'imagefolder':
        names = datasets.image_folder_classes(config.dataset_path)
        skip = bool(config.skip_corrupt_images)
        train = datasets.scan_image_folder(config.dataset_path, 'train', skip)
        n_train, skipped, channels = len(train.paths), train.num_skipped, 3
        split = _eval_split(config)
        n_eval = 0
        if split:
            n_eval = len(datasets.scan_image_folder(config.dataset_path, split, True).paths)
        image_hw = datasets.image_folder_size(config.dataset_path, skip)
    else:
        builder = datasets.get_builder(config)
        names = list(builder.info.features['label'].names)
        n_train = int(builder.info.splits['train'].num_examples)
        n_eval = int(builder.info.splits[_eval_split(config)].num_examples)
        shape = builder.info.features['image'].shape
        channels = int(shape[-1])
        image_hw = tuple(shape[:2]) if None not in shape[:2] else None
    if config.dataset != 'synthetic' and len(names) != config.num_classes:
        raise ValueError(
            f'{config.dataset} has {len(names)} classes but config.num_classes = '
            f'{config.num_classes}. Set config.num_classes = {len(names)}.'
        )
    return DatasetInfo(
        n_train, n_eval, len(names), (size, size, channels), names, skipped, image_hw
    )


def _base_hw(config, source: datasets.Source) -> tuple[int, int]:
    if config.crop_padding > 0:
        if source.image_hw is None:
            problem = 'needs images of one size'
            if config.dataset == 'imagefolder':
                problem += ', but ' + datasets.image_folder_size_problem(
                    config.dataset_path, bool(config.skip_corrupt_images)
                )
            raise ValueError(
                f'{config.dataset}: crop_padding > 0 (the small-image path) {problem}. Resize '
                'them to one size, or set config.crop_padding = 0 to resize and crop instead.'
            )
        return preprocessing.base_size(config, source.image_hw)
    return preprocessing.base_size(config)


def _train_map(config, source: datasets.Source, base_hw, pi: int):
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


def _train_dataset(config, source: datasets.Source, host_batch: int, start_pos: int, pi: int):
    n = source.num_examples
    if n < host_batch:
        raise ValueError(f'{config.dataset}: {n} training examples on this host < {host_batch}.')
    fn = _train_map(config, source, _base_hw(config, source), pi)
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


def _numpy_batches(ds: tf.data.Dataset, config) -> Iterator[dict[str, np.ndarray]]:
    """Iterates `ds`; a decode error becomes one message naming the corrupt file."""
    it = ds.as_numpy_iterator()
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as e:
            if config.dataset != 'imagefolder':
                raise
            paths = []
            for split in ('train', _eval_split(config)):
                if split:
                    paths += datasets.scan_image_folder(config.dataset_path, split, True).paths
            raise datasets.corrupt_image_error(config, e, paths) from None
        yield batch


def create_train_iter(
    config,
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
    if config.dataset == 'synthetic':
        return datasets.synthetic_train(config, local_device_count, per_device, start_step, pi)
    source = _source(config, train=True, pi=pi, pc=pc)
    ds = _train_dataset(config, source, host_batch, start_step * host_batch, pi)
    return (_to_devices(b, local_device_count) for b in _numpy_batches(ds, config))


def create_eval_iter(
    config,
    *,
    local_device_count: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the eval split; every example exactly once over all hosts.

    Every host yields the same number of batches (pmap needs it); padding examples have
    mask False. Images are [D, B, S, S, C] (centre crop) or [D, B, 10, S, S, C] (ten crops,
    Section 4.1), with crop_yx [..., 2] and flip [...] matching the crops.
    """
    pi, pc = _processes(process_index, process_count)
    per_device = per_device_batch(
        config.eval_batch_size or config.batch_size, local_device_count, pc
    )
    host_batch = per_device * local_device_count
    if config.dataset == 'synthetic':
        n_total = config.synthetic_num_eval
        examples = datasets.synthetic_eval_examples(config, pi, pc)
    else:
        n_total = get_dataset_info(config).num_eval
        examples = _eval_examples(config, pi, pc, host_batch)
    num_batches = math.ceil(math.ceil(n_total / pc) / host_batch)  # same on every host
    return _padded(examples, num_batches, host_batch, local_device_count)


def _eval_examples(config, pi: int, pc: int, host_batch: int) -> Iterator[dict[str, np.ndarray]]:
    source = _source(config, train=False, pi=pi, pc=pc)
    base_hw = _base_hw(config, source)
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
    return _numpy_batches(ds.batch(host_batch).prefetch(tf.data.AUTOTUNE), config)


def _padded(chunks, num_batches: int, host_batch: int, devices: int):
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


# --- on device ---


def device_preprocess(
    batch: dict,
    rng: jax.Array | None,
    stats: Stats,
    config,
    *,
    train: bool,
    dtype=jnp.float32,
) -> jax.Array:
    """uint8 crops -> float model input: PCA colour noise (train) and normalisation. Pure jnp.

    `batch['image']` is one device's shard, [B, H, W, C] or [B, K, H, W, C] (ten crops), uint8;
    `batch['crop_yx']` [..., 2] and `batch['flip']` [...] locate each crop in the base image so
    that the mean image is cropped and mirrored with it.
    """
    image = batch['image'].astype(jnp.float32)
    lead, channels = image.shape[:-3], image.shape[-1]
    if train and rng is not None and config.pca_noise_std > 0:
        # Section 4.1: add sum_i alpha_i lambda_i p_i to every pixel, alpha_i ~ N(0, std), drawn
        # once per image; eigen-stats are for RGB in [0, 1], so scale to 0-255.
        alpha = jax.random.normal(rng, lead + (channels,)) * config.pca_noise_std
        shift = (alpha * jnp.asarray(stats.pca_eigval)) @ jnp.asarray(stats.pca_eigvec).T
        image = image + 255.0 * shift[..., None, None, :]
    if config.normalization == 'channel':
        image = (image - jnp.asarray(stats.channel_mean)) / jnp.asarray(stats.channel_std)
    elif config.normalization == 'mean_image':
        image = image - _mean_crops(batch, stats.mean_image, image.shape)
    elif config.normalization != 'none':
        raise ValueError(
            f'Unknown config.normalization {config.normalization!r}: mean_image | channel | none.'
        )
    return image.astype(dtype)


def _mean_crops(batch: dict, mean_image: np.ndarray, shape) -> jax.Array:
    """The mean image cropped at each crop's offset and mirrored with it ([..., H, W, C])."""
    h, w, c = shape[-3:]
    mean = jnp.asarray(mean_image, jnp.float32)
    if 'crop_yx' not in batch:  # no crop metadata: centre crop
        y, x = (mean.shape[0] - h) // 2, (mean.shape[1] - w) // 2
        return mean[y : y + h, x : x + w]
    yx = jnp.reshape(batch['crop_yx'], (-1, 2))
    flip = jnp.reshape(batch['flip'], (-1,))

    def one(offset, mirrored):
        m = jax.lax.dynamic_slice(mean, (offset[0], offset[1], 0), (h, w, c))
        return jnp.where(mirrored, m[:, ::-1], m)

    return jax.vmap(one)(yx, flip).reshape(shape)
