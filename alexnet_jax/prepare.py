"""Prepares a dataset once as the paper's images, for `config.dataset = 'prepared'`.

    python -m alexnet_jax.prepare --config configs/imagenet.py --out DIR [--format raw|jpeg]
        [--quality 90] [--examples_per_shard 5000]

Reads the config's dataset (imagenet2012, fashion_mnist, cifar10, imagefolder) once and writes
its training and evaluation splits in the format of `prepared_files`. Large images become what
Section 2 trained on: the central square resized to ``resize_size`` (256) on a side, exactly the
base image the tf.data path crops from. Small images (``crop_padding > 0``) keep their size.
``raw`` stores uint8 pixels (ImageNet: ~252 GB, read at memory speed); ``jpeg`` re-encodes them
(quality 90: ~22 GB, decoded on the host at a few thousand images per CPU-second).

Decoding and resizing run in `tf.data` on every core. A rerun skips the shards already
finished (the preparation resumes) and rewrites any that went missing or were cut short. An
image that cannot be decoded is named in the log, skipped and listed in the header.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import logging
import os
import sys
from collections.abc import Iterator

import ml_collections

from alexnet_jax import datasets, prepared_files, workdir_lock
from alexnet_jax.prepared_files import HEADER, MARKER, PreparedError
from alexnet_jax.workdir_lock import WorkdirLockedError

log = logging.getLogger(__name__)

SOURCES = ('imagenet2012', 'fashion_mnist', 'cifar10', 'imagefolder')


class PrepareError(RuntimeError):
    """Preparation cannot go on (refused folder, full or read-only disk); finished shards stay."""


def _params(
    config, image_format: str, quality: int, per_shard: int, image_shape, sources: dict
) -> dict:
    return {
        'format_version': prepared_files.FORMAT_VERSION,
        'dataset': config.dataset,
        'dataset_path': config.dataset_path,
        'format': image_format,
        'quality': quality if image_format == 'jpeg' else None,
        'image_shape': list(image_shape),
        # 0: the paper's resize_size squares; > 0: small images kept at their own size.
        'crop_padding': int(config.crop_padding),
        'resize_size': None if config.crop_padding > 0 else int(config.resize_size),
        'examples_per_shard': per_shard,
        'source': _source_summary(sources),
    }


def _source_summary(sources: dict) -> dict:
    """Per split, the number of source examples and a digest of their file names (where they
    have names). Shard k holds source examples [k * per, (k + 1) * per): were images added,
    removed or renamed since, a resumed preparation would mix shards of two different lists."""
    summary = {}
    for split, source in sources.items():
        digest = None
        if source.names is not None:
            digest = hashlib.sha1('\0'.join(source.names).encode()).hexdigest()
        summary[split] = {'examples': source.num_examples, 'names_sha1': digest}
    return summary


def _source_change(there: dict | None, now: dict) -> str:
    """How the source differs from the one a preparation was made from, in words."""
    changes = []
    for split in sorted(set(there or {}) | set(now)):
        old, new = (there or {}).get(split), now.get(split)
        if old is None or new is None:
            changes.append(
                f'{split}: {"not there" if old is None else "there"} then, '
                f'{"not there" if new is None else "there"} now'
            )
        elif old['examples'] != new['examples']:
            changes.append(f'{split}: {old["examples"]} examples then, {new["examples"]} now')
        elif old != new:
            changes.append(f'{split}: other file names')
    return '; '.join(changes)


def _check_out(out: str, params: dict) -> None:
    """Refuses an --out that holds something else, or this tool's output with other settings."""
    if not os.path.isdir(out):
        if os.path.exists(out):
            raise PrepareError(f'--out {out} is a file; name a folder (new or prepared before).')
        return
    for name in (HEADER, MARKER):
        path = os.path.join(out, name)
        if os.path.exists(path):
            existing = prepared_files.read_json(path)
            mine = {k: existing.get(k) for k in params}
            if mine['source'] != params['source'] and all(
                mine[k] == params[k] for k in params if k != 'source'
            ):
                raise PrepareError(
                    f'--out {out} was prepared from {params["dataset"]} before its source '
                    f'changed ({_source_change(mine["source"], params["source"])}): its shards '
                    f'no longer match the source. Prepare into a new folder (or delete {out}).'
                )
            if mine != params:
                differ = ', '.join(
                    f'{k}: {mine[k]!r} there, {params[k]!r} now'
                    for k in params
                    if mine[k] != params[k]
                )
                raise PrepareError(
                    f'--out {out} holds a preparation with other settings ({differ}). Use a new '
                    'folder, or the same settings to resume it.'
                )
            return
    # A marker's temporary file alone: a first run killed while it wrote the marker.
    lock_files = {workdir_lock.LOCK_NAME, MARKER + '.tmp'}
    if {
        n for n in os.listdir(out) if not fnmatch.fnmatch(n, workdir_lock.PRIVATE_PATTERN)
    } - lock_files:
        raise PrepareError(
            f'--out {out} is not empty and holds no prepared set ({HEADER} or {MARKER}): '
            'refusing to write into it. Name a new or empty folder.'
        )


def _source_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config the source is read with: corrupt images are skipped (and named), never fatal,
    and the whole training split is written (the run holds its validation images out)."""
    config = datasets.complete_config(config)
    with config.unlocked():
        config.skip_corrupt_images = True
        config.validation_examples = 0
    return config


def _base_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with the crop as large as the base image, so a "crop" at (0, 0) is all of it."""
    base = config.copy_and_resolve_references()
    with base.unlocked():
        base.image_size = base.resize_size
    return base


def _stored_shape(config, source) -> tuple[int, int, int]:
    from alexnet_jax import preprocessing

    if config.crop_padding > 0:  # small images keep their own (single) size
        h, w = preprocessing.source_base_size(config, source)
        p = config.crop_padding
        return (h - 2 * p, w - 2 * p, source.channels)
    return (config.resize_size, config.resize_size, source.channels)


def _encoded(config, source, lo: int, hi: int, image_format: str, quality: int):
    """tf.data of (index, stored bytes, label) for source examples [lo, hi), in order; examples
    that fail to decode are dropped (the caller names them from the gaps in the indices)."""
    import tensorflow as tf

    from alexnet_jax import preprocessing

    base = _base_config(config)

    def store(index, ex):
        image = ex['image']
        if config.crop_padding > 0:
            if image.dtype != tf.uint8:
                image = tf.io.decode_image(image, channels=source.channels, expand_animations=False)
        else:
            image = preprocessing.make_crops(
                image, [[0, 0]], [False], base, channels=source.channels, jpeg=source.jpeg
            )[0]
        data = tf.io.encode_jpeg(image, quality=quality) if image_format == 'jpeg' else image
        return index, data, ex['label']

    if source.lookup is not None:
        ds = tf.data.Dataset.range(lo, hi).map(lambda i: (i, source.lookup(i)))
    else:
        ds = source.records.enumerate().skip(lo).take(hi - lo)
    ds = ds.map(store, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.ignore_errors().prefetch(64)


def _describe(source, index: int, split: str) -> str:
    if source.names is not None:
        return source.names[index]
    return f'{split} example {index}'


def _write_shards(
    config, source, split: str, todo: list[int], params: dict, out: str, tick
) -> list[str]:
    """Writes the shards `todo` of `split`; returns the names of images that failed to decode."""
    per, n = params['examples_per_shard'], source.num_examples
    failed: list[str] = []
    runs: list[list[int]] = []
    for k in todo:  # consecutive shards share one pass over the source
        if runs and runs[-1][-1] == k - 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    for run in runs:
        lo, hi = run[0] * per, min((run[-1] + 1) * per, n)
        stream = _encoded(config, source, lo, hi, params['format'], params['quality'])
        failed += _write_run(
            stream.as_numpy_iterator(), source, split, run, lo, hi, params, out, tick
        )
    return failed


def _write_run(
    stream: Iterator, source, split: str, run: list[int], lo: int, hi: int, params, out, tick
) -> list[str]:
    """Writes shards `run` (source examples [lo, hi)) from `stream`, naming the gaps."""
    per = params['examples_per_shard']
    failed: list[str] = []
    expected, pending, writer = lo, None, None
    try:
        for k in run:
            writer = prepared_files.ShardWriter(out, split, k, params['format'])
            end = min((k + 1) * per, hi)
            while expected < end:
                if pending is None:
                    pending = next(stream, None)
                index = hi if pending is None else int(pending[0])
                while expected < min(index, end):  # a gap: those examples failed to decode
                    name = _describe(source, expected, split)
                    log.warning('Skipped %s: it cannot be decoded.', name)
                    writer.skipped.append(name)
                    failed.append(name)
                    expected += 1
                    tick()
                if index >= end:  # the next example belongs to a later shard
                    break
                _, data, label = pending
                writer.add(data if isinstance(data, bytes) else data.tobytes(), label)
                pending, expected = None, expected + 1
                tick()
            writer.finish()
            writer = None
    except OSError as e:
        if writer is not None:
            writer.abort()
        raise _disk_error(e, out) from None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return failed


def _disk_error(error: OSError, out: str) -> PrepareError:
    finished = len([f for f in os.listdir(out) if f.endswith('.json') and '-' in f])
    what = {
        errno.ENOSPC: 'the disk is full',
        errno.EROFS: 'the file system is read-only',
        errno.EACCES: 'permission denied',
        errno.EDQUOT: 'the disk quota is exceeded',
    }.get(error.errno, error.strerror or str(error))
    return PrepareError(
        f'Cannot write to {out}: {what} ({getattr(error, "filename", None) or out}). The '
        f'{finished} finished shards are kept; make room (or fix the permissions) and rerun the '
        'same command to continue.'
    )


def prepare(
    config: ml_collections.ConfigDict,
    out: str,
    *,
    image_format: str = 'raw',
    quality: int = 90,
    examples_per_shard: int = 5000,
    progress: bool = True,
) -> prepared_files.Header:
    """Writes (or finishes) the prepared set of `config`'s dataset at `out`; returns its header."""
    if config.dataset not in SOURCES:
        raise PrepareError(
            f'prepare reads one of {", ".join(SOURCES)}; config.dataset is {config.dataset!r}.'
        )
    if image_format not in prepared_files.FORMATS:
        raise PrepareError(f'--format must be raw or jpeg, not {image_format!r}.')
    if not 1 <= quality <= 100 or examples_per_shard < 1:
        raise PrepareError('--quality must be in 1..100 and --examples_per_shard at least 1.')
    config = _source_config(config)
    dataset = datasets.get(config)
    info = dataset.info()
    sources = {'train': dataset.source('train')}
    try:
        sources['eval'] = dataset.source('test')
    except ValueError as e:  # an image folder without val/: a training set only
        log.warning('No evaluation split prepared: %s', e)
    shape = _stored_shape(config, sources['train'])
    params = _params(config, image_format, quality, examples_per_shard, shape, sources)
    _check_out(out, params)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise PrepareError(
            f'Cannot create --out {out}: {e.strerror}. Name a folder you can write.'
        ) from None
    lock = workdir_lock.WorkdirLock(out)  # one preparation per folder at a time
    try:
        lock.acquire()
    except WorkdirLockedError as e:
        raise PrepareError(f'Another preparation is writing {out}: {e}') from None
    except OSError as e:
        raise _disk_error(e, out) from None
    try:
        return _prepare_locked(config, out, params, sources, info.class_names, progress, lock)
    finally:
        lock.release()


def _prepare_locked(config, out, params, sources, classes, progress, lock) -> prepared_files.Header:
    from tqdm import tqdm

    image_format, examples_per_shard = params['format'], params['examples_per_shard']
    try:
        if not os.path.exists(os.path.join(out, HEADER)):
            prepared_files.write_json(os.path.join(out, MARKER), params)
    except OSError as e:
        raise _disk_error(e, out) from None
    todo = {}
    for split, source in sources.items():
        shards = -(-source.num_examples // examples_per_shard)
        todo[split] = [
            k
            for k in range(shards)
            if prepared_files.finished_record(out, split, k, image_format) is None
        ]
    remaining = sum(
        min((k + 1) * examples_per_shard, sources[s].num_examples) - k * examples_per_shard
        for s, ks in todo.items()
        for k in ks
    )
    if not remaining and os.path.exists(os.path.join(out, HEADER)):
        log.info('%s is already prepared: nothing to do.', out)
        return prepared_files.read_header(out)
    with tqdm(
        total=remaining, unit='img', desc=f'prepare {config.dataset}', disable=not progress
    ) as bar:

        def tick() -> None:
            bar.update(1)
            lock.heartbeat()

        for split, source in sources.items():
            _write_shards(config, source, split, todo[split], params, out, tick)
    return _write_header(out, params, classes, sources)


def _write_header(
    out: str, params: dict, classes: list[str], sources: dict
) -> prepared_files.Header:
    splits = {}
    for split, source in sources.items():
        shards = -(-source.num_examples // params['examples_per_shard'])
        records = [
            prepared_files.finished_record(out, split, k, params['format']) for k in range(shards)
        ]
        if any(r is None for r in records):
            raise PreparedError(f'A shard of {split} in {out} did not finish; rerun to finish it.')
        skipped = list(source.skipped_names) + [name for r in records for name in r['skipped']]
        splits[split] = {
            'count': sum(r['count'] for r in records),
            'skipped': skipped,
            'shards': records,
        }
    try:
        prepared_files.write_header(out, params, classes, splits)
        if os.path.exists(os.path.join(out, MARKER)):
            os.remove(os.path.join(out, MARKER))
    except OSError as e:
        raise _disk_error(e, out) from None
    for split, value in splits.items():
        if value['skipped']:
            log.warning(
                '%s: %d images could not be decoded and were skipped (listed in %s).',
                split,
                len(value['skipped']),
                os.path.join(out, HEADER),
            )
    return prepared_files.read_header(out)


def verify(out: str) -> list[str]:
    """The files of the prepared set at `out` (images, labels, offsets) whose CRC-32 differs
    from the header's, or that are missing."""
    header = prepared_files.read_header(out)
    bad = []
    for split in header.splits.values():
        for record in split['shards']:
            expected = {record['stem'] + '.images': record['crc32']}
            for name, crc in record.get('arrays_crc32', {}).items():
                expected[f'{record["stem"]}.{name}.npy'] = crc
            for name, crc in expected.items():
                path = os.path.join(out, name)
                if not os.path.exists(path) or prepared_files.file_crc32(path) != crc:
                    bad.append(path)
    return bad


def main(argv: list[str]) -> None:
    from absl import app, flags

    from alexnet_jax import cli, runtime

    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    runtime.configure()
    cli.quiet_libraries()
    logging.getLogger('alexnet_jax').setLevel(logging.INFO)
    f = flags.FLAGS
    if not f.verify and f.config is None:
        raise app.UsageError('--config is required (the dataset to prepare); --verify needs none.')
    try:
        if f.verify:
            bad = verify(f.out)
            if bad:
                sys.exit('error: checksum mismatch in ' + ', '.join(bad) + ': prepare them again.')
            print(f'{f.out}: every shard matches its checksum.')
            return
        header = prepare(
            f.config,
            f.out,
            image_format=f.format,
            quality=f.quality,
            examples_per_shard=f.examples_per_shard,
        )
    except (PrepareError, PreparedError, FileNotFoundError, ValueError) as error:
        sys.exit(f'error: {error}')
    counts = ', '.join(f'{s} {header.count(s):,}' for s in header.splits)
    print(f'{f.out}: {header.dataset} as {header.format} {header.image_shape}: {counts} images.')


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file('config', None, 'Config file of the dataset (configs/*.py).')
    flags.DEFINE_string('out', None, 'Folder to write the prepared set to (new, or to resume).')
    flags.DEFINE_enum('format', 'raw', list(prepared_files.FORMATS), 'raw pixels or JPEG.')
    flags.DEFINE_integer('quality', 90, 'JPEG quality (--format=jpeg).')
    flags.DEFINE_integer('examples_per_shard', 5000, 'Images per shard file.')
    flags.DEFINE_bool('verify', False, 'Check every shard of --out against its checksum; no write.')
    flags.mark_flags_as_required(['out'])


def run() -> None:
    """The console script's entry point."""
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == '__main__':
    run()
