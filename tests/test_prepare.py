"""`python -m alexnet_jax.prepare`: what it stores, how it resumes, and what it refuses.

References are independent of the writer: tfds's own arrays for Fashion-MNIST, the tf.data
path's crops (`preprocessing.make_crops`) of the image files for an image folder, PIL's
decoder for the JPEG format, and an uninterrupted preparation for one that was killed.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import prepare, prepared_files, preprocessing
from alexnet_jax.prepare import PrepareError
from configs import default, fashion_mnist

ROOT = Path(__file__).resolve().parent.parent
FASHION_PER_SHARD = 7000  # 9 training shards, the last one short
MANY_PER_SHARD = 4  # 60 + 10 shards of the `many` folder: a kill leaves most unfinished
# (split, class, file name, height, width): sizes that are not squares, one odd, one exact.
FOLDER_IMAGES = (
    ('train', 'ant', '0.jpg', 300, 400),
    ('train', 'ant', '1.jpg', 257, 300),
    ('train', 'bee', '0.jpg', 400, 300),
    ('train', 'bee', '2.jpg', 256, 256),
    ('val', 'ant', '0.jpg', 320, 330),
    ('val', 'bee', '0.jpg', 260, 500),
)
TRUNCATED = ('train', 'ant', 'half.jpg')  # a valid header, its body cut short
NOT_AN_IMAGE = ('train', 'bee', '1.jpg')  # fails the header check


def _smooth_image(height: int, width: int, seed: int) -> Image.Image:
    """Smooth random content (random colours on a coarse grid, interpolated), as photos are."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


def _fashion_config(data_dir: str) -> ml_collections.ConfigDict:
    config = fashion_mnist.get_config()
    config.data_dir = data_dir
    return config


def _folder_config(root: Path, **overrides) -> ml_collections.ConfigDict:
    config = default.get_config()
    fields = dict(
        dataset='imagefolder',
        dataset_path=str(root),
        data_dir=str(root) + '_tfds',
        num_classes=2,
        crop_padding=0,
        resize_size=256,
        image_size=227,
    )
    for key, value in {**fields, **overrides}.items():
        config[key] = value
    return config


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'alexnet_jax.prepare', *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _data_files(out: Path) -> list[str]:
    """The names of the shard files whose bytes must be identical between two preparations."""
    return sorted(p.name for p in out.iterdir() if p.name.endswith(('.images', '.labels.npy')))


def _stamps(out: Path, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """(inode, mtime in ns) of each of `names`: a file rewritten since has other ones."""
    return {n: ((st := os.stat(out / n)).st_ino, st.st_mtime_ns) for n in names}


def _shard_files(out: Path, stem: str) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(stem + '.')]


def _assert_same_set(out: Path, reference: Path) -> None:
    """`out` holds byte for byte the shards of `reference`, and the same header."""
    assert _data_files(out) == _data_files(reference)
    for name in _data_files(reference):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    got = prepared_files.read_json(str(out / prepared_files.HEADER))
    want = prepared_files.read_json(str(reference / prepared_files.HEADER))
    assert got == want  # counts, skipped names and every shard's CRC-32
    for split in got['splits'].values():
        for record in split['shards']:
            crc = zlib.crc32((out / (record['stem'] + '.images')).read_bytes())
            assert crc == record['crc32'], record['stem']
    assert not [p.name for p in out.iterdir() if p.name.endswith('.tmp')]
    assert not (out / prepared_files.MARKER).exists()


def _read_all(out: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every image and label of `split`, through the reader."""
    header = prepared_files.read_header(str(out))
    reader = prepared_files.ShardReader(header, split)
    try:
        images = np.zeros((reader.num_examples, *header.image_shape), np.uint8)
        reader.read(np.arange(reader.num_examples), images)
        return images, reader.labels.copy()
    finally:
        reader.close()


@contextlib.contextmanager
def _mounted(target: Path, *commands: list[str]) -> Iterator[Path]:
    """Runs the mount `commands` on `target` (skips the test where that is not allowed), and
    unmounts it whatever happens."""
    if os.geteuid() != 0:
        pytest.skip('mounting a file system needs root')
    target.mkdir(parents=True, exist_ok=True)
    mounted = False
    try:
        for command in commands:
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f'cannot mount here: {" ".join(command)}: {result.stderr.strip()}')
            mounted = True
        yield target
    finally:
        if mounted:
            subprocess.run(['umount', str(target)], check=True)


# --- Fixtures: one preparation of each source, shared by the tests ---


@pytest.fixture(scope='module')
def fashion(fashion_mnist_data_dir, tmp_path_factory) -> tuple[Path, ml_collections.ConfigDict]:
    """Fashion-MNIST prepared raw, uninterrupted; returns (its folder, the config)."""
    out = tmp_path_factory.mktemp('fashion') / 'prepared'
    config = _fashion_config(fashion_mnist_data_dir)
    prepare.prepare(config, str(out), examples_per_shard=FASHION_PER_SHARD, progress=False)
    return out, config


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    """An image folder of JPEGs of several sizes, one truncated and one that is no image."""
    root = tmp_path_factory.mktemp('folder')
    for seed, (split, cls, name, h, w) in enumerate(FOLDER_IMAGES):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        _smooth_image(h, w, seed).save(root / split / cls / name, quality=95)
    encoded = io.BytesIO()
    _smooth_image(300, 300, 99).save(encoded, 'JPEG', quality=95)
    data = encoded.getvalue()
    (root.joinpath(*TRUNCATED)).write_bytes(data[: len(data) // 2])
    (root.joinpath(*NOT_AN_IMAGE)).write_bytes(b'not a JPEG at all ' * 20)
    return root


@pytest.fixture(scope='module')
def folder_raw(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('folder_raw') / 'prepared'
    prepare.prepare(_folder_config(folder), str(out), examples_per_shard=2, progress=False)
    return out


# --- 1. Fashion-MNIST: tfds's own arrays ---


def test_fashion_mnist_stores_the_tfds_arrays(fashion, fashion_mnist_data_dir):
    import tensorflow_datasets as tfds

    out, _ = fashion
    header = prepared_files.read_header(str(out))
    builder = tfds.builder('fashion_mnist', data_dir=fashion_mnist_data_dir)
    assert header.dataset == 'fashion_mnist' and header.format == 'raw'
    assert header.image_shape == (28, 28, 1)
    assert header.classes == list(builder.info.features['label'].names)
    rng = np.random.default_rng(0)
    for split, source_split in (('train', 'train'), ('eval', 'test')):
        arrays = tfds.as_numpy(builder.as_dataset(split=source_split, batch_size=-1))
        n = len(arrays['label'])
        assert n == builder.info.splits[source_split].num_examples
        assert header.count(split) == n and header.splits[split]['skipped'] == []
        # The shard files themselves, concatenated: the images in tfds's order.
        stems = [r['stem'] for r in header.splits[split]['shards']]
        assert len(stems) == -(-n // FASHION_PER_SHARD)
        stored = b''.join((out / f'{s}.images').read_bytes() for s in stems)
        assert stored == np.ascontiguousarray(arrays['image'], np.uint8).tobytes()
        labels = np.concatenate([np.load(out / f'{s}.labels.npy') for s in stems])
        np.testing.assert_array_equal(labels, arrays['label'])
        # The reader, at random indices across shards.
        reader = prepared_files.ShardReader(header, split)
        try:
            indices = rng.choice(n, 500, replace=False)
            got = np.zeros((len(indices), 28, 28, 1), np.uint8)
            reader.read(indices, got)
            np.testing.assert_array_equal(got, arrays['image'][indices])
            np.testing.assert_array_equal(reader.labels[indices], arrays['label'][indices])
        finally:
            reader.close()


# --- 2. An image folder, raw: the tf.data path's base images ---


def _good_files(root: Path, split: str) -> list[tuple[Path, int]]:
    """The decodable files of `split` in the folder's order (class, then name), with labels."""
    classes = sorted({cls for _, cls, *_ in FOLDER_IMAGES})
    files = sorted((cls, name) for s, cls, name, *_ in FOLDER_IMAGES if s == split)
    return [(root / split / cls / name, classes.index(cls)) for cls, name in files]


def _tf_crop(path: Path, yx: tuple[int, int], size: int) -> np.ndarray:
    """The crop at `yx` of side `size` that the tf.data path takes from the file at `path`."""
    import tensorflow as tf

    config = _folder_config(path.parents[2], image_size=size)
    crops = preprocessing.make_crops(
        tf.io.read_file(str(path)), [list(yx)], [False], config, channels=3, jpeg=True
    )
    return crops.numpy()[0]


def test_image_folder_raw_holds_the_base_images_and_names_the_corrupt_files(folder, folder_raw):
    header = prepared_files.read_header(str(folder_raw))
    assert header.image_shape == (256, 256, 3) and header.classes == ['ant', 'bee']
    corrupt = {str(folder.joinpath(*TRUNCATED)), str(folder.joinpath(*NOT_AN_IMAGE))}
    assert set(header.splits['train']['skipped']) == corrupt
    assert len(header.splits['train']['skipped']) == 2
    assert header.splits['eval']['skipped'] == []
    for split, folder_split in (('train', 'train'), ('eval', 'val')):
        files = _good_files(folder, folder_split)
        assert header.count(split) == len(files)
        images, labels = _read_all(folder_raw, split)
        assert labels.tolist() == [label for _, label in files]
        for image, (path, _) in zip(images, files, strict=True):
            np.testing.assert_array_equal(image, _tf_crop(path, (0, 0), 256), err_msg=str(path))
    # The training path's 227 crop at an offset is the same crop of the stored image.
    images, _ = _read_all(folder_raw, 'train')
    path = _good_files(folder, 'train')[0][0]  # 300x400: the square is not the whole image
    np.testing.assert_array_equal(
        images[0][12 : 12 + 227, 20 : 20 + 227], _tf_crop(path, (12, 20), 227)
    )


# --- 3. The JPEG format ---


def test_jpeg_format_is_close_to_raw_and_its_offsets_frame_each_file(folder, folder_raw, tmp_path):
    out = tmp_path / 'jpeg'
    header = prepare.prepare(
        _folder_config(folder),
        str(out),
        image_format='jpeg',
        quality=90,
        examples_per_shard=2,
        progress=False,
    )
    assert header.format == 'jpeg' and header.quality == 90
    raw = prepared_files.read_header(str(folder_raw))
    for split in ('train', 'eval'):
        assert header.splits[split]['skipped'] == raw.splits[split]['skipped']
        want, want_labels = _read_all(folder_raw, split)
        decoded = []
        for record in header.splits[split]['shards']:
            data = (out / (record['stem'] + '.images')).read_bytes()
            offsets = np.load(out / (record['stem'] + '.offsets.npy'))
            assert len(offsets) == record['count'] + 1
            assert offsets[0] == 0 and offsets[-1] == len(data) == record['bytes']
            assert (np.diff(offsets) > 0).all()
            for lo, hi in zip(offsets[:-1], offsets[1:], strict=True):
                one = data[lo:hi]
                assert one[:2] == b'\xff\xd8' and one[-2:] == b'\xff\xd9'  # SOI ... EOI
                decoded.append(np.asarray(Image.open(io.BytesIO(one)).convert('RGB')))
        decoded = np.stack(decoded)
        assert decoded.shape == want.shape
        assert np.abs(decoded.astype(int) - want).mean() < 3
        got, labels = _read_all(out, split)  # the reader's decoder
        np.testing.assert_array_equal(labels, want_labels)
        assert np.abs(got.astype(int) - want).mean() < 3


# --- 4. Resuming ---


def _folder_args(root: Path) -> list[str]:
    """The command-line flags that make `_folder_config(root)`."""
    return [
        '--config',
        'configs/default.py',
        '--config.dataset=imagefolder',
        f'--config.dataset_path={root}',
        f'--config.data_dir={root}_tfds',
        '--config.num_classes=2',
    ]


def _kill_after_first_shard(out: Path, root: Path) -> None:
    """Starts the command on the image folder `root` and SIGKILLs it once a shard finished."""
    process = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'alexnet_jax.prepare',
            *_folder_args(root),
            '--out',
            str(out),
            '--examples_per_shard',
            str(MANY_PER_SHARD),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out.is_dir() and any(out.glob('train-*.json'))):
            assert process.poll() is None, 'the command ended before finishing a shard'
            assert time.monotonic() < deadline, 'no shard finished in time'
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope='module')
def many(tmp_path_factory) -> Path:
    """An image folder of 240 + 40 JPEGs, about a second to prepare (4 ms a shard); one
    training file (example 100) cut short, one more that is no image at all."""
    root = tmp_path_factory.mktemp('many')
    for split, count in (('train', 240), ('val', 40)):
        for i in range(count):
            (root / split / 'ab'[i % 2]).mkdir(parents=True, exist_ok=True)
            image = _smooth_image(300, 300 + i % 7, seed=1000 + i + len(split))
            image.save(root / split / 'ab'[i % 2] / f'{i:03d}.jpg', quality=90)
    cut = root / 'train' / 'a' / '200.jpg'
    cut.write_bytes(cut.read_bytes()[:3000])
    (root / 'train' / 'b' / 'zzz.jpg').write_bytes(b'no image ' * 50)
    return root


def test_a_killed_preparation_resumes_to_the_same_bytes(many, tmp_path):
    config = _folder_config(many)
    reference = tmp_path / 'reference'
    prepare.prepare(config, str(reference), examples_per_shard=MANY_PER_SHARD, progress=False)
    out = tmp_path / 'killed'
    _kill_after_first_shard(out, many)
    finished = sorted(p.stem for p in out.glob('*-*.json'))
    shards = len(list(reference.glob('*-*.json')))
    assert shards == 70 and 1 <= len(finished) < shards, 'killed in the middle'
    skipped = prepared_files.read_header(str(reference)).splits['train']['skipped']
    assert sorted(skipped) == [str(many / 'train' / 'a' / '200.jpg'), str(many / 'train/b/zzz.jpg')]
    assert (out / prepared_files.MARKER).exists() and not (out / prepared_files.HEADER).exists()
    with pytest.raises(prepared_files.PreparedError, match='incomplete.*rerun'):
        prepared_files.read_header(str(out))
    kept = [n for stem in finished for n in _shard_files(out, stem)]
    before = _stamps(out, kept)
    prepare.prepare(config, str(out), examples_per_shard=MANY_PER_SHARD, progress=False)
    assert _stamps(out, kept) == before  # finished shards are not written again
    _assert_same_set(out, reference)

    # A shard's images deleted, another's cut short, a third's labels cut short: exactly
    # those three are written again.
    (out / 'train-00003.images').unlink()
    with open(out / 'eval-00001.images', 'r+b') as f:
        f.truncate(100)
    labels = out / 'train-00007.labels.npy'
    with open(labels, 'r+b') as f:
        f.truncate(labels.stat().st_size - 3)  # the last label's last bytes
    damaged = ('train-00003.', 'eval-00001.', 'train-00007.')
    untouched = [p.name for p in out.iterdir() if not p.name.startswith(damaged)]
    untouched.remove(prepared_files.HEADER)
    before = _stamps(out, untouched)
    prepare.prepare(config, str(out), examples_per_shard=MANY_PER_SHARD, progress=False)
    assert _stamps(out, untouched) == before
    _assert_same_set(out, reference)
    assert prepare.verify(str(out)) == []

    # --verify names the files with one byte flipped: an image's, and a label's.
    flipped = out / 'train-00005.images'
    with open(flipped, 'r+b') as f:
        f.seek(12_345)
        byte = f.read(1)
        f.seek(12_345)
        f.write(bytes([byte[0] ^ 0x01]))
    flipped_label = out / 'eval-00002.labels.npy'
    with open(flipped_label, 'r+b') as f:
        f.seek(-1, os.SEEK_END)  # the high byte of the last label: still a shard of 4 labels
        byte = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x01]))
    assert prepare.verify(str(out)) == [str(flipped), str(flipped_label)]
    result = _run_cli('--out', str(out), '--verify')
    assert result.returncode != 0
    assert 'checksum mismatch' in result.stderr
    assert str(flipped) in result.stderr and str(flipped_label) in result.stderr
    assert 'Traceback' not in result.stderr


# --- 5. Refusals: one error each, naming the problem and the fix ---


def test_refuses_a_folder_that_holds_something_else(folder, tmp_path):
    out = tmp_path / 'notes'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    with pytest.raises(PrepareError, match='not empty and holds no prepared set') as error:
        prepare.prepare(_folder_config(folder), str(out), progress=False)
    assert str(out) in str(error.value) and 'new or empty folder' in str(error.value)
    assert sorted(p.name for p in out.iterdir()) == ['notes.txt']
    a_file = tmp_path / 'a_file'
    a_file.write_text('mine')
    with pytest.raises(PrepareError, match='is a file; name a folder'):
        prepare.prepare(_folder_config(folder), str(a_file), progress=False)
    assert a_file.read_text() == 'mine'


def test_a_first_run_killed_while_writing_its_marker_is_resumed(folder, folder_raw, tmp_path):
    out = tmp_path / 'marker'
    out.mkdir()
    (out / (prepared_files.MARKER + '.tmp')).write_text('{"format_ver')  # cut short
    prepare.prepare(_folder_config(folder), str(out), examples_per_shard=2, progress=False)
    _assert_same_set(out, folder_raw)


def test_refuses_a_preparation_with_other_settings(folder, folder_raw):
    names = sorted(p.name for p in folder_raw.iterdir())
    stamps = _stamps(folder_raw, names)
    with pytest.raises(PrepareError, match='other settings') as error:
        prepare.prepare(
            _folder_config(folder),
            str(folder_raw),
            image_format='jpeg',
            examples_per_shard=2,
            progress=False,
        )
    message = str(error.value)
    assert "format: 'raw' there, 'jpeg' now" in message
    assert 'new folder' in message and 'same settings' in message
    assert sorted(p.name for p in folder_raw.iterdir()) == names
    assert _stamps(folder_raw, names) == stamps


def test_a_read_only_folder_is_one_error(folder, tmp_path):
    target = tmp_path / 'ro'
    bind = ['mount', '--bind', str(target), str(target)]
    read_only = ['mount', '-o', 'remount,ro,bind', str(target)]
    with _mounted(target, bind, read_only):
        with pytest.raises(PrepareError, match='read-only') as error:
            prepare.prepare(_folder_config(folder), str(target), progress=False)
        assert str(target) in str(error.value) and 'rerun' in str(error.value)
        assert list(target.iterdir()) == []


def test_a_full_disk_keeps_the_finished_shards(fashion, tmp_path):
    _, config = fashion
    target = tmp_path / 'full'
    tiny = ['mount', '-t', 'tmpfs', '-o', 'size=200k', 'tmpfs', str(target)]
    per_shard = 100  # 78 kB of images a shard: two fit, the third does not
    with _mounted(target, tiny):
        with pytest.raises(PrepareError, match='the disk is full') as error:
            prepare.prepare(config, str(target), examples_per_shard=per_shard, progress=False)
        finished = sorted(target.glob('*-*.json'))
        assert 'finished shards are kept' in str(error.value)
        assert f'{len(finished)} finished shards' in str(error.value)
        assert len(finished) >= 1
        for path in finished:
            split, index = path.stem.split('-')
            record = prepared_files.finished_record(str(target), split, int(index), 'raw')
            assert record is not None and record['count'] == per_shard
            images = target / (record['stem'] + '.images')
            assert prepared_files.file_crc32(str(images)) == record['crc32']
            labels = target / (record['stem'] + '.labels.npy')
            assert prepared_files.file_crc32(str(labels)) == record['arrays_crc32']['labels']
        assert not list(target.glob('*.tmp'))


# --- 6. The command line ---


def test_the_command_prints_one_error_line_for_a_refused_folder(folder, folder_raw):
    result = _run_cli(
        *_folder_args(folder),
        '--out',
        str(folder_raw),
        '--format',
        'jpeg',
        '--examples_per_shard',
        '2',
    )
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
    assert str(folder_raw) in errors[0] and "format: 'raw' there, 'jpeg' now" in errors[0]
    assert prepare.verify(str(folder_raw)) == []  # the set it refused is as it was


def test_refuses_to_resume_after_the_source_changed(folder, tmp_path):
    root = tmp_path / 'folder'
    shutil.copytree(folder, root)
    out = tmp_path / 'prepared'
    config = _folder_config(root)
    prepare.prepare(config, str(out), examples_per_shard=2, progress=False)
    stamps = _stamps(out, sorted(p.name for p in out.iterdir()))
    # One more training image, first in the folder's order: every later one moves on by one,
    # so the finished shards no longer hold the examples their indices name.
    _smooth_image(280, 290, 7).save(root / 'train' / 'ant' / '00.jpg', quality=95)
    with pytest.raises(PrepareError, match='changed') as error:
        prepare.prepare(config, str(out), examples_per_shard=2, progress=False)
    assert 'train: 5 examples then, 6 now' in str(error.value)
    assert str(out) in str(error.value) and 'new folder' in str(error.value)
    assert _stamps(out, sorted(p.name for p in out.iterdir())) == stamps
