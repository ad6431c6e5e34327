"""The pmapped step against a second code path, and the training loop end to end."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from alexnet_jax import (
    dataset_stats,
    datasets,
    device_preprocessing,
    models,
    optim,
    parallel,
    steps,
    synthetic_data,
    train,
    trained,
)
from configs import fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(**overrides):
    """The quick-start config on synthetic data, shrunk to a few fast steps."""
    c = fashion_mnist.get_config()
    c.dataset = 'synthetic'
    c.synthetic_num_train = 256
    c.synthetic_num_eval = 50
    c.batch_size = 16
    c.num_train_steps = 6
    c.log_every_steps = 2
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 2
    c.lr_schedule = 'constant'
    c.learning_rate = 0.01
    # Evaluations read the test split, as in a run without a validation split (the held-out
    # and clean training splits: test_validation_split.py).
    c.validation_examples = 0
    c.train_clean_examples = 0
    for key, value in overrides.items():
        c[key] = value
    return c


def _state_and_batch(config, global_batch=8):
    shape = datasets.get(config).info().image_shape
    model = models.create_model(config).clone(bn_axis_name=parallel.AXIS)
    state = steps.create_train_state(config, model, shape, steps=10)
    rng = np.random.default_rng(0)
    batch = {
        'image': rng.integers(0, 256, (global_batch, *shape), dtype=np.uint8),
        'label': rng.integers(0, 10, (global_batch,), dtype=np.int32),
    }
    return state, batch


def _run_step(config, state, batch, devices):
    stats = dataset_stats.load_stats(config)
    p_train, _ = steps.pmap_steps(config, stats, devices)
    n = len(devices)
    sharded = {k: v.reshape(n, -1, *v.shape[1:]) for k, v in batch.items()}
    new_state, metrics = p_train(
        parallel.replicate(jax.device_get(state), devices),  # a copy: the step donates it
        parallel.shard(sharded, devices),
        jax.random.key(0),
    )
    return jax.device_get(new_state), jax.device_get(metrics)


def eval_by_hand(state, config, images, labels):
    """Per-example loss and rank of the true class, written plainly in float64 numpy.

    ``images`` is uint8 ``[N, H, W, C]`` or ``[N, crops, H, W, C]``: each crop normalised by the
    channel mean and std, classified by ``model.apply`` on its own, and the softmax averaged
    over the crops (Section 4.1). The rank counts the classes scored above the true one.
    """
    assert config.normalization == 'channel'
    stats = dataset_stats.load_stats(config)
    crops = images if images.ndim == 5 else images[:, None]
    x = (crops.astype(np.float32) - stats.channel_mean) / stats.channel_std
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    probs = 0.0
    for c in range(crops.shape[1]):
        logits = np.asarray(state.apply_fn(variables, x[:, c], train=False), np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = probs + e / e.sum(axis=1, keepdims=True) / crops.shape[1]
    true = probs[np.arange(len(labels)), labels]
    return -np.log(true), (probs > true[:, None]).sum(axis=1)


def synthetic_eval_split(config):
    """Every example of the synthetic evaluation split, once, straight from its source."""
    chunks = list(synthetic_data.synthetic_eval_examples(config, 0, 1))
    return {k: np.concatenate([chunk[k] for chunk in chunks]) for k in chunks[0]}


needs_two_devices = pytest.mark.skipif(
    jax.local_device_count() < 2, reason='needs XLA_FLAGS=--xla_force_host_platform_device_count'
)


@needs_two_devices
@pytest.mark.parametrize('norm', ['lrn', 'bn'])
def test_two_device_step_equals_one_device_step_on_the_same_global_batch(norm):
    # No dropout and no colour noise: their random draws differ per device by design.
    config = small_config(dropout_rate=0.0, pca_noise_std=0.0, norm=norm)
    state, batch = _state_and_batch(config)
    one, m1 = _run_step(config, state, batch, jax.local_devices()[:1])
    two, m2 = _run_step(config, state, batch, jax.local_devices()[:2])
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    for a, b in zip(
        jax.tree.leaves(one.batch_stats), jax.tree.leaves(two.batch_stats), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    for key in m1:
        np.testing.assert_allclose(m1[key], m2[key], rtol=2e-5, err_msg=key)
    assert int(one.step) == int(two.step) == 1


def test_step_matches_plain_gradient_descent_on_the_global_batch():
    """A second code path: value_and_grad of the model on the whole batch, the paper's rule."""
    config = small_config(dropout_rate=0.0, pca_noise_std=0.0, weight_decay=0.0005)
    state, batch = _state_and_batch(config)
    new_state, metrics = _run_step(config, state, batch, jax.local_devices()[:1])
    stats = dataset_stats.load_stats(config)
    images = device_preprocessing.device_preprocess(batch, None, stats, config, train=False)

    def loss_fn(params):
        logits = state.apply_fn({'params': params}, images, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    mask = optim.decay_mask(state.params, decay_biases=False)
    # First step from v = 0: w <- w - eps * (g + wd * w) for decayed leaves.
    expected = jax.tree.map(
        lambda w, g, m: w - 0.01 * (g + (0.0005 * w if m else 0.0)), state.params, grads, mask
    )
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)


def test_train_step_compiles_once():
    config = small_config()
    state, batch = _state_and_batch(config)
    stats = dataset_stats.load_stats(config)
    p_train, _ = steps.pmap_steps(config, stats)
    n = jax.local_device_count()
    batch = {k: np.repeat(v, n, axis=0).reshape(n, -1, *v.shape[1:]) for k, v in batch.items()}
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *_, **__: compiles.append(event) if 'backend_compile' in event else None
    )
    state = parallel.replicate(jax.device_get(state))
    state, _ = p_train(state, parallel.shard(batch), jax.random.key(0))
    first = len(compiles)
    for _ in range(3):
        state, _ = p_train(state, parallel.shard(batch), jax.random.key(0))
    jax.block_until_ready(state)
    assert first >= 1
    assert len(compiles) == first, 'the train step recompiled after its first call'


def test_one_device_step_updates_parameters_in_place():
    """No all-reduce on one device, and still no copy of any kernel before its update."""
    config = small_config()
    state, batch = _state_and_batch(config)
    stats = dataset_stats.load_stats(config)
    devices = jax.local_devices()[:1]
    p_train, _ = steps.pmap_steps(config, stats, devices)
    batch = {k: v[None] for k, v in batch.items()}
    state = parallel.replicate(jax.device_get(state), devices)
    hlo = p_train.lower(state, parallel.shard(batch, devices), jax.random.key(0)).compile()
    entry = hlo.as_text().split('ENTRY', 1)[1]
    kernels = {
        'f32[' + ','.join(map(str, leaf.shape)) + ']'
        for leaf in jax.tree.leaves(state.params)
        if leaf.ndim > 1
    }
    lines = entry.splitlines()
    reduced = [line.split('all-reduce(')[0] for line in lines if 'all-reduce(' in line]
    assert not [r for r in reduced if any(k in r for k in kernels)], reduced  # metrics only
    copies = [line for line in lines if ' copy(' in line and any(f'= {k}' in line for k in kernels)]
    assert not copies, copies


def test_eval_counts_every_example_once_with_a_ragged_last_batch(tmp_path):
    config = small_config(synthetic_num_eval=37, eval_batch_size=8 * jax.local_device_count())
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results['eval_count'] == 37
    # The trained net on the 37 examples by hand, unbatched: padding must not count.
    split = synthetic_eval_split(config)
    state = trained.load_trained_state(config, str(tmp_path))
    loss, rank = eval_by_hand(state, config, split['image'], split['label'])
    assert len(loss) == 37
    np.testing.assert_allclose(results['eval_loss'], loss.mean(), rtol=1e-4)
    assert results['eval_top1_error'] == pytest.approx((rank >= 1).mean())
    assert results['eval_top5_error'] == pytest.approx((rank >= 5).mean())


@pytest.mark.parametrize('num_classes', [3, 5, 10])
def test_error_counts_equal_a_plain_numpy_ranking(num_classes):
    rng = np.random.default_rng(num_classes)
    logits = rng.normal(size=(64, num_classes)).astype(np.float32)
    labels = rng.integers(0, num_classes, 64).astype(np.int32)
    mask = (rng.random(64) < 0.8).astype(np.int32)
    sums = jax.device_get(steps._classification_sums(logits, labels, mask))
    # The rank of the true class among the scores, counted by hand.
    rank = (logits > logits[np.arange(64), labels][:, None]).sum(axis=1)
    assert sums['count'] == mask.sum()
    assert sums['top1_errors'] == ((rank >= 1) * mask).sum()
    if num_classes > 5:
        assert sums['top5_errors'] == ((rank >= 5) * mask).sum()
    else:  # every label is in the top five: no top-5 error to report
        assert 'top5_errors' not in sums


def test_three_classes_train_and_report_top1_only(tmp_path):
    config = small_config(num_classes=3)
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results['step'] == 6
    state = trained.load_trained_state(config, str(tmp_path))
    split = synthetic_eval_split(config)
    _, rank = eval_by_hand(state, config, split['image'], split['label'])
    assert results['eval_top1_error'] == pytest.approx((rank >= 1).mean())
    assert 'eval_top5_error' not in results
    rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert not any('top5' in key for row in rows for key in row)


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f'{path} holds {constant}, which is not JSON')

    return json.loads(path.read_text(), parse_constant=refuse)


def test_rerunning_a_finished_run_changes_nothing(tmp_path):
    config = small_config(num_train_steps=1, log_every_steps=100)  # one step: one log window
    first = train.train_and_evaluate(config, str(tmp_path))
    results = _strict_json(tmp_path / 'results.json')  # no NaN anywhere
    assert results['train_loss'] is not None and results['images_per_sec'] is None
    files = {p: p.read_bytes() for p in (tmp_path / 'metrics.jsonl', tmp_path / 'results.json')}
    checkpoints = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())
    again = train.train_and_evaluate(config, str(tmp_path))
    assert again == first
    assert {p: p.read_bytes() for p in files} == files
    assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == checkpoints


@pytest.mark.parametrize(('limit', 'count'), [(0, None), (20, 32), (None, 50)])
def test_eval_num_examples_shortens_or_skips_evaluation(tmp_path, limit, count):
    config = small_config(eval_num_examples=limit, eval_batch_size=16)
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results['step'] == 6
    assert results.get('eval_count') == count
    rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    evals = [row for row in rows if 'eval_count' in row]
    assert len(evals) == (0 if limit == 0 else 2)  # at step 4 and at the end


def test_lines_come_by_time_as_well_as_by_steps(tmp_path):
    config = small_config(num_train_steps=6, log_every_steps=1000, log_every_seconds=1e-6)
    train.train_and_evaluate(config, str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert [row['step'] for row in rows if 'train_loss' in row] == [1, 2, 3, 4, 5, 6]


def test_the_best_checkpoint_is_known_after_a_restart(tmp_path):
    from alexnet_jax import checkpointing

    config = small_config(num_train_steps=8, eval_every_steps=1, keep_checkpoints=1)
    train.train_and_evaluate(config, str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    errors = {row['step']: row['eval_top1_error'] for row in rows if 'eval_top1_error' in row}
    best = min(errors, key=lambda step: (errors[step], -step))
    fresh = checkpointing.Checkpointer(str(tmp_path), config)  # as `evaluate --best` reads it
    try:
        assert errors[fresh.best_step()] == errors[best]
        assert fresh.best_step() in fresh.steps()  # retention kept it
    finally:
        fresh.close()


@needs_two_devices
def test_ten_crop_eval_step_averages_the_softmax_over_crops():
    """eval_step on ten different crops per image, over two devices, with padding, against
    model.apply on each crop and the softmax averaged by hand."""
    config = small_config(eval_crops=10)
    state, _ = _state_and_batch(config)
    shape = datasets.get(config).info().image_shape
    rng = np.random.default_rng(10)
    n = 12
    batch = {
        'image': rng.integers(0, 256, (n, 10, *shape), dtype=np.uint8),
        'label': rng.integers(0, 10, n).astype(np.int32),
        'mask': np.arange(n) < 9,  # the last three are padding
        'crop_yx': np.zeros((n, 10, 2), np.int32),
        'flip': np.zeros((n, 10), bool),
    }
    devices = jax.local_devices()[:2]
    _, p_eval = steps.pmap_steps(config, dataset_stats.load_stats(config), devices)
    sums = jax.device_get(
        p_eval(
            parallel.replicate(jax.device_get(state), devices),
            parallel.shard({k: v.reshape(2, -1, *v.shape[1:]) for k, v in batch.items()}, devices),
        )
    )
    loss, rank = eval_by_hand(state, config, batch['image'], batch['label'])
    mask = batch['mask']
    assert sums['count'] == 9
    np.testing.assert_allclose(sums['loss'], (loss * mask).sum(), rtol=1e-5)
    assert sums['top1_errors'] == ((rank >= 1) * mask).sum()
    assert sums['top5_errors'] == ((rank >= 5) * mask).sum()
    # The crops differ enough that the first crop alone scores otherwise: the average counts.
    one_crop, _ = eval_by_hand(state, config, batch['image'][:, 0], batch['label'])
    assert abs((one_crop * mask).sum() - (loss * mask).sum()) > 1e-3


def test_predict_probs_keeps_what_the_model_sows_per_image_and_crop():
    """The figures' fc7 through the one inference path equals model.apply's, crop by crop."""
    config = small_config()
    state, batch = _state_and_batch(config)
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    images = np.asarray(batch['image'], np.float32).reshape(4, 2, *batch['image'].shape[1:])
    probs, sown = steps.predict_probs(state.apply_fn, variables, images, sown=True)
    np.testing.assert_array_equal(probs, steps.predict_probs(state.apply_fn, variables, images))
    for crop in range(2):
        _, direct = state.apply_fn(
            variables, images[:, crop], train=False, mutable=['intermediates']
        )
        np.testing.assert_allclose(
            sown['stages'][0]['fc7'][:, crop],
            direct['intermediates']['stages'][0]['fc7'],
            rtol=1e-4,  # another batch size: XLA may sum in another order
            atol=1e-4,
        )


def test_nan_loss_stops_the_run_naming_the_step(tmp_path):
    config = small_config(learning_rate=1e12, num_train_steps=20, log_every_steps=1)
    with pytest.raises(FloatingPointError, match=r'at step \d+'):
        train.train_and_evaluate(config, str(tmp_path))


def _main(workdir, *overrides, config='configs/fashion_mnist.py', env=None):
    cmd = [sys.executable, '-m', 'alexnet_jax.main', f'--config={config}', f'--workdir={workdir}']
    return subprocess.run(
        cmd + list(overrides),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_cli_trains_on_real_fashion_mnist(tmp_path, fashion_mnist_data_dir):
    """Loss goes down on real data through the CLI; overrides reach the run; files appear."""
    workdir = tmp_path / 'run'
    proc = _main(
        workdir,
        f'--config.data_dir={fashion_mnist_data_dir}',
        '--config.num_train_steps=120',
        '--config.batch_size=64',
        '--config.log_every_steps=20',
        '--config.eval_every_steps=1000',
        '--config.learning_rate=0.03',
        '--config.eval_batch_size=1000',
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / 'results.json').read_text())
    assert results['step'] == 120
    assert results['config']['batch_size'] == 64 and results['config']['learning_rate'] == 0.03
    assert results['eval_count'] == 10_000
    assert results['eval_top1_error'] < 0.5  # 10 classes: chance is 0.9
    lines = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    losses = [line['train_loss'] for line in lines if 'train_loss' in line]
    assert losses[-1] < 0.6 * losses[0]
    assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))


@pytest.mark.parametrize(
    ('override', 'message'),
    [
        ('--config.no_such_field=1', 'no_such_field'),
        ('--config.batch_size=notanumber', 'batch_size'),
        ('--config.learning_rate=-1', 'learning_rate'),
        ('--config.model=resnet', 'resnet'),
        ('--config.num_epochs=0', 'num_epochs'),
    ],
)
def test_cli_rejects_bad_config_before_compute(tmp_path, override, message):
    proc = _main(tmp_path / 'run', override, '--config.dataset=synthetic')
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_cli_rejects_batch_not_divisible_by_devices(tmp_path):
    proc = _main(
        tmp_path / 'run',
        '--config.dataset=synthetic',
        '--config.batch_size=6',
        env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'},
    )
    assert proc.returncode != 0
    assert 'batch_size=6' in proc.stderr and '4 devices' in proc.stderr


def test_cli_rejects_unwritable_workdir(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    proc = _main(blocker / 'run', '--config.dataset=synthetic')
    assert proc.returncode != 0
    assert 'workdir' in proc.stderr


def test_cli_reports_a_diverged_loss_in_one_line(tmp_path):
    proc = _main(
        tmp_path / 'run',
        '--config.dataset=synthetic',
        '--config.synthetic_num_train=256',
        '--config.synthetic_num_eval=50',
        '--config.batch_size=16',
        '--config.learning_rate=1e12',
        '--config.num_train_steps=20',
        '--config.log_every_steps=1',
    )
    assert proc.returncode == 1
    assert 'error: The training loss or parameters became NaN or infinite' in proc.stderr
    assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (['--config=configs/nope.py'], 'error: --config configs/nope.py: no such file'),
        (
            ['--config=configs/fashion_mnist.py', '--config.lerning_rate=1'],
            'error: --config: \'lerning_rate\' Did you mean "learning_rate"',
        ),
    ],
)
def test_cli_names_a_bad_config_file_or_field_in_one_line(tmp_path, args, message):
    cmd = [sys.executable, '-m', 'alexnet_jax.main', f'--workdir={tmp_path}', *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert proc.stderr.startswith(message), proc.stderr


def test_the_command_line_module_imports_without_jax():
    """`--help` and flag errors answer at once: JAX and TensorFlow load only to train."""
    code = 'import sys, alexnet_jax.main; print(sorted({"jax", "tensorflow"} & set(sys.modules)))'
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]'
