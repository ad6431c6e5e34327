"""Training-set statistics for normalisation and PCA colour noise, and the command to make them.

    python -m alexnet_jax.dataset_stats --config configs/X.py --out FILE [--max_images N]

writes the mean image (Section 2), the per-channel mean/std and the eigen-decomposition of the
pixel covariance (Section 4.1) as .npz (read with allow_pickle=False) or .json; pass the file as
``config.pca_stats``. Statistics are taken over *base* images (see `preprocessing.py`): the
256x256 resized central square, or the zero-padded small image for the mean image (the channel
and PCA statistics skip the padding).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from alexnet_jax import datasets, preprocessing

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


class Stats(NamedTuple):
    """Training-set statistics. Pixel units: 0-255, except the PCA ones (RGB in [0, 1]).

    mean_image is over *base* images (the 256x256 resized square, or the zero-padded small
    image), so that a crop's mean is the same crop of it (Caffe crops its mean image likewise).
    pca_eigvec holds eigenvectors as columns, pca_eigval is in descending order.
    """

    mean_image: np.ndarray  # [B_h, B_w, C]
    channel_mean: np.ndarray  # [C]
    channel_std: np.ndarray  # [C]
    pca_eigval: np.ndarray  # [C]
    pca_eigvec: np.ndarray  # [C, C]


def save_stats(stats: Stats, path: str, **meta) -> None:
    """Writes .json (lists) or .npz (arrays; no pickled objects)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays = {k: np.asarray(v, np.float32) for k, v in stats._asdict().items()}
    if path.endswith('.json'):
        with open(path, 'w') as f:
            json.dump({**{k: v.tolist() for k, v in arrays.items()}, **meta}, f)
    else:
        tmp = path + '.tmp.npz'
        np.savez(tmp, **arrays, **{k: np.asarray(v) for k, v in meta.items()})
        os.replace(tmp, path)


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


def _decoded_batches(ds: tf.data.Dataset, config) -> Iterator[np.ndarray]:
    """Iterates `ds` (batches of base images, in file order); an image folder's file that fails
    to decode becomes one error naming it (the batch it broke narrows the search)."""
    it = ds.as_numpy_iterator()
    done = 0
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as error:
            if config.dataset != 'imagefolder':
                raise
            paths = datasets.scan_image_folder(
                config.dataset_path, 'train', bool(config.skip_corrupt_images)
            ).paths
            candidates = paths[done : done + _BATCH]
            raise datasets.corrupt_image_error(config, error, candidates) from None
        done += len(batch)
        yield batch


def compute_stats(config, max_images: int | None = None) -> tuple[Stats, int]:
    """Statistics over the training split (or its first `max_images`); returns (stats, count)."""
    from alexnet_jax import input_pipeline  # the pipeline's sources; imported late (cycle)

    source = input_pipeline._source(config, train=True)
    input_pipeline._base_hw(config, source)  # crop_padding > 0: one clear error for mixed sizes
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
    p = config.crop_padding
    image_sum, moments, pixels, count = None, None, 0, 0
    for batch in _decoded_batches(ds.batch(_BATCH).prefetch(2), config):
        b = batch.astype(np.float64)
        image_sum = b.sum(0) if image_sum is None else image_sum + b.sum(0)
        inner = b[:, p : b.shape[1] - p, p : b.shape[2] - p] if p > 0 else b
        x = inner.reshape(-1, b.shape[-1])
        m = np.concatenate([x.sum(0), (x.T @ x).ravel()])
        moments = m if moments is None else moments + m
        pixels += x.shape[0]
        count += b.shape[0]
    if not count:
        raise ValueError(f'{config.dataset}: no training images to compute statistics from.')
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


def _cache_path(config) -> str:
    """The cache file for `config`'s statistics. For an image folder the name holds a hash of
    its training images' names, sizes and modification times, so a changed folder is recomputed.
    """
    key = f'{config.dataset}-r{config.resize_size}-p{config.crop_padding}'
    if config.dataset == 'imagefolder':
        files = datasets.image_folder_fingerprint(config.dataset_path, 'train')
        key += '-' + hashlib.sha1(f'{files}:{config.skip_corrupt_images}'.encode()).hexdigest()[:16]
    return os.path.join(datasets.tfds_data_dir(config), 'alexnet_jax_stats', key + '.npz')


def cached_stats(config) -> Stats:
    """Statistics computed once from the training split, cached as .npz in the tfds data dir."""
    path = _cache_path(config)
    if os.path.exists(path):
        return read_stats(path)
    log.info('Computing %s training statistics (cached in %s)', config.dataset, path)
    stats, count = compute_stats(config)
    save_stats(stats, path, num_images=count)
    return stats


def expected_base_shape(config) -> tuple[int, int, int] | None:
    """Shape of `Stats.mean_image` for this config (None when it needs the stored image size)."""
    if config.dataset == 'synthetic':
        return (config.image_size, config.image_size, 3)
    if config.crop_padding > 0:
        return None
    channels = 1 if config.dataset == 'fashion_mnist' else 3
    return (config.resize_size, config.resize_size, channels)


def load_stats(config) -> Stats:
    """Statistics for `input_pipeline.device_preprocess`.

    `config.pca_stats` (a file from this module's command) wins. Otherwise: ImageNet's published
    values for imagenet2012 (the mean image is then the channel mean everywhere, as no per-pixel
    mean is published); exact values for synthetic; for the other datasets computed once from the
    training split and cached as .npz in the tfds data dir.
    """
    if config.pca_stats:
        stats = read_stats(config.pca_stats)
    elif config.dataset == 'imagenet2012':
        log.warning('imagenet2012 without config.pca_stats: published channel mean and PCA.')
        r = config.resize_size
        mean = np.broadcast_to(IMAGENET_MEAN, (r, r, 3)).copy()
        stats = Stats(mean, IMAGENET_MEAN, IMAGENET_STD, IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC)
    elif config.dataset == 'synthetic':
        s, var = config.image_size, (256.0**2 - 1) / 12.0  # discrete uniform on 0..255
        stats = Stats(
            np.full((s, s, 3), 127.5, np.float32),
            np.full(3, 127.5, np.float32),
            np.full(3, np.sqrt(var), np.float32),
            np.full(3, var / 255.0**2, np.float32),
            np.eye(3, dtype=np.float32),
        )
    else:
        datasets.check_dataset_name(config.dataset)
        stats = cached_stats(config)
    expected = expected_base_shape(config)
    if expected is not None and tuple(stats.mean_image.shape) != expected:
        raise ValueError(
            f'Stats mean_image has shape {stats.mean_image.shape}, but this config crops from '
            f'{expected} base images. Recompute them for this config with `python -m '
            'alexnet_jax.dataset_stats --config ... --out FILE` and set config.pca_stats=FILE.'
        )
    return stats


def main(argv: list[str]) -> None:
    from absl import app, flags

    from alexnet_jax import cli, runtime

    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    runtime.configure()
    cli.quiet_libraries()
    flags_ = flags.FLAGS
    config = flags_.config
    try:
        stats, count = compute_stats(config, flags_.max_images or None)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f'error: {error}')
    save_stats(stats, flags_.out, num_images=count, dataset=config.dataset)
    print(f'{config.dataset}: statistics of {count} training images written to {flags_.out}')
    print(f'channel mean {stats.channel_mean}, std {stats.channel_std}')
    print(f'PCA eigenvalues {stats.pca_eigval}')


def _define_flags() -> None:
    """The command's flags, defined when it runs (a library import must not claim `--config`)."""
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).')
    flags.DEFINE_string('out', None, 'Output file, .npz or .json.')
    flags.DEFINE_integer('max_images', 0, 'Use only the first N training images (0: all).')
    flags.mark_flags_as_required(['config', 'out'])


def run() -> None:
    """The console script's entry point."""
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == '__main__':
    run()
