"""The prepared format on disk: a JSON header, and per split a list of shards written once.

    DIR/prepared.json                 header: dataset, format, image shape, classes, per-split
                                      shards with their counts, byte sizes and CRC-32s
    DIR/PREPARING.json                while `alexnet_jax.prepare` runs: its parameters
    DIR/train-00000.images            raw: count x H x W x C uint8, image after image
                                      jpeg: the JPEG files one after another
    DIR/train-00000.labels.npy        int32 [count]
    DIR/train-00000.offsets.npy       jpeg only: int64 [count + 1], where each file starts
    DIR/train-00000.json              the shard's record, written last: it is finished

A shard is read with one ``pread`` per image into the caller's buffer: ~70k raw 256x256 images
per CPU-second against ~26k through `np.memmap` gathers and ~5k through ArrayRecord's random
access (RESULTS.md, "Prepared data"). Nothing here is pickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import zlib
from collections.abc import Sequence

import numpy as np

HEADER = 'prepared.json'
MARKER = 'PREPARING.json'
FORMAT_VERSION = 1
FORMATS = ('raw', 'jpeg')
SPLITS = ('train', 'eval')


class PreparedError(ValueError):
    """A prepared set that is missing, incomplete, damaged or does not fit the config."""


def shard_stem(split: str, index: int) -> str:
    return f'{split}-{index:05d}'


def write_json(path: str, value: dict) -> None:
    """Writes ``value`` to ``path`` whole or not at all (a temporary file, then a rename)."""
    tmp = path + '.tmp'
    try:
        with open(tmp, 'w') as f:
            json.dump(value, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, say: no half-written temporary file stays behind
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


class ShardWriter:
    """Writes one shard; it exists under its final names only once :meth:`finish` returns."""

    def __init__(self, root: str, split: str, index: int, image_format: str):
        self.root, self.stem, self.format = root, shard_stem(split, index), image_format
        self.images_path = os.path.join(root, self.stem + '.images')
        self._tmp = self.images_path + '.tmp'
        self._file = open(self._tmp, 'wb')  # noqa: SIM115 - closed in finish/abort
        self.labels: list[int] = []
        self.offsets = [0]
        self.crc = 0
        self.skipped: list[str] = []

    def add(self, data: bytes, label: int) -> None:
        self._file.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.offsets.append(self.offsets[-1] + len(data))
        self.labels.append(int(label))

    def finish(self) -> dict:
        """Flushes to disk, renames into place and writes the shard's record; returns it."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        arrays = {'labels': np.asarray(self.labels, np.int32)}
        if self.format == 'jpeg':
            arrays['offsets'] = np.asarray(self.offsets, np.int64)
        arrays_crc32 = {}
        for name, array in arrays.items():
            encoded = io.BytesIO()
            np.save(encoded, array, allow_pickle=False)
            data = encoded.getvalue()
            path = os.path.join(self.root, f'{self.stem}.{name}.npy')
            with open(path + '.tmp', 'wb') as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(path + '.tmp', path)
            arrays_crc32[name] = zlib.crc32(data)
        os.replace(self._tmp, self.images_path)
        record = {
            'stem': self.stem,
            'count': len(self.labels),
            'bytes': self.offsets[-1],
            'crc32': self.crc,
            'arrays_crc32': arrays_crc32,  # of the .npy files, whole: --verify checks them too
            'skipped': self.skipped,
        }
        write_json(os.path.join(self.root, self.stem + '.json'), record)
        return record

    def abort(self) -> None:
        """Drops the unfinished shard's temporary files (finished shards are never touched).

        Closing flushes what is buffered and fails again where writing failed (a full disk);
        the file is closed and dropped all the same, so the caller sees the first error only.
        """
        with contextlib.suppress(OSError):
            self._file.close()
        arrays = [
            os.path.join(self.root, f'{self.stem}.{n}.npy.tmp') for n in ('labels', 'offsets')
        ]
        for path in (self._tmp, *arrays):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def finished_record(root: str, split: str, index: int, image_format: str) -> dict | None:
    """The record of a finished shard whose files are all there at their sizes, else None.

    The label (and offset) arrays are read whole (a few kB a shard): one cut short or missing
    makes the shard unfinished, so a rerun rewrites it rather than finding nothing to do.
    """
    stem = shard_stem(split, index)
    try:
        record = read_json(os.path.join(root, stem + '.json'))
        if os.path.getsize(os.path.join(root, stem + '.images')) != record['bytes']:
            return None
        lengths = {'labels': record['count']}
        if image_format == 'jpeg':
            lengths['offsets'] = record['count'] + 1
        for name, length in lengths.items():
            array = np.load(os.path.join(root, f'{stem}.{name}.npy'), allow_pickle=False)
            if array.shape != (length,):
                return None
        return record
    except (OSError, ValueError, KeyError, EOFError):
        return None


def file_crc32(path: str, chunk: int = 1 << 24) -> int:
    crc = 0
    with open(path, 'rb') as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


@dataclasses.dataclass(frozen=True)
class Header:
    """The parsed ``prepared.json``."""

    root: str
    dataset: str
    format: str
    quality: int | None
    image_shape: tuple[int, int, int]  # (H, W, C) of every stored image
    classes: list[str]
    splits: dict[str, dict]  # split -> {'count', 'skipped', 'shards': [record, ...]}
    crop_padding: int | None = None  # the config's when prepared (None: not recorded)

    def count(self, split: str) -> int:
        return int(self.splits[split]['count'])

    def skipped(self, split: str) -> int:
        return len(self.splits[split]['skipped'])


def write_header(root: str, params: dict, classes: list[str], splits: dict) -> None:
    """Writes ``prepared.json``: the preparation's `params`, the class names, and per split
    ``{'count', 'skipped': [names], 'shards': [shard records]}``; the set is then complete."""
    write_json(os.path.join(root, HEADER), {**params, 'classes': classes, 'splits': splits})


def read_header(root: str) -> Header:
    """The header of the prepared set at ``root``; one error naming what is wrong and the fix."""
    path = os.path.join(root, HEADER)
    if not os.path.exists(path):
        if os.path.exists(os.path.join(root, MARKER)):
            raise PreparedError(
                f'The prepared set {root} is incomplete ({MARKER} is still there): rerun '
                f'`python -m alexnet_jax.prepare` with the same --config and --out to finish it.'
            )
        raise PreparedError(
            f'{root} holds no prepared set ({path} not found). Make one with `python -m '
            'alexnet_jax.prepare --config CONFIG --out DIR` and set config.dataset_path=DIR.'
        )
    raw = read_json(path)
    if raw.get('format_version') != FORMAT_VERSION:
        raise PreparedError(
            f'{path} is format version {raw.get("format_version")}, this code reads '
            f'{FORMAT_VERSION}: prepare the set again into a new folder.'
        )
    return Header(
        root,
        raw['dataset'],
        raw['format'],
        raw.get('quality'),
        tuple(raw['image_shape']),
        list(raw['classes']),
        raw['splits'],
        raw.get('crop_padding'),
    )


def rewrite_hint(root: str) -> str:
    return (
        f'rerun `python -m alexnet_jax.prepare` with the same --config and --out {root} to '
        'rewrite it'
    )


class ShardReader:
    """Random access to one split's images by index: ``read(indices, out)`` fills ``out``.

    Opening checks that every shard file is there at the size its record gives, so a missing
    or truncated shard fails here, naming the file, never as a short epoch. Reading from
    several threads at once is safe (``pread`` at explicit offsets).
    """

    def __init__(self, header: Header, split: str):
        self.header, self.split = header, split
        self.shape = header.image_shape
        self.jpeg = header.format == 'jpeg'
        if self.jpeg:
            try:
                import simplejpeg  # noqa: F401
            except ImportError:
                raise PreparedError(
                    f'{header.root} holds JPEG shards, which need simplejpeg: `pip install '
                    'simplejpeg` (in requirements.txt), or prepare the set with --format raw.'
                ) from None
        self._paths: list[str] = []
        self._fds: list[int] = []
        labels, offsets, counts = [], [], []
        try:
            for record in header.splits[split]['shards']:
                labels.append(self._check(record))
                if self.jpeg:
                    offsets.append(
                        _load_array(header.root, record['stem'], 'offsets', record['count'] + 1)
                    )
                counts.append(record['count'])
                self._fds.append(os.open(self._paths[-1], os.O_RDONLY))
        except BaseException:
            self.close()
            raise
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int32)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.offsets = offsets
        self.num_examples = int(self.starts[-1])

    def _check(self, record: dict) -> np.ndarray:
        """The shard's labels, after checking its images file is whole; one error if not."""
        root, stem = self.header.root, record['stem']
        images = os.path.join(root, stem + '.images')
        problem = _size_problem(images, record['bytes'])
        if not problem and not self.jpeg and record['bytes'] != record['count'] * _size(self.shape):
            problem = f'not {record["count"]} images of {self.shape} as its record says'
        if problem:
            raise PreparedError(f'Prepared shard {images} is {problem}: {rewrite_hint(root)}.')
        self._paths.append(images)
        return _load_array(root, stem, 'labels', record['count'])

    def read(self, indices: Sequence[int] | np.ndarray, out: np.ndarray) -> None:
        """Images ``indices`` into ``out[:len(indices)]`` ([N, H, W, C] uint8, C-contiguous)."""
        indices = np.asarray(indices, np.int64)
        shard = np.searchsorted(self.starts, indices, side='right') - 1
        local = indices - self.starts[shard]
        if self.jpeg:
            self._read_jpeg(shard, local, out)
            return
        size = _size(self.shape)
        for j, (s, i) in enumerate(zip(shard.tolist(), local.tolist(), strict=True)):
            view, done = out[j].reshape(-1), 0
            while done < size:  # network file systems may return fewer bytes than asked
                got = os.preadv(self._fds[s], [view[done:]], i * size + done)
                if got <= 0:
                    self._damaged(s, i, f'{done} of {size} bytes there')
                done += got

    def _read_jpeg(self, shard: np.ndarray, local: np.ndarray, out: np.ndarray) -> None:
        import simplejpeg

        colorspace = 'gray' if self.shape[-1] == 1 else 'rgb'
        for j, (s, i) in enumerate(zip(shard.tolist(), local.tolist(), strict=True)):
            lo, hi = int(self.offsets[s][i]), int(self.offsets[s][i + 1])
            data = os.pread(self._fds[s], hi - lo, lo)
            try:
                image = simplejpeg.decode_jpeg(data, colorspace=colorspace, buffer=out[j])
            except ValueError as e:
                self._damaged(s, i, f'cannot decode: {e}')
            if len(data) != hi - lo or image.shape != tuple(self.shape):
                self._damaged(s, i, f'{len(data)} of {hi - lo} bytes, decoded {image.shape}')

    def _damaged(self, shard: int, index: int, why: str):
        raise PreparedError(
            f'Image {index} of {self._paths[shard]} is damaged ({why}): check the set with '
            f'`python -m alexnet_jax.prepare --verify --out {self.header.root}`, then '
            f'{rewrite_hint(self.header.root)}.'
        )

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape))


def _size_problem(path: str, expected: int) -> str | None:
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return 'missing'
    if size != expected:
        return f'truncated or damaged ({size:,} bytes, its record says {expected:,})'
    return None


def _load_array(root: str, stem: str, name: str, length: int) -> np.ndarray:
    path = os.path.join(root, f'{stem}.{name}.npy')
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PreparedError(
            f'Prepared file {path} cannot be read ({e}): {rewrite_hint(root)}.'
        ) from None
    if array.shape != (length,):
        raise PreparedError(
            f'Prepared file {path} holds {array.shape} values, its shard record says {length}: '
            f'{rewrite_hint(root)}.'
        )
    return array
