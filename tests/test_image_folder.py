"""Image folders as users make them: small PNGs with crop padding, classes counted from the
folders, statistics that follow the files, empty class folders, and broken JPEGs named by path.

References are numpy (padding and slicing the PNGs' pixels, which PIL wrote) and a second
statistics pass over a copy of the folder without the changed files.
"""

import gzip
import logging
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import dataset_stats, datasets, image_folder, input_pipeline, tfds_data, train
from configs import default

CLASSES = ('ant', 'bee', 'cat', 'dog', 'eel')


def _write_pngs(root, size=(32, 32), per_class=(3, 1), classes=CLASSES, seed=0):
    """root/{train,val}/<class>/<n>.png of random pixels; returns {split: [(pixels, label)]}."""
    rng = np.random.default_rng(seed)
    images = {'train': [], 'val': []}
    for split, count in zip(('train', 'val'), per_class, strict=True):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f'{n}.png')
                images[split].append((pixels, label))
    return images


def _config(root, **overrides):
    c = default.get_config()
    fields = dict(
        dataset='imagefolder',
        dataset_path=str(root),
        data_dir=str(root) + '_tfds',
        model='small',
        image_size=32,
        crop_padding=4,
        normalization='none',
        batch_size=4,
        eval_batch_size=4,
        eval_crops=1,
        num_classes=len(CLASSES),
    )
    for key, value in {**fields, **overrides}.items():
        c[key] = value
    return c


def _padded_crop(pixels, yx, flip, pad=4, size=32):
    crop = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)))[
        yx[0] : yx[0] + size, yx[1] : yx[1] + size
    ]
    return crop[:, ::-1] if flip else crop


# --- (a) small images with crop_padding ---


def test_small_pngs_with_crop_padding_are_padded_crops_of_the_files(tmp_path):
    images = _write_pngs(tmp_path)
    config = _config(tmp_path, random_crop=True, random_flip=True)
    info = datasets.get(config).info()
    assert info.image_hw == (32, 32) and info.image_shape == (32, 32, 3)
    it = input_pipeline.create_train_iter(config, local_device_count=1)
    batches = [next(it) for _ in range(8)]
    seen, offsets = set(), set()
    for b in batches:
        for crop, label, yx, flip in zip(
            b['image'][0], b['label'][0], b['crop_yx'][0], b['flip'][0], strict=True
        ):
            matches = [
                i
                for i, (pixels, _) in enumerate(images['train'])
                if np.array_equal(crop, _padded_crop(pixels, yx, flip))
            ]
            assert len(matches) == 1, 'each crop is the padded crop of exactly one file'
            assert images['train'][matches[0]][1] == label
            seen.add(matches[0])
            offsets.add(tuple(yx))
    assert seen == set(range(len(images['train'])))  # two epochs of 15 cover every file
    assert len(offsets) > 1  # random crops, not always the centre
    got = []
    for b in input_pipeline.create_eval_iter(config, local_device_count=1):
        for crop, label in zip(
            b['image'][0][b['mask'][0]], b['label'][0][b['mask'][0]], strict=True
        ):
            got.append((crop.tobytes(), int(label)))  # the centre crop is the image itself
    assert sorted(got) == sorted((p.tobytes(), label) for p, label in images['val'])
    stats = dataset_stats.compute_stats(config)[0]
    reference = np.stack([np.pad(p, ((4, 4), (4, 4), (0, 0))) for p, _ in images['train']])
    np.testing.assert_allclose(stats.mean_image, reference.mean(0), rtol=1e-5)


def test_mixed_sizes_with_crop_padding_name_the_sizes(tmp_path):
    _write_pngs(tmp_path)
    Image.fromarray(np.zeros((28, 30, 3), np.uint8)).save(tmp_path / 'val' / 'ant' / 'odd.png')
    config = _config(tmp_path)
    assert datasets.get(config).info().image_hw is None
    with pytest.raises(ValueError, match=r'2 sizes \(HxW: 28x30, 32x32\).*crop_padding = 0'):
        next(input_pipeline.create_train_iter(config, local_device_count=1))
    with pytest.raises(ValueError, match=r'2 sizes'):
        dataset_stats.compute_stats(config)


# --- (b) num_classes from the folders ---


def test_complete_config_counts_the_class_folders(tmp_path, caplog):
    _write_pngs(tmp_path, per_class=(1, 1))
    (tmp_path / 'train' / '.ipynb_checkpoints').mkdir()  # hidden: not a class
    config = _config(tmp_path, num_classes=1000)
    with caplog.at_level(logging.INFO, logger='alexnet_jax'):
        done = datasets.complete_config(config)
    assert done.num_classes == len(os.listdir(tmp_path / 'train')) - 1 == 5
    assert config.num_classes == 1000  # a copy: the caller's config is untouched
    assert [r.getMessage() for r in caplog.records if 'num_classes' in r.getMessage()] == [
        f'imagefolder: 5 class folders in {tmp_path / "train"}: num_classes = 5.'
    ]
    assert datasets.get(done).info().class_names == list(CLASSES)
    with pytest.raises(ValueError, match='num_classes = 5'):  # without it: the old error
        datasets.get(config).info()
    for other in (default.get_config(), _config(tmp_path, dataset='synthetic', num_classes=7)):
        assert datasets.complete_config(other).to_dict() == other.to_dict()


def test_training_on_a_folder_takes_num_classes_from_it(tmp_path):
    _write_pngs(tmp_path, per_class=(2, 1))
    workdir = tmp_path / 'run'
    config = _config(
        tmp_path,
        num_classes=1000,
        num_train_steps=2,
        eval_every_steps=100,
        checkpoint_every_steps=100,
        log_every_steps=1,
        normalization='channel',
    )
    results = train.train_and_evaluate(config, str(workdir))
    assert results['step'] == 2 and results['eval_count'] == 5
    from alexnet_jax import trained

    saved = trained.config_from_workdir(str(workdir))
    assert saved.num_classes == 5
    state = trained.load_trained_state(saved, str(workdir))
    assert state.params['fc8']['kernel'].shape[-1] == 5


# --- (c) statistics cache keyed on the files ---


def test_stats_cache_follows_added_and_rewritten_images(tmp_path):
    root = tmp_path / 'folder'
    _write_pngs(root, per_class=(2, 1))
    config = _config(root, data_dir=str(tmp_path / 'tfds'))
    first = datasets.get(config).stats()
    assert datasets.get(config).stats().mean_image.tobytes() == first.mean_image.tobytes()
    # One more image: the cache must not answer with the old folder's statistics.
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(root / 'train' / 'bee' / 'new.png')
    added = datasets.get(config).stats()
    assert not np.allclose(added.mean_image, first.mean_image)
    # Reference: a second folder that always had these files, computed afresh.
    twin = tmp_path / 'twin'
    shutil.copytree(root, twin)
    fresh, count = dataset_stats.compute_stats(_config(twin))
    assert count == 11
    np.testing.assert_allclose(added.mean_image, fresh.mean_image, rtol=1e-6)
    np.testing.assert_allclose(added.channel_mean, fresh.channel_mean, rtol=1e-6)
    cache = tmp_path / 'tfds' / 'alexnet_jax_stats'
    assert len(list(cache.iterdir())) == 2
    # Rewriting a file in place (same name) changes the key too.
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / 'train' / 'bee' / 'new.png')
    rewritten = datasets.get(config).stats()
    assert len(list(cache.iterdir())) == 3
    assert rewritten.mean_image.mean() < added.mean_image.mean()


# --- (d) empty class folders ---


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    _write_pngs(tmp_path, per_class=(1, 1))
    (tmp_path / 'train' / 'fox').mkdir()
    (tmp_path / 'train' / 'fox' / 'notes.txt').write_text('not an image')
    config = _config(tmp_path)
    for call in (
        lambda: datasets.get(config).info(),
        lambda: datasets.complete_config(config),
        lambda: datasets.get(config).stats(),
    ):
        with pytest.raises(image_folder.ImageFolderError) as error:
            call()
        assert f'class folder {tmp_path / "train" / "fox"} has no images' in str(error.value)
    (tmp_path / 'train' / 'fox' / 'a.png').write_bytes(b'broken')  # all unreadable, skipped
    config = _config(tmp_path, skip_corrupt_images=True)
    with pytest.raises(image_folder.ImageFolderError, match='every image in .*fox is unreadable'):
        datasets.get(config).info()


# --- (e) a truncated JPEG in the statistics step ---


def _write_jpegs(root, per_class=3):
    rng = np.random.default_rng(1)
    for name in CLASSES[:3]:
        (root / 'train' / name).mkdir(parents=True)
        for n in range(per_class):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / 'train' / name / f'{n}.jpg', quality=90)


def test_a_truncated_jpeg_in_the_statistics_is_named_with_the_fix(tmp_path):
    root = tmp_path / 'folder'
    _write_jpegs(root)
    bad = root / 'train' / 'bee' / '1.jpg'
    data = bad.read_bytes()
    bad.write_bytes(data[: data.index(b'\xff\xda') + 300])  # cut 300 bytes into the scan data
    config = _config(root, crop_padding=0, resize_size=36, num_classes=3)
    assert len(image_folder.scan_image_folder(str(root), 'train', False).paths) == 9
    with pytest.raises(image_folder.ImageFolderError) as error:
        datasets.get(config).stats()
    message = str(error.value)
    assert f'cannot decode image {bad}' in message
    assert 'config.skip_corrupt_images=True' in message
    # Honoured: the statistics skip it, and equal those of the folder without it.
    skipping = _config(
        root, crop_padding=0, resize_size=36, num_classes=3, skip_corrupt_images=True
    )
    stats, count = dataset_stats.compute_stats(skipping)
    assert count == 8
    bad.unlink()
    reference, ref_count = dataset_stats.compute_stats(config)
    assert ref_count == 8
    np.testing.assert_allclose(stats.mean_image, reference.mean_image, rtol=1e-6)


# --- tfds datasets: offline CIFAR-10, quiet Fashion-MNIST preparation ---


def _no_download(monkeypatch):
    import tensorflow_datasets as tfds

    calls = []

    def recorded(self, *args, **kwargs):
        calls.append(kwargs.get('download_config'))
        raise ConnectionError('the test has no network')

    monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', recorded)
    return calls


def test_cifar10_without_the_archive_fails_at_once_without_downloading(tmp_path, monkeypatch):
    calls = _no_download(monkeypatch)
    config = default.get_config()
    config.dataset, config.num_classes, config.data_dir = 'cifar10', 10, str(tmp_path / 'tfds')
    with pytest.raises(FileNotFoundError) as error:
        datasets.get(config).info()
    assert calls == []  # tfds's download (minutes of retries offline) was never started
    manual = tmp_path / 'tfds' / 'downloads' / 'manual'
    for part in ('cifar-10-binary.tar.gz', str(manual), '--config.dataset_path='):
        assert part in str(error.value)
    # With the archive in config.dataset_path, tfds prepares from that folder.
    (tmp_path / 'cifar-10-binary.tar.gz').write_bytes(b'stand-in')
    config.dataset_path = str(tmp_path)
    with pytest.raises(ConnectionError):
        datasets.get(config).info()
    assert [str(c.manual_dir) for c in calls] == [str(tmp_path)]


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b''.join(d.to_bytes(4, 'big') for d in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _small_idx_folder(idx, seed):
    """Fashion-MNIST's four IDX files with 12 training and 6 test images of noise."""
    idx.mkdir()
    rng = np.random.default_rng(seed)
    for split, n in (('train', 12), ('test', 6)):
        images_name, labels_name = tfds_data.FASHION_MNIST_FILES[split]
        _write_idx(idx / images_name, rng.integers(0, 256, (n, 28, 28)))
        _write_idx(idx / labels_name, rng.integers(0, 10, (n,)))
    return idx


def test_fashion_mnist_preparation_is_quiet_and_says_so_once(tmp_path, capfd, caplog):
    idx = _small_idx_folder(tmp_path / 'idx', seed=0)
    data_dir = str(tmp_path / 'tfds')
    with caplog.at_level(logging.INFO, logger='alexnet_jax'):
        builder = tfds_data.prepare_fashion_mnist(data_dir, str(idx))
    assert builder.info.splits['train'].num_examples == 12
    out, err = capfd.readouterr()
    assert 'Downloading and preparing' not in out and 'prepared' not in out, out
    assert 'examples' not in err and 'Variant folder' not in err, err
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith('Preparing Fashion-MNIST once')
    from tensorflow_datasets.core.utils import tqdm_utils

    assert tqdm_utils._active  # the progress bars are back on for everyone else


_PREPARE_AFTER_BARRIER = """
import os, sys, time
from alexnet_jax import tfds_data
data_dir, idx, ready, go = sys.argv[1:]
open(ready, 'w').close()
while not os.path.exists(go):
    time.sleep(0.01)
builder = tfds_data.prepare_fashion_mnist(data_dir, idx)
print(builder.info.splits['train'].num_examples)
"""


def test_two_processes_preparing_fashion_mnist_at_once_both_succeed(tmp_path):
    """Two runs started together (a sweep's two chains) prepare into one data dir: one builds,
    the other waits and reads it; neither fails on the other's half-written folder."""
    idx = _small_idx_folder(tmp_path / 'idx', seed=1)
    go = tmp_path / 'go'
    procs = []
    for i in range(2):
        args = [str(tmp_path / 'tfds'), str(idx), str(tmp_path / f'ready{i}'), str(go)]
        procs.append(
            subprocess.Popen(
                [sys.executable, '-c', _PREPARE_AFTER_BARRIER, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.monotonic() + 120
    while not all((tmp_path / f'ready{i}').exists() for i in range(2)):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            raise AssertionError('a preparing process did not start: ' + procs[0].stderr.read())
        time.sleep(0.05)
    go.touch()  # both call prepare within milliseconds of each other
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-2000:]
            assert out.split() == ['12']
    finally:
        for p in procs:
            p.kill()
