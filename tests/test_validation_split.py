"""The held-out validation split and the clean training subset (issue 17, item 1).

Each dataset kind is checked against its own data read a second way: tfds's whole training
split (Fashion-MNIST), the files of an image folder, and the prepared set's source. The
validation images never reach training, are the same on every host and for every seed, and
the training run evaluates them (and the clean subset) while the test split waits for the end.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import checkpointing, datasets, input_pipeline, train
from alexnet_jax.data_types import carve_validation, split_sizes
from alexnet_jax.prepare import prepare
from configs import fashion_mnist
from tests.test_image_folder import _config as folder_config
from tests.test_image_folder import _write_pngs
from tests.test_train import ROOT, small_config

HELD_OUT = 5_000


def _rows(images: np.ndarray, labels: np.ndarray) -> set[bytes]:
    """Each (image, label) as bytes, for set comparisons."""
    flat = images.reshape(len(images), -1)
    return {row.tobytes() + bytes([label]) for row, label in zip(flat, labels, strict=True)}


def _fashion_config(data_dir: str, **overrides):
    c = fashion_mnist.get_config()
    c.data_dir = data_dir
    for key, value in overrides.items():
        c[key] = value
    return c


def _source_arrays(config, split: str, host: int = 0, hosts: int = 1):
    """A tf.data source's examples in order, decoded: (images, labels)."""
    source = datasets.get(config).source(split, process_index=host, process_count=hosts)
    ds = source.records
    if source.lookup is not None:
        import tensorflow as tf

        ds = tf.data.Dataset.range(source.num_examples).map(source.lookup)
    examples = list(ds.batch(10_000).as_numpy_iterator())
    return np.concatenate([e['image'] for e in examples]), np.concatenate(
        [e['label'] for e in examples]
    )


@pytest.fixture(scope='module')
def whole_train(fashion_mnist_data_dir):
    """tfds's whole Fashion-MNIST training split, read directly: (images, labels)."""
    import tensorflow_datasets as tfds

    ds = tfds.load('fashion_mnist', split='train', data_dir=fashion_mnist_data_dir, batch_size=-1)
    arrays = tfds.as_numpy(ds)
    return arrays['image'], arrays['label'].astype(np.int32)


def test_split_sizes_and_the_carve_partition_the_training_split():
    config = fashion_mnist.get_config()
    config.validation_examples, config.train_clean_examples = 700, 5_000
    assert split_sizes(config, 3_000) == (2_300, 700, 2_300)  # the clean subset fits in train
    training, validation = carve_validation(3_000, 700)
    assert len(validation) == 700 and len(training) == 2_300
    np.testing.assert_array_equal(np.sort(np.concatenate([training, validation])), np.arange(3000))
    assert np.all(np.diff(validation) > 0) and np.all(np.diff(training) > 0)
    # Spread over the whole split (an image folder is sorted by class), not its tail.
    assert validation.min() < 300 and validation.max() > 2_700
    np.testing.assert_array_equal(carve_validation(3_000, 700)[1], validation)  # fixed
    config.validation_examples = 3_000
    with pytest.raises(ValueError, match='validation_examples = 3000 leaves no training images'):
        split_sizes(config, 3_000)


def test_tfds_validation_is_held_out_of_training_on_every_host(fashion_mnist_data_dir, whole_train):
    config = _fashion_config(fashion_mnist_data_dir, train_clean_examples=1_000)
    images, labels = whole_train
    info = datasets.get(config).info()
    assert (info.num_train, info.num_validation, info.num_train_clean) == (55_000, HELD_OUT, 1_000)
    val_images, val_labels = _source_arrays(config, 'validation')
    # The training split's last images (tfds shuffled them when it wrote the split).
    np.testing.assert_array_equal(val_images, images[-HELD_OUT:])
    np.testing.assert_array_equal(val_labels, labels[-HELD_OUT:])
    held_out = _rows(val_images, val_labels)
    for hosts in (1, 2):
        train_parts = [_source_arrays(config, 'train', h, hosts) for h in range(hosts)]
        val_parts = [_source_arrays(config, 'validation', h, hosts) for h in range(hosts)]
        # Every host holds out the same images: its validation shares make the whole split ...
        np.testing.assert_array_equal(np.concatenate([p[0] for p in val_parts]), val_images)
        # ... and none of them is in any host's training share.
        for part_images, part_labels in train_parts:
            assert not held_out & _rows(part_images, part_labels)
        assert sum(len(p[1]) for p in train_parts) == 55_000
    clean_images, _ = _source_arrays(config, 'train_clean')
    np.testing.assert_array_equal(clean_images, images[:1_000])  # training images, fixed
    # The training stream: centre crops of the padded images (random_crop is off), some
    # mirrored; each one is a training image, none a held-out one.
    assert not config.random_crop and config.crop_padding == 2
    training = _rows(images[:-HELD_OUT], labels[:-HELD_OUT])
    batches = input_pipeline.create_train_iter(config, local_device_count=1)
    for _ in range(4):
        batch = next(batches)
        for image, label, flip in zip(
            batch['image'][0], batch['label'][0], batch['flip'][0], strict=True
        ):
            original = image[:, ::-1] if flip else image
            assert _rows(original[None], np.array([label])) <= training


def test_image_folder_validation_is_a_fixed_random_subset_of_train(tmp_path):
    _write_pngs(tmp_path, per_class=(8, 1))  # 5 classes x 8 training images, sorted by class
    config = folder_config(tmp_path, validation_examples=10, train_clean_examples=4)
    dataset = datasets.get(config)
    info = dataset.info()
    assert (info.num_train, info.num_validation, info.num_train_clean) == (30, 10, 4)
    names = {split: dataset.source(split).names for split in ('train', 'validation')}
    assert not set(names['train']) & set(names['validation'])
    assert len(set(names['train']) | set(names['validation'])) == 40
    classes = {name.split('/')[-2] for name in names['validation']}
    assert len(classes) >= 3, classes  # spread over the classes, not the last folders
    assert dataset.source('train_clean').names == names['train'][:4]
    for hosts in (2, 3):
        shares = [
            dataset.source('validation', process_index=h, process_count=hosts).names
            for h in range(hosts)
        ]
        assert sum(shares, ()) == names['validation']
    config.seed = 7  # another seed holds out the same images
    assert datasets.get(config).source('validation').names == names['validation']


def test_prepared_validation_is_the_source_datasets(tmp_path, fashion_mnist_data_dir, whole_train):
    out = tmp_path / 'prepared'
    prepare(
        _fashion_config(fashion_mnist_data_dir), str(out), examples_per_shard=20_000, progress=False
    )
    config = _fashion_config(
        fashion_mnist_data_dir, dataset='prepared', dataset_path=str(out), input_threads=2
    )
    info = datasets.get(config).info()
    assert (info.num_train, info.num_validation) == (55_000, HELD_OUT)  # the whole split written
    images, labels = whole_train
    chunks = list(datasets.get(config).source('validation').eval_chunks())
    np.testing.assert_array_equal(
        np.concatenate([c['image'] for c in chunks])[..., :1], images[-HELD_OUT:]
    )
    np.testing.assert_array_equal(np.concatenate([c['label'] for c in chunks]), labels[-HELD_OUT:])
    held_out = _rows(images[-HELD_OUT:], labels[-HELD_OUT:])
    config.batch_size = 5_000
    it = input_pipeline.create_train_iter(config, local_device_count=1)
    seen = []
    for _ in range(11):  # one epoch of 55,000
        batch = next(it)
        seen.append((batch['image'][0], batch['label'][0]))
    it.close()
    stream_images = np.concatenate([s[0] for s in seen])
    stream_labels = np.concatenate([s[1] for s in seen])
    assert not held_out & _rows(stream_images, stream_labels)
    assert _rows(stream_images, stream_labels) == _rows(images[:-HELD_OUT], labels[:-HELD_OUT])


def test_training_evaluates_validation_and_clean_train_and_tests_once_at_the_end(tmp_path):
    """The run's own evaluations, then the evaluate command on its last checkpoint."""
    config = small_config(
        num_train_steps=8, eval_every_steps=4, validation_examples=40, train_clean_examples=24
    )
    results = train.train_and_evaluate(config, str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    evals = [r for r in rows if any(k.endswith('_count') for k in r)]
    periodic, final = evals[0], evals[-1]
    assert periodic['step'] == 4 and final['step'] == 8
    assert periodic['val_count'] == 40 and periodic['train_clean_count'] == 24
    assert 'eval_top1_error' not in periodic  # the test split waits for the end
    assert final['eval_count'] == 50 and final['val_count'] == 40
    for key in ('eval_top1_error', 'val_top1_error', 'train_clean_top1_error'):
        assert key in results and 0.0 <= results[key] <= 1.0
    # The best checkpoint is ranked by the validation error the run wrote.
    ckpt = checkpointing.Checkpointer(str(tmp_path), config, read_only=True)
    try:
        assert ckpt.manager.best_step() in (4, 8)
        best = ckpt.manager.metrics(ckpt.manager.best_step())
        assert set(best) == {'val_top1_error'}
        by_step = {r['step']: r['val_top1_error'] for r in evals}
        assert best['val_top1_error'] == min(by_step.values())
    finally:
        ckpt.close()

    # The evaluate command, in its own process, finds the final validation error again.
    proc = subprocess.run(
        [
            sys.executable,
            '-m',
            'alexnet_jax.evaluate',
            f'--workdir={tmp_path}',
            '--split=validation',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith('step 8, 1 crop(s), 40 images: top-1 error ')
    written = json.loads((tmp_path / 'validation_step8_1crop.json').read_text())
    assert written['val_top1_error'] == pytest.approx(results['val_top1_error'], abs=1e-6)
