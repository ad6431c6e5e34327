"""Statistics of a training source's base images: computed, cached, read and written.

The mean image (Section 2), the per-channel mean/std and the eigen-decomposition of the pixel
covariance (Section 4.1), taken over *base* images (see `preprocessing.py`): the 256x256 resized
central square, or the zero-padded small image for the mean image (the channel and PCA
statistics skip the padding). Files are .npz (read with allow_pickle=False) or .json. Dataset
objects call this module; `dataset_stats` picks a config's statistics and is the command.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf

from alexnet_jax import preprocessing
from alexnet_jax.data_types import Source, Stats, tfds_data_dir

log = logging.getLogger(__name__)

# Widely used ImageNet values (alexnet-spec.md, "Data"): RGB in [0, 1], eigenvectors as columns.
IMAGENET_PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_PCA_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
    np.float32,
)
# Per-channel mean and std of ImageNet training pixels, in 0-255 units.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255.0


def imagenet_stats(resize_size: int) -> Stats:
    """ImageNet's published values; the mean image is the channel mean everywhere (no
    per-pixel mean is published)."""
    mean = np.broadcast_to(IMAGENET_MEAN, (resize_size, resize_size, 3)).copy()
    return Stats(mean, IMAGENET_MEAN, IMAGENET_STD, IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC)


def save_stats(stats: Stats, path: str, **meta) -> None:
    """Writes .json (lists) or .npz (arrays; no pickled objects)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays = {k: np.asarray(v, np.float32) for k, v in stats._asdict().items()}
    if path.endswith('.json'):
        with open(path, 'w') as f:
            json.dump({**{k: v.tolist() for k, v in arrays.items()}, **meta}, f)
    else:
        # A temporary file of its own: hosts sharing a data dir may write the cache at once.
        fd, tmp = tempfile.mkstemp(suffix='.npz', dir=os.path.dirname(os.path.abspath(path)))
        os.fchmod(fd, 0o644)  # as a plain open() would make it (mkstemp's is 0600)
        try:
            with os.fdopen(fd, 'wb') as f:
                np.savez(f, **arrays, **{k: np.asarray(v) for k, v in meta.items()})
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


def read_stats(path: str) -> Stats:
    if path.endswith('.json'):
        with open(path) as f:
            raw = json.load(f)
    else:
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    missing = [k for k in Stats._fields if k not in raw]
    if missing:
        raise ValueError(f'Stats file {path} lacks {", ".join(missing)}; recompute it.')
    return Stats(*(np.asarray(raw[k], np.float32) for k in Stats._fields))


_BATCH = 64


def _decoded_batches(ds: tf.data.Dataset, source: Source) -> Iterator[np.ndarray]:
    """Iterates `ds` (batches of base images, in file order); a file that fails to decode
    becomes one error naming it (the batch it broke narrows the search)."""
    it = ds.as_numpy_iterator()
    done = 0
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as error:
            if source.decode_error is None:
                raise
            raise source.decode_error(error, slice(done, done + _BATCH)) from None
        done += len(batch)
        yield batch


def compute_stats(source: Source, config, max_images: int | None = None) -> tuple[Stats, int]:
    """Statistics over the training `source` (or its first `max_images`); (stats, count)."""
    preprocessing.source_base_size(config, source)  # crop_padding > 0: one error for mixed sizes
    if source.lookup is not None:
        ds = tf.data.Dataset.range(source.num_examples).map(source.lookup)
    else:
        ds = source.records
    if max_images:
        ds = ds.take(max_images)
    ds = ds.map(
        lambda ex: preprocessing.base_image(ex['image'], config, channels=source.channels),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if config.skip_corrupt_images:
        ds = ds.ignore_errors()
    batches = _decoded_batches(ds.batch(_BATCH).prefetch(2), source)
    return stats_from_batches(batches, config.crop_padding, config.dataset)


def stats_from_batches(
    batches: Iterable[np.ndarray], crop_padding: int, name: str
) -> tuple[Stats, int]:
    """Statistics over batches of base images (uint8 [N, B_h, B_w, C]); (stats, count).

    The mean image is over whole base images; the channel and PCA statistics skip a
    ``crop_padding`` border (the zero padding of small images).
    """
    p = crop_padding
    image_sum, moments, pixels, count = None, None, 0, 0
    for batch in batches:
        b = batch.astype(np.float64)
        image_sum = b.sum(0) if image_sum is None else image_sum + b.sum(0)
        inner = b[:, p : b.shape[1] - p, p : b.shape[2] - p] if p > 0 else b
        x = inner.reshape(-1, b.shape[-1])
        m = np.concatenate([x.sum(0), (x.T @ x).ravel()])
        moments = m if moments is None else moments + m
        pixels += x.shape[0]
        count += b.shape[0]
    if not count:
        raise ValueError(f'{name}: no training images to compute statistics from.')
    c = image_sum.shape[-1]
    mean = moments[:c] / pixels
    cov = moments[c:].reshape(c, c) / pixels - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov / 255.0**2)  # RGB in [0, 1], as the published values
    order = np.argsort(eigval)[::-1]
    stats = Stats(
        (image_sum / count).astype(np.float32),
        mean.astype(np.float32),
        np.sqrt(np.diag(cov)).astype(np.float32),
        np.maximum(eigval[order], 0).astype(np.float32),
        eigvec[:, order].astype(np.float32),
    )
    return stats, count


def cache_path(config, key: str) -> str:
    """The cache file named `key` in the tfds data dir."""
    return os.path.join(tfds_data_dir(config), 'alexnet_jax_stats', key + '.npz')


def cached_stats(config, key: str, compute: Callable[[], tuple[Stats, int]]) -> Stats:
    """Training statistics from `compute()` (returning (stats, count)), computed once and
    cached as .npz under `key`."""
    path = cache_path(config, key)
    if os.path.exists(path):
        return read_stats(path)
    log.info('Computing %s training statistics (cached in %s)', config.dataset, path)
    stats, count = compute()
    save_stats(stats, path, num_images=count)
    return stats
