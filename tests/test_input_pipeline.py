"""The input pipeline against independent references: raw IDX bytes parsed here, images whose
pixels encode their coordinates, TensorFlow's own resize, numpy arithmetic, and the covariance
the PCA formula of Section 4.1 implies."""

import dataclasses
import gzip
import io
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_jax import (
    data_types,
    dataset_stats,
    datasets,
    device_preprocessing,
    image_stats,
    input_pipeline,
    preprocessing,
    tfds_data,
)
from configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDX_DIR = '/usr/share/datasets/fashion-mnist'


def _config(**overrides):
    config = default.get_config()
    for key, value in overrides.items():
        config[key] = value
    return config


def _fashion(data_dir, **overrides):
    small = dict(dataset='fashion_mnist', data_dir=data_dir, num_classes=10, image_size=28)
    small.update(crop_padding=4, batch_size=32, eval_crops=1, normalization='none')
    return _config(**{**small, **overrides})


def _take(it, n):
    return [next(it) for _ in range(n)]


def _rows(images):
    """Each image as one hashable row of bytes (for multiset comparisons)."""
    flat = np.ascontiguousarray(np.asarray(images, np.uint8).reshape(len(images), -1))
    return flat.view(np.dtype((np.void, flat.shape[1]))).ravel()


def _read_idx(path):  # the test's own parser: 16/8-byte header, then uint8 pixels/labels
    with gzip.open(path, 'rb') as f:
        raw = f.read()
    if raw[3] == 3:
        n, h, w = (int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], 'big') for i in range(3))
        return np.frombuffer(raw[16:], np.uint8).reshape(n, h, w)
    return np.frombuffer(raw[8:], np.uint8)


@pytest.fixture(scope='module')
def raw_fashion():
    if not os.path.exists(os.path.join(IDX_DIR, 't10k-labels-idx1-ubyte.gz')):
        pytest.skip('apt-get install dataset-fashion-mnist')
    load = lambda name: _read_idx(os.path.join(IDX_DIR, name))
    return {
        'train': (load('train-images-idx3-ubyte.gz'), load('train-labels-idx1-ubyte.gz')),
        'test': (load('t10k-images-idx3-ubyte.gz'), load('t10k-labels-idx1-ubyte.gz')),
    }


# --- geometry, pixel by pixel ---


def _coordinate_image(h, w):
    """uint8 image whose pixel (y, x) stores y % 251, x % 251 and (y // 251) * 16 + x // 251."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y % 251, x % 251, (y // 251) * 16 + x // 251], -1).astype(np.uint8)


def _decode_coordinates(img):
    img = img.astype(int)
    return img[..., 0] + 251 * (img[..., 2] // 16), img[..., 1] + 251 * (img[..., 2] % 16)


def test_padded_crop_and_flip_pixel_by_pixel():
    config = _config(image_size=28, crop_padding=4)
    y, x = np.mgrid[0:28, 0:28]
    image = np.stack([y + 1, x + 1], -1).astype(np.uint8)  # 0 marks padding
    rng = np.random.default_rng(0)
    offsets = rng.integers(0, 9, (10, 2))
    offsets[:2] = [[0, 0], [8, 8]]
    flips = rng.random(10) < 0.5
    out = preprocessing.make_crops(tf.constant(image), offsets, flips, config, channels=2).numpy()
    for crop, (oy, ox), flip in zip(out, offsets, flips, strict=True):
        t, u = np.mgrid[0:28, 0:28]
        if flip:
            u = 27 - u
        sy, sx = oy + t - 4, ox + u - 4
        inside = (sy >= 0) & (sy < 28) & (sx >= 0) & (sx < 28)
        np.testing.assert_array_equal(crop[..., 0], np.where(inside, sy + 1, 0))
        np.testing.assert_array_equal(crop[..., 1], np.where(inside, sx + 1, 0))


@pytest.mark.parametrize('encoding', ['decoded', 'png'])
def test_resized_crop_at_scale_one_is_a_slice_of_the_centre_square(encoding):
    # 300x520: the centre square is rows 0..299, columns 110..409; resize_size 300 = no scaling.
    h, w = 300, 520
    image = _coordinate_image(h, w)
    config = _config(image_size=227, resize_size=300, crop_padding=0)
    if encoding == 'png':
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, 'PNG')
        image_t = tf.constant(buf.getvalue())
    else:
        image_t = tf.constant(image)
    offsets = np.array([[0, 0], [73, 73], [5, 60], [73, 0]])
    flips = np.array([False, True, True, False])
    out = preprocessing.make_crops(image_t, offsets, flips, config, channels=3).numpy()
    for crop, (oy, ox), flip in zip(out, offsets, flips, strict=True):
        ys, xs = _decode_coordinates(crop)
        t, u = np.mgrid[0:227, 0:227]
        if flip:
            u = 226 - u
        np.testing.assert_array_equal(ys, oy + t)
        np.testing.assert_array_equal(xs, 110 + ox + u)


def _reference_crops(decoded, offsets, flips, resize=256, crop=227):
    """Section 2 done the long way: centre square, full tf.image.resize, then numpy slicing."""
    h, w = decoded.shape[:2]
    s = min(h, w)
    square = decoded[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    base = tf.image.resize(square, [resize, resize], 'bilinear', antialias=False).numpy()
    base = np.floor(base + 0.5).astype(np.uint8)  # round half up, as the pipeline
    out = []
    for (oy, ox), flip in zip(offsets, flips, strict=True):
        c = base[oy : oy + crop, ox : ox + crop]
        out.append(c[:, ::-1] if flip else c)
    return np.stack(out)


@pytest.mark.parametrize('jpeg', [False, True])
@pytest.mark.parametrize('hw', [(375, 500), (500, 333), (180, 240), (256, 256)])
def test_resized_crops_match_full_resize_then_crop(hw, jpeg):
    rng = np.random.default_rng(hw[0])
    y, x = np.mgrid[0 : hw[0], 0 : hw[1]]
    smooth = np.stack([128 + 90 * np.sin(x / 9.0), 128 + 90 * np.cos(y / 7.0), (x + y) % 256], -1)
    image = np.clip(smooth + rng.normal(0, 25, smooth.shape), 0, 255).astype(np.uint8)
    config = _config(image_size=227, resize_size=256, crop_padding=0)
    offsets = np.concatenate([[[0, 0], [29, 29], [0, 29]], rng.integers(0, 30, (3, 2))])
    flips = np.array([False, True, False, True, False, True])
    if jpeg:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, 'JPEG', quality=90)
        source = tf.constant(buf.getvalue())
        # Full decode, with the same IDCT as the pipeline: this checks geometry, not IDCTs.
        decoded = tf.io.decode_jpeg(buf.getvalue(), channels=3, dct_method='INTEGER_FAST').numpy()
    else:
        source, decoded = tf.constant(image), image
    out = preprocessing.make_crops(source, offsets, flips, config, channels=3, jpeg=jpeg).numpy()
    np.testing.assert_array_equal(out, _reference_crops(decoded, offsets, flips))


def test_ten_crops_are_corners_centre_and_mirrors():
    image = _coordinate_image(256, 300)  # centre square: columns 22..277
    config = _config(image_size=227, resize_size=256, crop_padding=0)
    offsets, flips = preprocessing.eval_offsets((256, 256), 227, 10)
    out = preprocessing.make_crops(tf.constant(image), offsets, flips, config, channels=3).numpy()
    expected = [(0, 0), (0, 29), (29, 0), (29, 29), (14, 14)] * 2
    assert out.shape == (10, 227, 227, 3)
    for k, crop in enumerate(out):
        ys, xs = _decode_coordinates(crop)
        oy, ox = expected[k]
        t, u = np.mgrid[0:227, 0:227]
        if k >= 5:
            u = 226 - u
        np.testing.assert_array_equal(ys, oy + t)
        np.testing.assert_array_equal(xs, 22 + ox + u)
    centre, _ = preprocessing.eval_offsets((256, 256), 227, 1)
    assert centre == [[14, 14]]


def test_random_crop_params_cover_the_range():
    keys = [tf.constant([3, i], tf.int64) for i in range(400)]
    params = [
        preprocessing.random_crop_params(k, (36, 36), 28, random_crop=True, random_flip=True)
        for k in keys
    ]
    yx = np.array([p[0].numpy() for p in params])
    flips = np.array([p[1].numpy() for p in params])
    assert yx.min() == 0 and yx.max() == 8
    assert len(np.unique(yx[:, 0])) == 9 and len(np.unique(yx[:, 1])) == 9
    assert 0.4 < flips.mean() < 0.6
    yx, flip = preprocessing.random_crop_params(
        keys[0], (36, 36), 28, random_crop=False, random_flip=False
    )
    assert yx.numpy().tolist() == [4, 4] and not flip.numpy()


# --- on device ---


def _stats(c=3, base=36, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(c, c)))
    return data_types.Stats(
        rng.uniform(0, 255, (base, base, c)).astype(np.float32),
        rng.uniform(50, 150, c).astype(np.float32),
        rng.uniform(20, 80, c).astype(np.float32),
        np.array([0.3, 0.05, 0.01][:c], np.float32),
        q.astype(np.float32),
    )


def test_pca_noise_covariance_follows_the_formula():
    stats, sigma, n = _stats(), 0.1, 20_000
    config = _config(normalization='none', pca_noise_std=sigma)
    batch = {'image': jnp.zeros((n, 2, 3, 3), jnp.uint8)}
    out = np.asarray(
        device_preprocessing.device_preprocess(batch, jax.random.key(1), stats, config, train=True)
    )
    shift = out[:, 0, 0, :]
    np.testing.assert_allclose(out, np.broadcast_to(shift[:, None, None], out.shape), atol=1e-4)
    p, lam = stats.pca_eigvec.astype(np.float64), stats.pca_eigval.astype(np.float64)
    expected = 255.0**2 * p @ np.diag(lam**2 * sigma**2) @ p.T
    cov = np.cov(shift.T)
    assert np.linalg.norm(cov - expected) / np.linalg.norm(expected) < 0.05
    assert np.abs(shift.mean(0)).max() < 0.05 * np.sqrt(expected[0, 0] + expected[1, 1])
    # Independent per image; nothing at evaluation, without a key, or with std 0.
    assert abs(np.corrcoef(shift[:-1, 0], shift[1:, 0])[0, 1]) < 0.05
    for rng, train, std in [
        (jax.random.key(1), False, 0.1),
        (None, True, 0.1),
        (jax.random.key(1), True, 0.0),
    ]:
        quiet = device_preprocessing.device_preprocess(
            batch, rng, stats, _config(normalization='none', pca_noise_std=std), train=train
        )
        assert float(jnp.abs(quiet).max()) == 0.0


def test_device_preprocess_normalisation_matches_numpy():
    stats = _stats()
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    yx = rng.integers(0, 9, (4, 2)).astype(np.int32)
    flip = np.array([True, False, True, False])
    batch = {'image': image, 'crop_yx': yx, 'flip': flip}
    run = lambda **kw: np.asarray(
        device_preprocessing.device_preprocess(batch, None, stats, _config(**kw), train=False)
    )
    np.testing.assert_allclose(run(normalization='none'), image.astype(np.float32))
    np.testing.assert_allclose(
        run(normalization='channel'), (image - stats.channel_mean) / stats.channel_std, rtol=1e-5
    )
    expected = []
    for i in range(4):
        m = stats.mean_image[yx[i, 0] : yx[i, 0] + 28, yx[i, 1] : yx[i, 1] + 28]
        expected.append(image[i] - (m[:, ::-1] if flip[i] else m))
    np.testing.assert_allclose(run(normalization='mean_image'), np.stack(expected), atol=1e-4)
    # Ten crops [B, 10, ...] under jit, in bfloat16.
    ten = {
        'image': np.repeat(image[:, None], 10, 1),
        'crop_yx': np.repeat(yx[:, None], 10, 1),
        'flip': np.repeat(flip[:, None], 10, 1),
    }
    config = _config(normalization='mean_image')
    fn = jax.jit(
        lambda b: device_preprocessing.device_preprocess(
            b, None, stats, config, train=False, dtype=jnp.bfloat16
        )
    )
    out = fn(ten)
    assert out.shape == (4, 10, 28, 28, 3) and out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out[:, 7], np.float32), np.stack(expected), atol=1.0)


# --- Fashion-MNIST, real data through tfds ---


def test_fashion_mnist_through_tfds_equals_the_idx_files(fashion_mnist_data_dir, raw_fashion):
    import tensorflow_datasets as tfds

    info = datasets.get(_fashion(fashion_mnist_data_dir)).info()
    assert (info.num_train, info.num_eval, info.num_classes) == (60_000, 10_000, 10)
    assert info.image_shape == (28, 28, 1) and info.class_names[9] == 'Ankle boot'
    for split in ('train', 'test'):
        ds = tfds.load(
            'fashion_mnist',
            split=split,
            data_dir=fashion_mnist_data_dir,
            batch_size=-1,
            download=False,
        )
        got = tfds.as_numpy(ds)
        raw_images, raw_labels = raw_fashion[split]
        assert got['image'].shape == raw_images.shape + (1,)
        with_label = lambda im, lab: np.concatenate([im.reshape(len(im), -1), lab[:, None]], 1)
        assert np.array_equal(
            np.sort(_rows(with_label(got['image'], got['label'].astype(np.uint8)))),
            np.sort(_rows(with_label(raw_images, raw_labels))),
        )
    # One image, pixel by pixel: the first tfds train example is some IDX image with its label.
    first = got['image'][0, ..., 0]
    match = np.flatnonzero((raw_images == first).all(axis=(1, 2)))
    assert len(match) >= 1 and raw_labels[match[0]] == got['label'][0]


def test_fashion_train_batches_are_crops_of_training_images(fashion_mnist_data_dir, raw_fashion):
    config = _fashion(fashion_mnist_data_dir, batch_size=16)
    batch = next(input_pipeline.create_train_iter(config, local_device_count=2))
    assert batch['image'].shape == (2, 8, 28, 28, 1) and batch['image'].dtype == np.uint8
    assert batch['label'].shape == (2, 8) and batch['label'].dtype == np.int32
    assert batch['crop_yx'].shape == (2, 8, 2) and batch['flip'].shape == (2, 8)
    raw_images, raw_labels = raw_fashion['train']
    padded = np.pad(raw_images, [(0, 0), (4, 4), (4, 4)])
    for d, i in [(0, 0), (0, 5), (1, 3)]:
        (oy, ox), flip = batch['crop_yx'][d, i], batch['flip'][d, i]
        crop = batch['image'][d, i, ..., 0]
        crop = crop[:, ::-1] if flip else crop
        hits = np.flatnonzero((padded[:, oy : oy + 28, ox : ox + 28] == crop).all(axis=(1, 2)))
        assert len(hits) >= 1 and batch['label'][d, i] in raw_labels[hits]


@pytest.mark.parametrize('in_memory', [True, False])
def test_train_stream_resumes_exactly_and_host_shards_are_disjoint(
    fashion_mnist_data_dir, monkeypatch, in_memory
):
    if not in_memory:  # the TFRecord path ImageNet takes: shuffle buffer + skip of records
        records = dataclasses.replace(tfds_data.KINDS['fashion_mnist'], in_memory=False)
        monkeypatch.setitem(tfds_data.KINDS, 'fashion_mnist', records)
    # 100 hosts: 600 examples each, 64 a step, so epoch 1 starts inside step 9.
    config = _fashion(
        fashion_mnist_data_dir,
        batch_size=6400,
        random_crop=False,
        random_flip=False,
        shuffle_buffer=1000,
    )
    make = lambda start, host: input_pipeline.create_train_iter(
        config, local_device_count=1, start_step=start, process_index=host, process_count=100
    )
    full = _take(make(0, 0), 19)  # 1216 examples: two epochs
    resumed = _take(make(10, 0), 4)
    for a, b in zip(full[10:14], resumed, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    images = lambda batches: np.concatenate([b['image'].reshape(-1, 28 * 28) for b in batches])
    epoch0, epoch1 = images(full)[:600], images(full)[600:1200]
    assert len(np.unique(_rows(epoch0))) == 600  # each example once per epoch
    assert not np.array_equal(epoch0, epoch1)  # reshuffled
    assert np.array_equal(np.sort(_rows(epoch0)), np.sort(_rows(epoch1)))  # same examples
    other = images(_take(make(0, 1), 9))[:576]
    assert not {r.tobytes() for r in other} & {r.tobytes() for r in epoch0}
    with_aug = _fashion(fashion_mnist_data_dir, batch_size=32)
    a = _take(input_pipeline.create_train_iter(with_aug, local_device_count=2), 3)[2]
    b = next(input_pipeline.create_train_iter(with_aug, local_device_count=2, start_step=2))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_eval_covers_the_split_exactly_once_over_hosts(fashion_mnist_data_dir, raw_fashion):
    config = _fashion(fashion_mnist_data_dir, eval_batch_size=3 * 2 * 600)
    seen, counts = [], []
    for host in range(3):
        batches = list(
            input_pipeline.create_eval_iter(
                config, local_device_count=2, process_index=host, process_count=3
            )
        )
        counts.append(len(batches))
        for b in batches:
            assert b['image'].shape == (2, 600, 28, 28, 1) and b['mask'].shape == (2, 600)
            assert not b['image'][~b['mask']].any()
            seen.append(b['image'][b['mask']][..., 0])
    assert len(set(counts)) == 1  # every host runs the same number of steps
    seen = np.concatenate(seen)
    assert len(seen) == 10_000
    assert np.array_equal(np.sort(_rows(seen)), np.sort(_rows(raw_fashion['test'][0])))


def test_fashion_stats_match_numpy(fashion_mnist_data_dir, raw_fashion):
    stats = dataset_stats.load_stats(_fashion(fashion_mnist_data_dir))
    images = raw_fashion['train'][0].astype(np.float64)
    assert stats.mean_image.shape == (36, 36, 1)
    np.testing.assert_allclose(stats.mean_image[4:-4, 4:-4, 0], images.mean(0), atol=1e-3)
    assert not stats.mean_image[:4].any()  # zero padding
    np.testing.assert_allclose(stats.channel_mean, [images.mean()], rtol=1e-5)
    np.testing.assert_allclose(stats.channel_std, [images.std()], rtol=1e-4)
    np.testing.assert_allclose(stats.pca_eigval, [images.var() / 255.0**2], rtol=1e-4)


# --- image folders (a JPEG dataset the test writes) ---


def _colour(i):
    return np.array([30 + 25 * (i % 9), 30 + 25 * (i // 9 % 9), 200], np.uint8)


def _identify(crops):
    """The id whose colour is nearest each crop's mean colour."""
    palette = np.stack([_colour(i) for i in range(81)]).astype(float)
    means = crops.reshape(len(crops), -1, 3).mean(1)
    return np.argmin(((means[:, None] - palette[None]) ** 2).sum(-1), axis=1)


def _write_folder(root, per_class=(5, 2), classes=('cat', 'dog', 'emu')):
    """root/train/<class>/<id>.jpg (and val/): flat colours that encode the id, sizes varied."""
    ids = {'train': [], 'val': []}
    i = 0
    for split, count in zip(('train', 'val'), per_class, strict=True):
        for c, name in enumerate(classes):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for _ in range(count):
                h, w = 120 + (i * 37) % 200, 140 + (i * 53) % 220
                img = np.broadcast_to(_colour(i), (h, w, 3))
                Image.fromarray(np.ascontiguousarray(img)).save(
                    os.path.join(root, split, name, f'{i:03d}.jpg'), quality=95
                )
                ids[split].append((i, c))
                i += 1
    return ids


def _folder(root, **overrides):
    base = dict(
        dataset='imagefolder',
        dataset_path=str(root),
        num_classes=3,
        batch_size=4,
        eval_batch_size=4,
        normalization='none',
        data_dir=str(root) + '_tfds',
    )
    return _config(**{**base, **overrides})


def test_imagefolder_end_to_end_with_paper_geometry(tmp_path):
    ids = _write_folder(tmp_path)
    config = _folder(tmp_path, eval_crops=10)
    info = datasets.get(config).info()
    assert (info.num_train, info.num_eval, info.class_names) == (15, 6, ['cat', 'dog', 'emu'])
    assert info.image_shape == (227, 227, 3)
    batches = _take(input_pipeline.create_train_iter(config, local_device_count=2), 4)
    assert batches[0]['image'].shape == (2, 2, 227, 227, 3)
    images = np.concatenate([b['image'].reshape(-1, 227, 227, 3) for b in batches])
    labels = np.concatenate([b['label'].ravel() for b in batches])
    got = _identify(images)
    label_of = dict(ids['train'])
    assert sorted(got[:15]) == sorted(i for i, _ in ids['train'])  # one epoch: each once
    assert [label_of[i] for i in got] == labels.tolist()
    seen = []
    for b in input_pipeline.create_eval_iter(config, local_device_count=2):
        assert b['image'].shape == (2, 2, 10, 227, 227, 3) and b['crop_yx'].shape == (2, 2, 10, 2)
        real = b['image'][b['mask']]
        for crops, label in zip(real, b['label'][b['mask']], strict=True):
            who = _identify(crops)
            assert len(set(who)) == 1 and dict(ids['val'])[who[0]] == label
            seen.append(who[0])
    assert sorted(seen) == sorted(i for i, _ in ids['val'])


def test_imagefolder_train_shards_are_disjoint(tmp_path):
    _write_folder(tmp_path)
    config = _folder(tmp_path, image_size=28, resize_size=32, batch_size=2)
    per_host = []
    for host in range(2):  # 7 examples each (the 15th is dropped), 1 per step
        it = input_pipeline.create_train_iter(
            config, local_device_count=1, process_index=host, process_count=2
        )
        per_host.append(set(_identify(np.concatenate([b['image'][0] for b in _take(it, 7)]))))
    assert len(per_host[0]) == len(per_host[1]) == 7 and not per_host[0] & per_host[1]


def test_imagefolder_corrupt_images(tmp_path):
    _write_folder(tmp_path)
    bad = tmp_path / 'train' / 'dog' / 'broken.jpg'
    bad.write_bytes(b'this is not a jpeg')
    config = _folder(tmp_path, image_size=28, resize_size=32)
    with pytest.raises(ValueError, match='broken.jpg'):
        datasets.get(config).info()
    config.skip_corrupt_images = True
    info = datasets.get(config).info()
    assert (info.num_train, info.num_skipped) == (15, 1)
    assert next(input_pipeline.create_train_iter(config, local_device_count=1))['image'].shape == (
        1,
        4,
        28,
        28,
        3,
    )
    # A JPEG whose header parses but whose data is cut off fails at decode time, named by path.
    good = sorted((tmp_path / 'train' / 'cat').iterdir())[0]
    bad.write_bytes(good.read_bytes()[:400])
    config = _folder(tmp_path, image_size=28, resize_size=32, batch_size=16)
    with pytest.raises(ValueError, match='broken.jpg'):
        next(input_pipeline.create_train_iter(config, local_device_count=1))


def test_stats_command_on_an_image_folder(tmp_path):
    _write_folder(tmp_path, per_class=(2, 1))
    out = tmp_path / 'stats.json'
    cmd = [
        sys.executable,
        '-m',
        'alexnet_jax.dataset_stats',
        '--config',
        os.path.join(ROOT, 'configs', 'default.py'),
        '--config.dataset=imagefolder',
        f'--config.dataset_path={tmp_path}',
        '--config.resize_size=32',
        '--config.num_classes=3',
        f'--out={out}',
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    stats = dataset_stats.load_stats(_folder(tmp_path, resize_size=32, pca_stats=str(out)))
    # Reference: PIL decode, centre square, TF's bilinear resize, numpy moments.
    bases = []
    for path in sorted((tmp_path / 'train').glob('*/*.jpg')):
        img = np.asarray(Image.open(path).convert('RGB'))
        h, w = img.shape[:2]
        s = min(h, w)
        sq = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        bases.append(tf.image.resize(sq, [32, 32], 'bilinear', antialias=False).numpy())
    bases = np.stack(bases)
    np.testing.assert_allclose(stats.mean_image, bases.mean(0), atol=1.5)
    pixels = bases.reshape(-1, 3) / 255.0
    cov = np.cov(pixels.T, bias=True)
    p, lam = stats.pca_eigvec.astype(float), stats.pca_eigval.astype(float)
    np.testing.assert_allclose(p @ np.diag(lam) @ p.T, cov, atol=2e-3)
    assert np.all(np.diff(lam) <= 0)
    npz = tmp_path / 'stats.npz'
    image_stats.save_stats(stats, str(npz), num_images=6)
    with np.load(npz, allow_pickle=False) as z:
        np.testing.assert_array_equal(z['pca_eigvec'], stats.pca_eigvec)


# --- synthetic ---


def test_synthetic_batches_resume_and_eval_mask():
    config = _config(
        dataset='synthetic',
        num_classes=7,
        image_size=32,
        batch_size=8,
        eval_batch_size=8,
        synthetic_num_eval=21,
        eval_crops=1,
    )
    a = _take(input_pipeline.create_train_iter(config, local_device_count=2), 6)
    b = _take(input_pipeline.create_train_iter(config, local_device_count=2, start_step=5), 1)
    assert a[0]['image'].shape == (2, 4, 32, 32, 3) and a[0]['image'].dtype == np.uint8
    assert a[0]['label'].max() < 7
    np.testing.assert_array_equal(a[5]['image'], b[0]['image'])
    assert not np.array_equal(a[0]['image'], a[1]['image'])
    total, lengths = 0, set()
    for host in range(2):
        batches = list(
            input_pipeline.create_eval_iter(
                config, local_device_count=2, process_index=host, process_count=2
            )
        )
        lengths.add(len(batches))
        total += sum(int(b['mask'].sum()) for b in batches)
    assert total == 21 and lengths == {3}
    stats = dataset_stats.load_stats(config)
    out = device_preprocessing.device_preprocess(a[0], jax.random.key(0), stats, config, train=True)
    assert out.shape == (2, 4, 32, 32, 3)


def test_one_object_per_dataset_and_a_light_datasets_module():
    """`datasets.get` picks the object; importing `datasets` (as the config checks do) loads
    neither TensorFlow nor tfds, and no module of the data code patches `sys.modules`."""
    from alexnet_jax import image_folder, prepared_data, synthetic_data

    kinds = {
        'prepared': prepared_data.Prepared,
        'imagenet2012': tfds_data.TfdsDataset,
        'fashion_mnist': tfds_data.TfdsDataset,
        'cifar10': tfds_data.TfdsDataset,
        'imagefolder': image_folder.ImageFolder,
        'synthetic': synthetic_data.Synthetic,
    }
    assert set(kinds) == set(datasets.DATASETS)
    for name, kind in kinds.items():
        assert type(datasets.get(_config(dataset=name))) is kind
    code = (
        'import sys; import alexnet_jax; before = dict(sys.modules); '
        'from alexnet_jax import datasets; '
        "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules)); "
        'from alexnet_jax import dataset_stats, device_preprocessing, input_pipeline; '
        'print([k for k, v in before.items() if sys.modules.get(k) is not v])'
    )
    out = subprocess.run(
        [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split('\n')
    assert out[:2] == ['[]', '[]']


# --- bad input: one clear error each ---


def test_unknown_dataset_and_bad_batch_size():
    with pytest.raises(ValueError, match='imagenet2012 \\| fashion_mnist|one of'):
        datasets.get(_config(dataset='mnist')).info()
    config = _config(dataset='synthetic', batch_size=100)
    with pytest.raises(ValueError, match=r'100.*3 process.*8 local device.*multiple of 24'):
        input_pipeline.create_train_iter(
            config, local_device_count=8, process_count=3, process_index=0
        )
    with pytest.raises(ValueError, match='eval_crops must be 1 or 10'):
        preprocessing.eval_offsets((256, 256), 227, 3)


def test_imagenet_without_tars_names_the_files(tmp_path):
    config = _config(data_dir=str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'manual'))
    with pytest.raises(FileNotFoundError) as e:
        datasets.get(config).info()
    for part in ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar', str(tmp_path / 'manual')):
        assert part in str(e.value)


def test_fashion_mnist_without_files_or_network_gives_the_apt_command(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def offline(*args, **kwargs):
        raise ConnectionError('no network')

    monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', offline)
    with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
        tfds_data.prepare_fashion_mnist(str(tmp_path / 'tfds'), str(tmp_path / 'nothing'))


def test_imagefolder_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='train'):
        datasets.get(_folder(tmp_path)).info()
    (tmp_path / 'train' / 'cat').mkdir(parents=True)
    (tmp_path / 'train' / 'dog').mkdir(parents=True)
    (tmp_path / 'train' / 'emu').mkdir(parents=True)
    with pytest.raises(ValueError, match='no images'):
        datasets.get(_folder(tmp_path)).info()


def test_class_count_and_cifar_archive_errors(fashion_mnist_data_dir, tmp_path):
    with pytest.raises(ValueError, match='num_classes = 10'):
        datasets.get(_fashion(fashion_mnist_data_dir, num_classes=1000)).info()
    config = _config(
        dataset='cifar10',
        num_classes=10,
        data_dir=str(tmp_path / 'tfds'),
        dataset_path=str(tmp_path),
    )
    with pytest.raises(FileNotFoundError, match='cifar-10-binary.tar.gz'):
        datasets.get(config).info()
