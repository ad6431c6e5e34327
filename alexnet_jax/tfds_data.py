"""The tfds datasets (imagenet2012, fashion_mnist, cifar10) as dataset objects, prepared offline.

:class:`TfdsDataset` offers a tfds dataset's info, its per-host sources and its statistics.
Preparing follows what is on disk: Fashion-MNIST from Debian's IDX files (else tfds's download),
CIFAR-10 from its binary archive, ImageNet from the two tars in the manual dir; each fails at
once naming the missing files and the fix.

Sources: the small datasets are decoded once and kept in host memory with random access
(``Source.lookup``); ImageNet is read as tfds's TFRecord shards of encoded JPEGs, in their
stored order (tfds shuffled them at write time), never cached decoded (``Source.records``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import gzip
import io
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import image_stats
from alexnet_jax.data_types import (
    DatasetInfo,
    Source,
    Stats,
    check_split,
    split_sizes,
    tfds_data_dir,
)

log = logging.getLogger(__name__)

IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
FASHION_MNIST_DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_APT = 'apt-get install dataset-fashion-mnist'
CIFAR10_ARCHIVE = 'cifar-10-binary.tar.gz'
CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'


# --- Fashion-MNIST from the IDX files (Debian's dataset-fashion-mnist) ---


def read_idx(path: str | Path) -> np.ndarray:
    """Parses a (gzipped) IDX file: big-endian dims after a 4-byte magic, then uint8 data."""
    opener = gzip.open if str(path).endswith('.gz') else open
    with opener(path, 'rb') as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f'{path} is not an unsigned-byte IDX file.')
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype='>u4', count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _build_fashion_mnist_from_idx(data_dir: str, idx_dir: Path) -> None:
    """Writes tfds's `fashion_mnist` (same name, version, features, keys) from local IDX files.

    tfds's own builder rejects Debian's files: they were re-gzipped, so the archive checksums tfds
    registers do not match although the pixels do. The registered builder then reads what this
    writes as its own prepared dataset.
    """
    reference = tfds.builder('fashion_mnist', data_dir=data_dir)
    split_examples = {}
    for split, (images_name, labels_name) in FASHION_MNIST_FILES.items():
        images = read_idx(idx_dir / images_name)[..., None]  # [N, 28, 28, 1]
        labels = read_idx(idx_dir / labels_name).astype(np.int64)
        # Keys are the example indices, as in tfds's MNIST builder, so the on-disk order matches.
        split_examples[split] = [
            (i, {'image': images[i], 'label': labels[i]}) for i in range(len(labels))
        ]
    tfds.dataset_builders.store_as_tfds_dataset(
        name='fashion_mnist',
        version=str(reference.version),
        features=reference.info.features,
        split_datasets=split_examples,
        data_dir=data_dir,
        description=f'Fashion-MNIST built offline from the IDX files in {idx_dir}.',
        disable_shuffling=False,
    )


def prepare_fashion_mnist(data_dir: str, idx_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Returns tfds's `fashion_mnist` builder, preparing it in `data_dir` if needed.

    Order: already prepared -> nothing to do; IDX files in `idx_dir` (or Debian's folder) ->
    build from them offline; otherwise tfds's own download.
    """
    with quiet_tfds():  # also tfds's warnings about the variant folder it has not made yet
        builder = tfds.builder('fashion_mnist', data_dir=data_dir)
        if builder.is_prepared():
            return builder
    # Runs started together (a sweep's chains) would each build and all but one fail on the
    # others' folder: one builds, the rest wait for it and read what it wrote.
    with _held_lock(Path(data_dir) / '.fashion_mnist.lock'), quiet_tfds():
        builder = tfds.builder('fashion_mnist', data_dir=data_dir)
        if builder.is_prepared():
            return builder
        folder = Path(idx_dir or FASHION_MNIST_DEBIAN_DIR)
        names = [n for pair in FASHION_MNIST_FILES.values() for n in pair]
        if all((folder / n).exists() for n in names):
            log.info(
                'Preparing Fashion-MNIST once: tfds files in %s from %s (later runs reuse them).',
                data_dir,
                folder,
            )
            _build_fashion_mnist_from_idx(data_dir, folder)
        else:
            log.info('Preparing Fashion-MNIST once: downloading it with tfds into %s.', data_dir)
            try:
                builder.download_and_prepare()
            except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
                raise FileNotFoundError(
                    f'Fashion-MNIST: no IDX files ({", ".join(names)}) in {folder} and the '
                    f'download failed ({type(e).__name__}). Run `{FASHION_MNIST_APT}` or set '
                    'config.dataset_path to a folder with those files.'
                ) from None
        return tfds.builder('fashion_mnist', data_dir=data_dir)


@contextlib.contextmanager
def _held_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` while inside; the kernel drops it if the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
    """While tfds prepares a dataset for us: no progress bars, no 'Downloading and preparing'
    prints on stdout, and absl's log lines (tfds's) at ERROR only. Restored afterwards."""
    from tensorflow_datasets.core.utils import tqdm_utils

    bars = getattr(tqdm_utils, '_active', True)
    absl_logger = logging.getLogger('absl')
    level = absl_logger.level
    tfds.display_progress_bar(False)
    absl_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl_logger.setLevel(level)
        tfds.display_progress_bar(bars)


# --- CIFAR-10 and ImageNet from the files the user downloaded ---


def prepare_cifar10(builder: tfds.core.DatasetBuilder, data_dir: str, folder: str | None) -> None:
    """Prepares tfds's `cifar10` from the binary archive in `folder` (default: tfds's manual dir).

    Never downloads: without the archive on disk it fails at once, naming the file, where to put
    it and where to get it (offline, tfds's download would retry its host for minutes).
    """
    manual = Path(folder or os.path.join(data_dir, 'downloads', 'manual'))
    if not (manual / CIFAR10_ARCHIVE).exists():
        where = 'config.dataset_path=' + str(folder) if folder else f'the tfds manual dir {manual}'
        raise FileNotFoundError(
            f'CIFAR-10: {CIFAR10_ARCHIVE} not found in {where}, and cifar10 is not prepared in '
            f'{data_dir}. Put the official binary archive ({CIFAR10_URL}) in a folder and pass it '
            'as --config.dataset_path=FOLDER.'
        )
    log.info('Preparing CIFAR-10 once: tfds files in %s from %s.', data_dir, manual)
    with quiet_tfds():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
        )


def _fashion_mnist_builder(config, data_dir: str) -> tfds.core.DatasetBuilder:
    return prepare_fashion_mnist(data_dir, config.dataset_path)


def _cifar10_builder(config, data_dir: str) -> tfds.core.DatasetBuilder:
    builder = tfds.builder('cifar10', data_dir=data_dir)
    if not builder.is_prepared():
        prepare_cifar10(builder, data_dir, config.dataset_path)
    return builder


def _imagenet_builder(config, data_dir: str) -> tfds.core.DatasetBuilder:
    builder = tfds.builder('imagenet2012', data_dir=data_dir, try_gcs=False)
    if not builder.is_prepared():
        manual = config.manual_dir or os.path.join(data_dir, 'downloads', 'manual')
        missing = [t for t in IMAGENET_TARS if not os.path.exists(os.path.join(manual, t))]
        if missing:
            raise FileNotFoundError(
                f'ImageNet (imagenet2012) is not prepared in {data_dir} and '
                f'{", ".join(missing)} not found in the manual dir {manual}. Download '
                f'{" and ".join(IMAGENET_TARS)} from image-net.org into that folder (or set '
                'config.manual_dir to where they are), then run again to prepare.'
            )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual)
        )
    return builder


@dataclasses.dataclass(frozen=True)
class _Kind:
    """What differs between the tfds datasets."""

    eval_split: str
    channels: int
    in_memory: bool  # small: decoded once and kept in host memory
    prepared_builder: Callable[[ml_collections.ConfigDict, str], tfds.core.DatasetBuilder]
    published_stats: bool = False  # use ImageNet's published statistics, compute none


KINDS = {
    'imagenet2012': _Kind('validation', 3, False, _imagenet_builder, published_stats=True),
    'fashion_mnist': _Kind('test', 1, True, _fashion_mnist_builder),
    'cifar10': _Kind('test', 3, True, _cifar10_builder),
}


@functools.lru_cache(maxsize=8)
def _load_split_arrays(
    data_dir: str, name: str, split: str
) -> tuple[np.ndarray, np.ndarray]:  # decoded small datasets, memoised per process
    builder = tfds.builder(name, data_dir=data_dir)
    ds = builder.as_dataset(split=split, batch_size=-1, shuffle_files=False)
    arrays = tfds.as_numpy(ds)
    return arrays['image'], arrays['label'].astype(np.int32)


def host_split(split: str, process_index: int, process_count: int, *, train: bool) -> str:
    """This host's slice of `split`: equal sizes for training, every example once for eval."""
    if process_count == 1:
        return split
    return tfds.even_splits(split, n=process_count, drop_remainder=train)[process_index]


class TfdsDataset:
    """One of the tfds datasets (`KINDS`), prepared in the tfds data dir on first use."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.name = config.dataset
        self.kind = KINDS[self.name]

    def builder(self) -> tfds.core.DatasetBuilder:
        """The prepared tfds builder (prepared now if it is not yet)."""
        return self.kind.prepared_builder(self.config, tfds_data_dir(self.config))

    def _sizes(self, builder: tfds.core.DatasetBuilder) -> tuple[int, int, int]:
        return split_sizes(self.config, int(builder.info.splits['train'].num_examples))

    def split_name(self, split: str, builder: tfds.core.DatasetBuilder) -> str:
        """The tfds split string of ``split``. The validation images are the training split's
        last ones: tfds shuffled the examples when it wrote them, so they are a random subset
        of the classes' images, the same on every host and for every seed."""
        check_split(split)
        if split == 'test':
            return self.kind.eval_split
        train, held_out, clean = self._sizes(builder)
        if split == 'validation':
            return f'train[{train}:]'
        if split == 'train_clean':
            return f'train[:{clean}]'
        return f'train[:{train}]' if held_out else 'train'

    def info(self) -> DatasetInfo:
        builder = self.builder()
        names = list(builder.info.features['label'].names)
        if len(names) != self.config.num_classes:
            raise ValueError(
                f'{self.name} has {len(names)} classes but config.num_classes = '
                f'{self.config.num_classes}. Set config.num_classes = {len(names)}.'
            )
        shape = builder.info.features['image'].shape
        size = self.config.image_size
        train, held_out, clean = self._sizes(builder)
        return DatasetInfo(
            train,
            int(builder.info.splits[self.kind.eval_split].num_examples),
            len(names),
            (size, size, int(shape[-1])),
            names,
            0,
            tuple(shape[:2]) if None not in shape[:2] else None,
            held_out,
            clean,
        )

    def source(self, split: str, *, process_index: int = 0, process_count: int = 1) -> Source:
        builder = self.builder()
        train = split == 'train'
        sub = host_split(self.split_name(split, builder), process_index, process_count, train=train)
        feature = builder.info.features['image']
        channels = int(feature.shape[-1])
        hw = tuple(feature.shape[:2]) if None not in feature.shape[:2] else None
        if self.kind.in_memory:  # decode once, keep in memory, random access
            images, labels = _load_split_arrays(tfds_data_dir(self.config), self.name, sub)
            images_t, labels_t = tf.constant(images), tf.constant(labels)

            def lookup(i):
                return {'image': tf.gather(images_t, i), 'label': tf.gather(labels_t, i)}

            return Source(len(labels), False, channels, lookup=lookup, image_hw=hw)
        # Large: encoded JPEG bytes, never cached decoded (host memory).
        ds = builder.as_dataset(
            split=sub,
            shuffle_files=False,
            decoders={'image': tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(try_autocache=False),
        )
        ds = ds.map(lambda ex: {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int32)})
        num = int(builder.info.splits[sub].num_examples)
        jpeg = feature.encoding_format == 'jpeg'  # tfds re-encodes imagenet2012 as JPEG throughout
        return Source(num, True, channels, records=ds, jpeg=jpeg, image_hw=hw)

    def stats(self) -> Stats:
        config = self.config
        if self.kind.published_stats:
            log.warning('%s without config.pca_stats: published channel mean and PCA.', self.name)
            return image_stats.imagenet_stats(config.resize_size)
        # Over the images it trains on: the held-out ones are not looked at.
        key = f'{self.name}-r{config.resize_size}-p{config.crop_padding}'
        if config.validation_examples:
            key += f'-v{config.validation_examples}'
        return image_stats.cached_stats(
            config, key, lambda: image_stats.compute_stats(self.source('train'), config)
        )

    def base_shape(self) -> tuple[int, int, int] | None:
        if self.config.crop_padding > 0:
            return None
        r = self.config.resize_size
        return (r, r, self.kind.channels)

    def complete_config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        return config
