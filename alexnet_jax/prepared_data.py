"""A prepared set (`alexnet_jax.prepare`) as a dataset object: ``config.dataset = 'prepared'``.

The host only reads: whole stored images (256x256 for large images, Section 2; the small
datasets at their own size) are gathered by index into a batch by a few threads, a batch or two
ahead of the step. Cropping, mirroring, colour noise and normalisation happen inside the jitted
step (`device_preprocessing`), each example's randomness keyed on its position in the stream.

The stream is a function of (seed, batch_size, step) alone, not of the topology. Global
position p is the example at index ``permutation(seed, epoch)[p % n]`` of epoch ``p // n``, a
fresh global shuffle each epoch. Global batch t holds positions ``[t * B, (t + 1) * B)``;
process i of P reads only its contiguous slice of it, and its local devices split that slice
in order. So 2 processes of 1 device and 1 process of 2 devices see the same batches, and a run
resumed at any step, on any number of hosts, continues the same stream.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import ml_collections
import numpy as np

from alexnet_jax import image_stats, prepared_files
from alexnet_jax.data_types import (
    TFDS_DATASETS,
    DatasetInfo,
    HostArrays,
    Stats,
    carve_validation,
    check_split,
    split_sizes,
)
from alexnet_jax.prepared_files import Header, PreparedError, ShardReader

_EVAL_CHUNK = 256
_STATS_BATCH = 128  # images per batch of the statistics pass (float64 copies: ~200 MB at 256 px)


@functools.lru_cache(maxsize=4)
def _header(root: str, mtime: float) -> Header:
    del mtime  # the memo key only: a rewritten header is read again
    return prepared_files.read_header(root)


def load_header(root: str | None) -> Header:
    if not root:
        raise PreparedError(
            "config.dataset = 'prepared' reads a folder made by `python -m alexnet_jax.prepare`: "
            'set config.dataset_path to it.'
        )
    path = os.path.join(root, prepared_files.HEADER)
    mtime = os.path.getmtime(path) if os.path.exists(path) else 0.0
    return _header(os.path.abspath(root), mtime)


def check_fits(header: Header, config: ml_collections.ConfigDict) -> None:
    """Refuses a prepared set whose classes or image size do not fit `config`, naming both."""
    where = f'The prepared set {header.root} ({header.dataset})'
    if len(header.classes) != config.num_classes:
        raise PreparedError(
            f'{where} has {len(header.classes)} classes, config.num_classes = '
            f'{config.num_classes}. Use the config the set was prepared with, or set '
            f'config.num_classes = {len(header.classes)}.'
        )
    h, w, _ = header.image_shape
    p = config.crop_padding
    if header.crop_padding is not None and (header.crop_padding > 0) != (p > 0):
        kept = 'kept small images at their size' if header.crop_padding else 'resized to squares'
        raise PreparedError(
            f'{where} {kept} (prepared with crop_padding = {header.crop_padding}), the config '
            f'has crop_padding = {p}. Use the config the set was prepared with.'
        )
    if p == 0 and (h, w) != (config.resize_size, config.resize_size):
        raise PreparedError(
            f'{where} stores {h}x{w} images, the config crops {config.image_size} px from '
            f'{config.resize_size}x{config.resize_size} (resize_size; crop_padding = 0). Prepare '
            'the set again with this config, or use the config it was prepared with.'
        )
    if p > 0 and min(h, w) + 2 * p < config.image_size:
        raise PreparedError(
            f'{where} stores {h}x{w} images: padded by crop_padding = {p} they are smaller than '
            f'config.image_size = {config.image_size}. Use the config the set was prepared with.'
        )


def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


class PositionIndex:
    """Global stream positions -> example indices, a fresh permutation per epoch (memoised)."""

    def __init__(self, seed: int, n: int):
        self.seed, self.n = seed, n
        self._perms: dict[int, np.ndarray] = {}

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        epochs, within = np.divmod(positions, self.n)
        out = np.empty_like(positions)
        for epoch in np.unique(epochs).tolist():
            if epoch not in self._perms:
                if len(self._perms) >= 2:
                    del self._perms[min(self._perms)]
                self._perms[epoch] = _permutation(self.seed, epoch, self.n)
            here = epochs == epoch
            out[here] = self._perms[epoch][within[here]]
        return out


def host_positions(
    step: int, global_batch: int, process_index: int, process_count: int
) -> np.ndarray:
    """The global stream positions process `process_index` reads for `step`."""
    host = global_batch // process_count
    start = step * global_batch + process_index * host
    return np.arange(start, start + host, dtype=np.int64)


class _Gather:
    """Reads images by index into new arrays with a pool of threads (pread and decode release
    the GIL), and keeps batches in flight ahead of the consumer."""

    def __init__(self, reader: ShardReader, threads: int):
        self.reader, self.threads = reader, threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix='prepared-read')

    def close(self) -> None:
        """Stops the threads and closes the shard files."""
        self.pool.shutdown(wait=True)
        self.reader.close()

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *self.reader.shape), np.uint8)
        parts = np.array_split(np.arange(len(indices)), min(self.threads, len(indices)) or 1)
        futures = [
            self.pool.submit(self.reader.read, indices[part], out[part[0] : part[-1] + 1])
            for part in parts
            if len(part)
        ]
        for f in futures:
            f.result()
        return out


@contextlib.contextmanager
def _opened(header: Header, split: str, config) -> Iterator[tuple[ShardReader, _Gather]]:
    """`split`'s reader and its gathering threads, closed (threads stopped) on the way out."""
    gather = _Gather(ShardReader(header, split), threads(config))
    try:
        yield gather.reader, gather
    finally:
        gather.close()


def _ahead(make: Callable[[int], dict], steps: Iterator[int], depth: int) -> Iterator[dict]:
    """``make(step)`` for each step, `depth` of them being made in the background."""
    with ThreadPoolExecutor(1, thread_name_prefix='prepared-batch') as pool:
        pending = []
        for step in steps:
            pending.append(pool.submit(make, step))
            if len(pending) > depth:
                yield pending.pop(0).result()
        for f in pending:
            yield f.result()


def split_indices(header: Header, config: ml_collections.ConfigDict, split: str) -> np.ndarray:
    """Indices into the stored split that ``split`` reads (`data_types.SPLITS`).

    The validation images are held out of the stored training split as the source dataset
    holds them out: the last ones of a tfds dataset (the same images as training from tfds),
    a fixed random subset of an image folder's.
    """
    check_split(split)
    if split == 'test':
        return np.arange(header.count('eval'))
    n = header.count('train')
    train, held_out, clean = split_sizes(config, n)
    if header.dataset in TFDS_DATASETS:
        training, validation = np.arange(train), np.arange(train, n)
    else:
        training, validation = carve_validation(n, held_out)
    return {'train': training, 'validation': validation, 'train_clean': training[:clean]}[split]


def train_batches(
    config: ml_collections.ConfigDict,
    header: Header,
    devices: int,
    per_device: int,
    start_step: int,
    pi: int,
    pc: int,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite ``[devices, per_device, ...]`` batches from `start_step`: base images, labels,
    and each example's global stream position (its augmentation key on the device)."""
    training = split_indices(header, config, 'train')
    with _opened(header, 'train', config) as (reader, gather):
        yield from _train_stream(
            config, reader, gather, training, (devices, per_device, pc), start_step, pi
        )


def _train_stream(config, reader, gather, training, shape, start_step, pi):
    """The batches of :func:`train_batches`, made a batch or two ahead by `_ahead`."""
    devices, per_device, pc = shape
    index = PositionIndex(config.seed, len(training))
    global_batch = devices * per_device * pc

    def make(step: int) -> dict[str, np.ndarray]:
        positions = host_positions(step, global_batch, pi, pc)
        indices = training[index(positions)]
        batch = {
            'image': gather(indices),
            'label': reader.labels[indices],
            'position': (positions % 2**32).astype(np.uint32),
        }
        return {k: v.reshape((devices, per_device) + v.shape[1:]) for k, v in batch.items()}

    return _ahead(make, itertools.count(start_step), max(config.prefetch_batches, 1))


def eval_chunks(
    config: ml_collections.ConfigDict, header: Header, pi: int, pc: int, split: str = 'test'
) -> Iterator[dict[str, np.ndarray]]:
    """This host's contiguous share of an evaluated split, each image once, in chunks."""
    chosen = split_indices(header, config, split)
    with _opened(header, 'eval' if split == 'test' else 'train', config) as (reader, gather):
        n = len(chosen)
        lo, hi = n * pi // pc, n * (pi + 1) // pc

        def make(start: int) -> dict[str, np.ndarray]:
            indices = chosen[start : min(start + _EVAL_CHUNK, hi)]
            # 'position' marks whole base images: the device crops them (device_preprocessing).
            position = indices.astype(np.uint32)
            return {'image': gather(indices), 'label': reader.labels[indices], 'position': position}

        if lo == hi:  # more hosts than images: an empty chunk, so that it pads masked batches
            yield make(lo)
        yield from _ahead(make, iter(range(lo, hi, _EVAL_CHUNK)), 2)


def threads(config: ml_collections.ConfigDict) -> int:
    """Reader threads: ``config.input_threads``, or (0) every core of this process (every core
    of the machine where the process cannot tell, as on macOS)."""
    if config.input_threads:
        return config.input_threads
    if hasattr(os, 'sched_getaffinity'):  # Linux only
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Prepared:
    """The prepared set at ``config.dataset_path``."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def header(self) -> Header:
        header = load_header(self.config.dataset_path)
        check_fits(header, self.config)
        return header

    def info(self) -> DatasetInfo:
        header = self.header()
        size = self.config.image_size
        channels = header.image_shape[-1]
        train, held_out, clean = split_sizes(self.config, header.count('train'))
        return DatasetInfo(
            train,
            header.count('eval') if 'eval' in header.splits else 0,
            len(header.classes),
            (size, size, channels),
            header.classes,
            header.skipped('train'),
            tuple(header.image_shape[:2]),
            held_out,
            clean,
        )

    def source(self, split: str, *, process_index: int = 0, process_count: int = 1) -> HostArrays:
        header, c, pi, pc = self.header(), self.config, process_index, process_count
        if split == 'test' and 'eval' not in header.splits:
            raise PreparedError(f'The prepared set {header.root} has no evaluation split.')
        return HostArrays(
            len(split_indices(header, c, split)),
            lambda devices, per_device, start: train_batches(
                c, header, devices, per_device, start, pi, pc
            ),
            lambda: eval_chunks(c, header, pi, pc, split),
        )

    def stats(self) -> Stats:
        header, config = self.header(), self.config
        if header.dataset == 'imagenet2012':
            return image_stats.imagenet_stats(config.resize_size)
        crcs = '-'.join(f'{r["crc32"]:08x}' for r in header.splits['train']['shards'])
        digest = hashlib.sha1(crcs.encode()).hexdigest()[:16]
        key = f'prepared-{header.dataset}-p{config.crop_padding}-{digest}'
        if config.validation_examples:  # over the images it trains on
            key += f'-v{config.validation_examples}'
        return image_stats.cached_stats(config, key, self.compute_stats)

    def compute_stats(self, max_images: int | None = None) -> tuple[Stats, int]:
        """Statistics of the training split's base images (or its first `max_images`), never
        cached; (stats, count). For the ``dataset_stats`` command."""
        return image_stats.stats_from_batches(
            self._base_batches(self.header(), max_images), self.config.crop_padding, 'prepared'
        )

    def _base_batches(self, header: Header, max_images: int | None = None) -> Iterator[np.ndarray]:
        p = self.config.crop_padding
        training = split_indices(header, self.config, 'train')
        with _opened(header, 'train', self.config) as (_, gather):
            n = min(len(training), max_images or len(training))
            for start in range(0, n, _STATS_BATCH):
                images = gather(training[start : min(start + _STATS_BATCH, n)])
                yield np.pad(images, [(0, 0), (p, p), (p, p), (0, 0)]) if p else images

    def base_shape(self) -> tuple[int, int, int]:
        h, w, c = self.header().image_shape
        p = self.config.crop_padding
        return (h + 2 * p, w + 2 * p, c)

    def complete_config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        return config
