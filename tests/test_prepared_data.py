"""The prepared format (issue 16) read back: host slices, resume, device crops, training, errors.

Fashion-MNIST is prepared once for the module; every check compares against an independent
reference: the tfds arrays, numpy crops at the documented offsets, the stream positions the
format promises (global batch t holds positions [t * B, (t + 1) * B)), or an uninterrupted run.
"""

import os
import shutil
import sys

import jax
import numpy as np
import pytest

from alexnet_jax import data_types, input_pipeline, prepared_files, steps, train, trained
from alexnet_jax.data_types import Stats
from alexnet_jax.device_preprocessing import device_crops, device_preprocess, example_keys
from alexnet_jax.prepare import prepare
from alexnet_jax.prepared_data import PositionIndex, Prepared
from alexnet_jax.prepared_files import PreparedError
from configs import default, fashion_mnist

N_TRAIN, N_EVAL, PAD, SIZE = 60_000, 10_000, 2, 28


def _config(root: str, data_dir: str, **overrides):
    c = fashion_mnist.get_config()
    c.dataset = 'prepared'
    c.dataset_path = str(root)
    c.data_dir = data_dir
    c.input_threads = 2
    # The stream over the whole stored split (test_validation_split holds images out).
    c.validation_examples = 0
    c.train_clean_examples = 0
    for key, value in overrides.items():
        c[key] = value
    return c


@pytest.fixture(scope='module')
def prepared(tmp_path_factory, fashion_mnist_data_dir):
    """(folder, data_dir): Fashion-MNIST prepared once, raw, in shards of 7000 images."""
    out = tmp_path_factory.mktemp('prepared') / 'fashion'
    config = fashion_mnist.get_config()
    config.data_dir = fashion_mnist_data_dir
    prepare(config, str(out), examples_per_shard=7000, progress=False)
    return str(out), fashion_mnist_data_dir


@pytest.fixture(scope='module')
def reference(fashion_mnist_data_dir):
    """The tfds arrays in tfds order (the order prepare writes): split -> (images, labels)."""
    import tensorflow_datasets as tfds

    out = {}
    for split in ('train', 'test'):
        ds = tfds.load('fashion_mnist', split=split, data_dir=fashion_mnist_data_dir, batch_size=-1)
        arrays = tfds.as_numpy(ds)
        out[split] = (arrays['image'], arrays['label'].astype(np.int32))
    return out


def _take(iterator, n: int) -> list[dict]:
    batches = [next(iterator) for _ in range(n)]
    iterator.close()  # the reader's files and threads
    return batches


def _flat(batch: dict) -> dict:
    """[devices, per_device, ...] -> [host_batch, ...]."""
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}


def _stream(config, steps_: int, *, start: int = 0, host: int = 0, hosts: int = 1, devices=1):
    it = input_pipeline.create_train_iter(
        config,
        local_device_count=devices,
        start_step=start,
        process_index=host,
        process_count=hosts,
    )
    return [_flat(b) for b in _take(it, steps_)]


def _check_images(batch: dict, reference, seed: int = 0) -> np.ndarray:
    """Asserts each example is the tfds example its position maps to; returns the indices."""
    images, labels = reference
    indices = PositionIndex(seed, N_TRAIN)(batch['position'].astype(np.int64))
    np.testing.assert_array_equal(batch['image'], images[indices])
    np.testing.assert_array_equal(batch['label'], labels[indices])
    return indices


def _rows(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each (image, label) as one sortable row of bytes, for multiset comparisons."""
    flat = np.concatenate([images.reshape(len(images), -1), labels[:, None].astype(np.uint8)], 1)
    flat = np.ascontiguousarray(flat)
    return np.sort(flat.view(np.dtype((np.void, flat.shape[1]))).ravel())


# --- 1. per-host slices ---


def test_hosts_split_each_global_batch_and_cover_the_epoch_once(prepared, reference):
    # 6400 a step: steps 0-8 lie in epoch 0, step 9 crosses into epoch 1 (positions 60000+).
    batch, num_steps = 6400, 10
    config = _config(*prepared, batch_size=batch)
    one = _stream(config, num_steps)
    for t, b in enumerate(one):
        np.testing.assert_array_equal(b['position'], np.arange(t * batch, (t + 1) * batch))
    # Epoch 0 is the training split once, as a multiset of (image, label) against tfds.
    images = np.concatenate([b['image'] for b in one])
    labels = np.concatenate([b['label'] for b in one])
    assert np.array_equal(_rows(images[:N_TRAIN], labels[:N_TRAIN]), _rows(*reference['train']))
    indices = np.concatenate([_check_images(b, reference['train']) for b in one])
    np.testing.assert_array_equal(np.sort(indices[:N_TRAIN]), np.arange(N_TRAIN))
    assert len(np.unique(indices[N_TRAIN:])) == len(indices) - N_TRAIN  # epoch 1's head
    for hosts in (2, 4):
        per_host = [
            _stream(config, num_steps, host=h, hosts=hosts, devices=2) for h in range(hosts)
        ]
        for t in range(num_steps):
            parts = [per_host[h][t] for h in range(hosts)]
            seen = [PositionIndex(0, N_TRAIN)(p['position'].astype(np.int64)) for p in parts]
            for h, part in enumerate(parts):
                assert len(part['label']) == batch // hosts
                lo = t * batch + h * batch // hosts  # host h's contiguous slice
                np.testing.assert_array_equal(part['position'], np.arange(lo, lo + len(seen[h])))
            if (t + 1) * batch <= N_TRAIN:  # within one epoch: no example read twice
                assert len(np.unique(np.concatenate(seen))) == batch
            for key in one[t]:  # the hosts' slices, in order, are the one-host batch
                joined = np.concatenate([p[key] for p in parts])
                np.testing.assert_array_equal(joined, one[t][key], err_msg=f'{hosts} {t} {key}')


# --- 2. resume and order ---


def test_resumed_stream_continues_the_uninterrupted_one_and_epochs_are_permutations(
    prepared, reference
):
    batch = 6400  # epoch 1 starts inside step 9 and ends inside step 18
    config = _config(*prepared, batch_size=batch)
    full = _stream(config, 19, devices=2)
    for start in (3, 8, 9):
        resumed = _stream(config, 3, start=start, devices=2)
        for t, b in enumerate(resumed, start):
            for key in b:
                np.testing.assert_array_equal(b[key], full[t][key], err_msg=f'{start} {t} {key}')
    # A resumed host of two continues its slice of the same stream.
    host1 = _stream(config, 2, start=9, host=1, hosts=2)
    for t, b in enumerate(host1, 9):
        for key in b:
            np.testing.assert_array_equal(b[key], full[t][key][batch // 2 :])
    indices = np.concatenate([_check_images(b, reference['train']) for b in full])
    epochs = [indices[:N_TRAIN], indices[N_TRAIN : 2 * N_TRAIN]]
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), np.arange(N_TRAIN))
    images = np.concatenate([b['image'] for b in full])[N_TRAIN : 2 * N_TRAIN]
    labels = np.concatenate([b['label'] for b in full])[N_TRAIN : 2 * N_TRAIN]
    assert np.array_equal(_rows(images, labels), _rows(*reference['train']))  # epoch 1, too
    assert (epochs[0] != epochs[1]).mean() > 0.99  # a fresh shuffle each epoch
    assert (epochs[0][:1000] != np.arange(1000)).mean() > 0.99  # shuffled at all
    other = _stream(_config(*prepared, batch_size=batch, seed=1), 1, devices=2)[0]
    _check_images(other, reference['train'], seed=1)
    assert (other['label'] != full[0]['label']).mean() > 0.5
    assert not np.array_equal(other['image'], full[0]['image'])
    np.testing.assert_array_equal(other['position'], full[0]['position'])


# --- 3. crops, flips and colour noise on the device ---


def _stats(base: int, channels: int = 1) -> Stats:
    return Stats(
        np.zeros((base, base, channels), np.float32),
        np.zeros(channels, np.float32),
        np.ones(channels, np.float32),
        np.ones(channels, np.float32),
        np.eye(channels, dtype=np.float32),
    )


def _on_device(config, batch: dict, *, train: bool, stats: Stats):
    """device_preprocess's output, and device_crops's crop_yx and flip, for one device."""

    @jax.jit
    def run(b):
        out = device_preprocess(b, None, stats, config, train=train)
        keys = example_keys(b['position'], config.seed) if train else None
        crops = device_crops(b, config, keys=keys)
        return out, crops['crop_yx'], crops['flip']

    arrays = {k: batch[k] for k in ('image', 'position')}
    return [np.asarray(x) for x in run(arrays)]


def _numpy_crop(image: np.ndarray, pad: int, yx, flip: bool, size: int) -> np.ndarray:
    padded = np.pad(image, [(pad, pad), (pad, pad), (0, 0)])
    crop = padded[yx[0] : yx[0] + size, yx[1] : yx[1] + size]
    return crop[:, ::-1] if flip else crop


def test_training_crops_and_flips_are_numpy_crops_keyed_on_the_position(prepared):
    config = _config(*prepared, batch_size=6400, normalization='none', random_crop=True)
    batch = _stream(config, 1)[0]
    stats = _stats(SIZE + 2 * PAD)
    out, yx, flip = _on_device(config, batch, train=True, stats=stats)
    assert out.shape == (6400, SIZE, SIZE, 1) and out.dtype == np.float32
    for i in range(0, 6400, 97):
        want = _numpy_crop(batch['image'][i], PAD, yx[i], flip[i], SIZE)
        np.testing.assert_array_equal(out[i], want, err_msg=str(i))
    # Offsets cover 0..2p on each axis, about half the crops are mirrored.
    assert set(yx[:, 0].tolist()) == set(range(2 * PAD + 1)) == set(yx[:, 1].tolist())
    assert 0.45 < flip.mean() < 0.55
    # Same positions in other slots (and on another device's shard): the same crops.
    order = np.random.default_rng(0).permutation(6400)[:512]
    shuffled = {k: v[order] for k, v in batch.items()}
    out2, yx2, flip2 = _on_device(config, shuffled, train=True, stats=stats)
    np.testing.assert_array_equal(yx2, yx[order])
    np.testing.assert_array_equal(flip2, flip[order])
    np.testing.assert_array_equal(out2, out[order])
    two = jax.pmap(
        lambda b: device_preprocess(b, None, stats, config, train=True),
        devices=jax.local_devices()[:2],
    )({k: shuffled[k].reshape((2, 256) + shuffled[k].shape[1:]) for k in ('image', 'position')})
    np.testing.assert_array_equal(np.asarray(two).reshape(out2.shape), out2)  # on two devices
    # Other positions: other crops (keyed on the position, not the slot).
    moved = {**shuffled, 'position': shuffled['position'] + 100_000}
    _, yx3, flip3 = _on_device(config, moved, train=True, stats=stats)
    assert (yx3 != yx2).any(axis=1).mean() > 0.5 and (flip3 != flip2).any()
    # random_crop False: the centre, mirrored as before.
    centre = config.copy_and_resolve_references()
    centre.random_crop = False
    out4, yx4, flip4 = _on_device(centre, batch, train=True, stats=stats)
    assert (yx4 == PAD).all()
    np.testing.assert_array_equal(flip4, flip)
    for i in range(0, 6400, 211):
        np.testing.assert_array_equal(
            out4[i], _numpy_crop(batch['image'][i], PAD, (2, 2), flip[i], SIZE)
        )


def test_colour_noise_is_one_shift_per_example_keyed_on_the_position(prepared):
    config = _config(*prepared, batch_size=512, normalization='none', pca_noise_std=0.1)
    batch = _stream(config, 1)[0]
    stats = _stats(SIZE + 2 * PAD)  # eigenvalue 1, eigenvector 1: the shift is 255 * alpha
    out, yx, flip = _on_device(config, batch, train=True, stats=stats)
    plain = np.stack(
        [_numpy_crop(batch['image'][i], PAD, yx[i], flip[i], SIZE) for i in range(512)]
    ).astype(np.float32)
    shift = (out - plain).reshape(512, -1)
    np.testing.assert_allclose(shift, shift[:, :1].repeat(shift.shape[1], 1), atol=1e-3)
    alpha = shift[:, 0] / 255.0
    assert 0.07 < alpha.std() < 0.13 and abs(alpha.mean()) < 0.02  # N(0, 0.1)
    reversed_ = {k: v[::-1] for k, v in batch.items()}
    out_r, _, _ = _on_device(config, reversed_, train=True, stats=stats)
    np.testing.assert_allclose(out_r[::-1], out, atol=1e-4)


@pytest.mark.parametrize('crops', [1, 10])
def test_eval_crops_are_numpy_crops_at_the_eval_offsets(prepared, reference, crops):
    config = _config(*prepared, eval_crops=crops, eval_batch_size=2000, normalization='none')
    it = input_pipeline.create_eval_iter(config, local_device_count=1)
    batch = _flat(next(it))
    it.close()
    images, labels = reference['test']
    np.testing.assert_array_equal(batch['position'], np.arange(2000))
    np.testing.assert_array_equal(batch['image'], images[:2000])
    np.testing.assert_array_equal(batch['label'], labels[:2000])
    stats = _stats(SIZE + 2 * PAD)
    out, yx, flip = _on_device(config, batch, train=False, stats=stats)
    offsets, flips = data_types.eval_offsets((SIZE + 2 * PAD,) * 2, SIZE, crops)
    want = np.stack(
        [
            np.stack(
                [_numpy_crop(im, PAD, o, f, SIZE) for o, f in zip(offsets, flips, strict=True)]
            )
            for im in images[:2000]
        ]
    )
    if crops == 1:
        want = want[:, 0]
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(
        yx.reshape(2000, crops, 2), np.broadcast_to(offsets, (2000, crops, 2))
    )
    np.testing.assert_array_equal(flip.reshape(2000, crops), np.broadcast_to(flips, (2000, crops)))


def test_eval_hosts_read_each_image_once_in_equal_numbers_of_batches(prepared, reference):
    config = _config(*prepared, eval_batch_size=3 * 2 * 600, normalization='none')
    seen, counts = [], []
    for host in range(3):
        it = input_pipeline.create_eval_iter(
            config, local_device_count=2, process_index=host, process_count=3
        )
        batches = [_flat(b) for b in it]
        counts.append(len(batches))
        for b in batches:
            assert not b['image'][~b['mask']].any()  # padding is blank and masked out
            seen.append({k: b[k][b['mask']] for k in ('image', 'label')})
    assert len(set(counts)) == 1  # every host runs the same number of eval steps
    images, labels = reference['test']
    # Each host's share is contiguous, so in host order the split comes back in order.
    np.testing.assert_array_equal(np.concatenate([s['image'] for s in seen]), images)
    np.testing.assert_array_equal(np.concatenate([s['label'] for s in seen]), labels)


@pytest.mark.parametrize(('train_', 'crops'), [(True, 1), (False, 10)])
def test_the_mean_image_is_cropped_and_mirrored_with_each_crop(prepared, train_, crops):
    config = _config(*prepared, batch_size=256, normalization='mean_image', eval_crops=crops)
    batch = _stream(config, 1)[0]
    base = SIZE + 2 * PAD
    mean = np.random.default_rng(1).uniform(0, 255, (base, base, 1)).astype(np.float32)
    stats = _stats(base)._replace(mean_image=mean)
    out, yx, flip = _on_device(config, batch, train=train_, stats=stats)
    yx, flip = yx.reshape(256, crops, 2), flip.reshape(256, crops)
    out = out.reshape(256, crops, SIZE, SIZE, 1)
    for i in range(0, 256, 17):
        for k in range(crops):
            image = _numpy_crop(batch['image'][i], PAD, yx[i, k], flip[i, k], SIZE)
            m = _numpy_crop(mean, 0, yx[i, k], flip[i, k], SIZE)
            np.testing.assert_allclose(out[i, k], image - m, atol=1e-4)


def test_227_crops_of_256_base_images():
    config = default.get_config()
    config.normalization, config.pca_noise_std = 'none', 0.0
    rng = np.random.default_rng(0)
    batch = {
        'image': rng.integers(0, 256, (64, 256, 256, 3), dtype=np.uint8),
        'position': np.arange(1000, 1064, dtype=np.uint32),
    }
    stats = _stats(256, 3)
    out, yx, flip = _on_device(config, batch, train=True, stats=stats)
    assert out.shape == (64, 227, 227, 3)
    assert yx.min() >= 0 and yx.max() <= 29 and len(np.unique(yx)) > 10
    assert 0 < flip.sum() < 64
    for i in range(64):
        np.testing.assert_array_equal(
            out[i], _numpy_crop(batch['image'][i], 0, yx[i], flip[i], 227)
        )
    for crops in (1, 10):
        config.eval_crops = crops
        out, _, _ = _on_device(config, batch, train=False, stats=stats)
        offsets, flips = data_types.eval_offsets((256, 256), 227, crops)
        for i in (0, 63):
            got = out[i] if crops == 10 else out[i][None]
            for k, (o, f) in enumerate(zip(offsets, flips, strict=True)):
                np.testing.assert_array_equal(got[k], _numpy_crop(batch['image'][i], 0, o, f, 227))


# --- 4. training from a prepared set, exact resume, evaluation ---


def _train_config(prepared, **overrides):
    fields = dict(
        batch_size=32,
        num_train_steps=6,
        lr_schedule='constant',
        learning_rate=0.01,
        random_crop=True,
        pca_noise_std=0.1,
        eval_every_steps=1000,
        checkpoint_every_steps=1000,
        log_every_steps=2,
        eval_num_examples=None,
        eval_batch_size=1000,
    )
    return _config(*prepared, **{**fields, **overrides})


# Recorded (with its time) when a program is read from the persistent compilation cache.
CACHE_HIT_EVENT = '/jax/compilation_cache/cache_retrieval_time_sec'


def _counting_compiles(monkeypatch) -> tuple[list[int], object]:
    """Patches steps.pmap_steps so that each train-step call records the XLA compilations it
    caused (compiled, or read from the tests' on-disk cache); returns (that list, the listener
    to unregister)."""
    compiles: list[str] = []
    per_call: list[int] = []

    def listener(event, *_, **__):
        if 'backend_compile' in event or event == CACHE_HIT_EVENT:
            compiles.append(event)

    real = steps.pmap_steps

    def pmap_steps(*args, **kwargs):
        p_train, p_eval = real(*args, **kwargs)

        def counted(*step_args):
            before = len(compiles)
            result = p_train(*step_args)
            per_call.append(len(compiles) - before)
            return result

        return counted, p_eval

    monkeypatch.setattr(steps, 'pmap_steps', pmap_steps)
    jax.monitoring.register_event_duration_secs_listener(listener)
    return per_call, listener


def _eval_tail(root: str, out) -> str:
    """A copy of the prepared set at `root` (links) whose evaluation split is its last shard."""
    out.mkdir()
    for name in os.listdir(root):
        if name != prepared_files.HEADER:
            os.symlink(os.path.join(root, name), out / name)
    header = prepared_files.read_json(os.path.join(root, prepared_files.HEADER))
    last = header['splits']['eval']['shards'][-1]
    header['splits']['eval'].update(count=last['count'], shards=[last])
    prepared_files.write_json(str(out / prepared_files.HEADER), header)
    return str(out)


def _params(workdir, config, step: int | None = None):
    state = trained.load_trained_state(config, str(workdir), step)
    return int(state.step), jax.tree.leaves(jax.device_get(state.params))


def test_training_from_a_prepared_set_resumes_exactly_and_evaluates_each_image_once(
    prepared, tmp_path, monkeypatch
):
    assert jax.local_device_count() >= 2
    per_call, listener = _counting_compiles(monkeypatch)
    try:
        whole = train.train_and_evaluate(_train_config(prepared), str(tmp_path / 'whole'))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert whole['step'] == 6 and np.isfinite(whole['train_loss'])
    assert len(per_call) == 6 and per_call[0] >= 1
    assert per_call[1:] == [0] * 5, f'the train step recompiled: {per_call}'
    assert whole['eval_count'] == N_EVAL  # centre crop, each image once
    # Stopped after step 3, resumed to 6 ending with a ten-crop evaluation: on a copy of the set
    # whose evaluation split is its last shard (3000 images, so that ten crops stay quick).
    tail = _eval_tail(prepared[0], tmp_path / 'tail')
    resumed_dir = tmp_path / 'resumed'
    stop = _train_config(prepared, num_train_steps=3, dataset_path=tail)
    stopped = train.train_and_evaluate(stop, str(resumed_dir))
    assert stopped['step'] == 3 and stopped['eval_count'] == 3000
    ten = _train_config(prepared, eval_crops=10, dataset_path=tail)
    resumed = train.train_and_evaluate(ten, str(resumed_dir))
    assert resumed['step'] == 6 and resumed['eval_count'] == 3000
    step, params = _params(resumed_dir, _train_config(prepared))
    ref_step, ref_params = _params(tmp_path / 'whole', _train_config(prepared))
    assert step == ref_step == 6
    for a, b in zip(params, ref_params, strict=True):
        np.testing.assert_array_equal(a, b)
    # The run moved the parameters away from step 3's (the resume trained, not just loaded).
    _, at_3 = _params(resumed_dir, _train_config(prepared), step=3)
    assert any(not np.array_equal(a, b) for a, b in zip(at_3, params, strict=True))


# --- 5. two processes of one device = one process of two devices ---


def test_two_processes_train_on_a_prepared_set_like_one_process_with_two_devices(
    prepared, tmp_path
):
    from alexnet_jax import dataset_stats
    from tests.test_multihost import _free_port, _run_all
    from tests.test_train import ROOT

    root, data_dir = prepared
    # The statistics, cached once here rather than computed by both processes at once.
    dataset_stats.load_stats(_config(root, data_dir))
    driver = os.path.join(ROOT, 'tests', 'multihost_driver.py')
    one, two = tmp_path / 'one.npz', tmp_path / 'two.npz'
    _run_all([[sys.executable, driver, str(one), '0', '1', '0', root, data_dir]], devices=2)
    port = _free_port()
    _run_all(
        [
            [sys.executable, driver, str(two), str(i), '2', str(port), root, data_dir]
            for i in range(2)
        ],
        devices=1,
    )
    a, b = np.load(one), np.load(two)
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 10
    assert a['losses'].shape == (3,) and len(set(a['losses'].tolist())) == 3
    for key in a.files:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)


# --- 6. sets that do not fit, are missing or damaged ---


@pytest.mark.parametrize(
    ('overrides', 'names'),
    [
        ({'num_classes': 5}, ['10 classes', 'num_classes = 5']),
        ({'crop_padding': 0}, ['crop_padding = 2', 'crop_padding = 0']),
        ({'crop_padding': 0, 'resize_size': 40}, ['crop_padding = 2', 'crop_padding = 0']),
        ({'image_size': 40}, ['28x28', 'image_size = 40']),
    ],
)
def test_a_set_that_does_not_fit_the_config_is_refused_naming_both(prepared, overrides, names):
    config = _config(*prepared, **overrides)
    for attempt in (
        lambda: Prepared(config).info(),
        lambda: next(input_pipeline.create_train_iter(config, local_device_count=1)),
    ):
        with pytest.raises(PreparedError) as error:
            attempt()
        for name in [prepared[0], *names]:
            assert name in str(error.value)


def test_a_missing_set_says_how_to_make_one(tmp_path, fashion_mnist_data_dir):
    with pytest.raises(PreparedError, match='set config.dataset_path'):
        Prepared(_config(None, fashion_mnist_data_dir)).info()
    with pytest.raises(PreparedError, match='no prepared set') as error:
        Prepared(_config(tmp_path, fashion_mnist_data_dir)).info()
    assert 'prepared.json' in str(error.value) and 'alexnet_jax.prepare' in str(error.value)


@pytest.mark.parametrize('split', ['train', 'eval'])
def test_a_truncated_shard_fails_naming_the_file_when_the_stream_opens(prepared, tmp_path, split):
    root = tmp_path / 'cut'
    root.mkdir()
    victim = f'{split}-00001.images'
    for name in os.listdir(prepared[0]):
        if name != victim:
            os.symlink(os.path.join(prepared[0], name), root / name)
    shutil.copyfile(os.path.join(prepared[0], victim), root / victim)
    with open(root / victim, 'r+b') as f:
        f.truncate(os.path.getsize(root / victim) - SIZE * SIZE)
    config = _config(root, prepared[1], batch_size=64, eval_batch_size=64)
    assert Prepared(config).info().num_train == N_TRAIN  # the header is intact
    if split == 'train':
        stream = input_pipeline.create_train_iter(config, local_device_count=1)
    else:
        stream = input_pipeline.create_eval_iter(config, local_device_count=1)
    with pytest.raises(PreparedError, match='truncated') as error:
        next(stream)
    assert str(root / victim) in str(error.value)


def test_reader_threads_default_to_the_cores_also_without_sched_getaffinity(prepared, monkeypatch):
    from alexnet_jax import prepared_data

    assert prepared_data.threads(_config(*prepared, input_threads=3)) == 3
    config = _config(*prepared, input_threads=0)
    assert prepared_data.threads(config) == len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, 'sched_getaffinity')  # as on macOS
    monkeypatch.setattr(os, 'cpu_count', lambda: 5)
    assert prepared_data.threads(config) == 5
    batch = _stream(_config(*prepared, batch_size=64, input_threads=0), 1)[0]
    assert batch['image'].shape == (64, SIZE, SIZE, 1)


def test_statistics_of_a_prepared_set_equal_the_tf_data_paths(prepared):
    """The `dataset_stats` computation over the prepared base images (numpy, zero-padded on
    the host) against the same computation through the tfds source and tf.data."""
    from alexnet_jax import dataset_stats

    root, data_dir = prepared
    ours, count = dataset_stats.compute_stats(_config(root, data_dir), max_images=3000)
    tfds_config = fashion_mnist.get_config()
    tfds_config.data_dir = data_dir
    theirs, their_count = dataset_stats.compute_stats(tfds_config, max_images=3000)
    assert count == their_count == 3000
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def _tiny_set(root, images: list[bytes], shape, image_format: str, eval_count: int) -> None:
    """A prepared set written with the format's own writer: `images` as the training split,
    the first `eval_count` of them as the evaluation split."""
    splits = {}
    for split, chosen in (('train', images), ('eval', images[:eval_count])):
        writer = prepared_files.ShardWriter(str(root), split, 0, image_format)
        for i, data in enumerate(chosen):
            writer.add(data, i % 10)
        splits[split] = {'count': len(chosen), 'skipped': [], 'shards': [writer.finish()]}
    params = {
        'format_version': prepared_files.FORMAT_VERSION,
        'dataset': 'tiny',
        'format': image_format,
        'image_shape': list(shape),
        'crop_padding': 2,
    }
    prepared_files.write_header(str(root), params, [str(c) for c in range(10)], splits)


def test_a_damaged_jpeg_in_a_shard_fails_naming_the_shard(tmp_path):
    import simplejpeg

    rng = np.random.default_rng(0)
    good = [
        simplejpeg.encode_jpeg(rng.integers(0, 255, (28, 28, 1), np.uint8), colorspace='gray')
        for _ in range(3)
    ]
    bad = good[1][:20] + bytes(len(good[1]) - 20)  # same length, the entropy-coded data zeroed
    _tiny_set(tmp_path, [good[0], bad, good[2]], (28, 28, 1), 'jpeg', 3)
    reader = prepared_files.ShardReader(prepared_files.read_header(str(tmp_path)), 'train')
    out = np.zeros((3, 28, 28, 1), np.uint8)
    reader.read([0, 2], out)  # the good ones decode: the reference is simplejpeg itself
    np.testing.assert_array_equal(out[1], simplejpeg.decode_jpeg(good[2], colorspace='gray'))
    with pytest.raises(PreparedError) as error:
        reader.read([1], out)
    assert 'train-00000.images' in str(error.value) and '--verify' in str(error.value)
    reader.close()


def test_a_host_without_eval_images_yields_only_masked_batches(tmp_path, fashion_mnist_data_dir):
    """Three eval images over four hosts: one host reads none (host i reads [3i//4, 3(i+1)//4));
    every host yields the same number of batches, and only real images are unmasked."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (28, 28, 1), np.uint8) for _ in range(8)]
    _tiny_set(tmp_path, [im.tobytes() for im in images], (28, 28, 1), 'raw', 3)
    config = _config(tmp_path, fashion_mnist_data_dir, batch_size=8, eval_batch_size=8)
    seen = []
    for host in range(4):
        batches = list(
            input_pipeline.create_eval_iter(
                config, local_device_count=2, process_index=host, process_count=4
            )
        )
        assert len(batches) == 1
        mask = batches[0]['mask'].reshape(-1)
        seen += [batches[0]['image'].reshape(-1, 28, 28, 1)[mask]]
        assert mask.sum() == 3 * (host + 1) // 4 - 3 * host // 4
    np.testing.assert_array_equal(np.concatenate(seen), np.stack(images[:3]))
