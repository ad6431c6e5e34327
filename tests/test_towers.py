"""Section 3.2's two-device model parallelism against the single-device grouped `paper` model.

The full 227-pixel net, two images, ten classes: each step compiles for a few seconds on CPU, so
the expensive results are computed once per module and shared.
"""

import os
import re
import sys

if 'jax' not in sys.modules and 'device_count' not in os.environ.get('XLA_FLAGS', ''):
    # Run alone, this file still gets the 4 fake CPU devices it needs.
    os.environ['XLA_FLAGS'] = (
        os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4'
    )

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from alexnet_jax import (
    dataset_stats,
    device_preprocessing,
    models,
    optim,
    parallel,
    steps,
    towers,
)
from configs import imagenet

pytestmark = pytest.mark.skipif(
    jax.local_device_count() < 4,
    reason='needs 4 devices: XLA_FLAGS=--xla_force_host_platform_device_count=4',
)

CLASSES = 10  # fc8 stays split in two; fewer classes only make the test faster
GLOBAL_BATCH = 2


def _config():
    c = imagenet.get_config()
    c.dataset = 'synthetic'
    c.num_classes = CLASSES
    c.dropout_rate = 0.0  # random draws differ per device by design
    c.pca_noise_std = 0.0
    c.model_parallel_towers = True
    c.batch_size = GLOBAL_BATCH
    return c


def _per_replica(batch, replicas):
    return {k: v.reshape(replicas, -1, *v.shape[1:]) for k, v in batch.items()}


def _copy(tree):
    return jax.tree.map(np.array, tree)


@pytest.fixture(scope='module')
def setup():
    config = _config()
    stats = dataset_stats.load_stats(config)
    model = models.create_model(config)
    host_state = jax.device_get(steps.create_train_state(config, model, (227, 227, 3), 10))
    rng = np.random.default_rng(0)
    batch = {
        'image': rng.integers(0, 256, (GLOBAL_BATCH, 227, 227, 3), dtype=np.uint8),
        'label': rng.integers(0, CLASSES, (GLOBAL_BATCH,), dtype=np.int32),
        'mask': np.ones((GLOBAL_BATCH,), np.bool_),
    }
    # The reference: the same module on one device (create_model(config): with the towers on,
    # LRN runs within each tower's channels there too), with its own step (steps.pmap_steps).
    one = jax.local_devices()[:1]
    p_train, _ = steps.pmap_steps(config, stats, one)
    ref_state, ref_metrics = p_train(
        parallel.replicate(_copy(host_state), one),
        parallel.shard(_per_replica(batch, 1), one),
        jax.random.key(0),
    )
    return {
        'config': config,
        'stats': stats,
        'model': model,
        'host_state': host_state,
        'batch': batch,
        'ref_state': jax.device_get(ref_state),
        'ref_metrics': jax.device_get(ref_metrics),
    }


def _tower_step(setup, devices):
    placement = towers.placement(setup['config'], setup['stats'], devices)
    state = placement.place_state(_copy(setup['host_state']))
    batch = placement.place_batch(_per_replica(setup['batch'], placement.data_devices))
    new_state, metrics = placement.train_step(state, batch, jax.random.key(0))
    return placement, new_state, jax.device_get(metrics)


@pytest.fixture(scope='module')
def two_devices(setup):
    return _tower_step(setup, jax.local_devices()[:2])


def _assert_changes_close(actual, expected, before, rel=2e-2):
    """Leaf by leaf, ``actual - before`` within ``rel`` of the largest ``expected - before``.

    Why relative to the step's change and this loose: ReLU and max-pooling make the gradient
    piecewise, and on this batch a few units sit at a kink. Perturbing the single-device model's
    own weights by 1e-7 (relative) moves its conv updates by up to 0.9% of their largest entry,
    exactly as much as the tower placement's different summation order does; data-parallel
    splits agree to ~1e-5 only because they compute every convolution identically.
    """
    flat_a = jax.tree_util.tree_leaves_with_path(jax.device_get(actual))
    flat_e, flat_b = jax.tree.leaves(expected), jax.tree.leaves(before)
    assert len(flat_a) == len(flat_e) == len(flat_b)
    for (path, a), e, b in zip(flat_a, flat_e, flat_b, strict=True):
        name = jax.tree_util.keystr(path)
        assert np.shape(a) == np.shape(e), name
        change = np.abs(np.asarray(e, np.float64) - b).max()
        error = np.abs(np.asarray(a, np.float64) - e).max()
        assert error <= rel * change + 1e-7, f'{name}: {error:.3g} vs a change of {change:.3g}'


def _assert_step_matches_reference(setup, new_state, metrics):
    ref, before = setup['ref_state'], setup['host_state']
    assert int(new_state.step) == int(ref.step) == 1
    # Same parameter tree, same full shapes; the update is the single-device one.
    _assert_changes_close(new_state.params, ref.params, before.params)
    _assert_changes_close(new_state.opt_state, ref.opt_state, before.opt_state)  # momentum, lr
    assert metrics.keys() == setup['ref_metrics'].keys()
    for key, value in metrics.items():
        np.testing.assert_allclose(value, setup['ref_metrics'][key], rtol=1e-5, err_msg=key)


def test_train_step_equals_single_device_step_on_two_devices(setup, two_devices):
    placement, new_state, metrics = two_devices
    assert placement.data_devices == 1
    _assert_step_matches_reference(setup, new_state, metrics)


def test_train_step_equals_single_device_step_on_two_data_by_two_towers(setup):
    placement, new_state, metrics = _tower_step(setup, jax.local_devices()[:4])
    assert placement.data_devices == 2
    _assert_step_matches_reference(setup, new_state, metrics)
    # Gradients averaged over the data axis: both replicas hold the same parameters.
    kernel = new_state.params['fc6']['kernel']
    by_tower: dict[int, list[np.ndarray]] = {}
    for shard in kernel.addressable_shards:
        by_tower.setdefault(shard.index[-1].start, []).append(np.asarray(shard.data))
    assert len(by_tower) == 2 and all(len(v) == 2 for v in by_tower.values())
    for a, b in by_tower.values():
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope='module')
def forward(setup):
    """The tower model's forward over a 1 x 2 mesh, compiled once: (compiled, params, images)."""
    params = setup['host_state'].params
    mesh = towers.create_mesh(jax.local_devices()[:2])
    model = towers.tower_model(setup['config'])
    fn = jax.jit(
        jax.shard_map(
            lambda p, x: model.apply({'params': p}, x, train=False),
            mesh=mesh,
            in_specs=(towers.state_specs(params), PartitionSpec()),
            out_specs=PartitionSpec(),
            check_vma=False,
        )
    )
    placed = jax.device_put(params, towers.state_shardings(params, mesh))
    images = device_preprocessing.device_preprocess(
        setup['batch'], None, setup['stats'], setup['config'], train=False
    )
    return fn.lower(placed, images).compile(), placed, images


@pytest.fixture(scope='module')
def single_logits(setup, forward):
    """The single-device model's logits: with tower-local LRN (as on the towers), and without."""
    params, images = setup['host_state'].params, forward[2]
    plain_config = setup['config'].copy_and_resolve_references()
    plain_config.model_parallel_towers = False  # and so tower_local_lrn=None: off
    plain = models.create_model(plain_config)
    assert setup['model'].norm != plain.norm  # the one difference: LRN within each tower

    def single(model):
        return np.asarray(
            jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(params, images)
        )

    return single(setup['model']), single(plain)


def test_forward_equals_single_device_model(forward, single_logits):
    compiled, placed, images = forward
    logits = np.asarray(compiled(placed, images))
    per_tower_lrn, plain = single_logits
    assert logits.shape == (GLOBAL_BATCH, CLASSES)
    np.testing.assert_allclose(logits, per_tower_lrn, rtol=1e-5, atol=1e-5)
    # The unmodified single-device model normalises across the tower boundary too (four of 96
    # conv1 channels see two more neighbours): a visible but small difference at initialisation.
    np.testing.assert_allclose(logits, plain, rtol=1e-3, atol=1e-3)


def test_eval_step_equals_single_device_eval_step(setup, two_devices, single_logits):
    placement = two_devices[0]
    state = placement.place_state(setup['host_state'])
    sums = placement.eval_step(state, placement.place_batch(_per_replica(setup['batch'], 1)))
    sums = jax.device_get(sums)
    # steps.eval_step's sums, from the reference logits.
    logits, labels = single_logits[0].astype(np.float64), setup['batch']['label']
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    ranks = (probs > probs[np.arange(GLOBAL_BATCH), labels][:, None]).sum(1)
    expected = {
        'count': GLOBAL_BATCH,
        'loss': -np.log(probs[np.arange(GLOBAL_BATCH), labels]).sum(),
        'top1_errors': (ranks >= 1).sum(),
        'top5_errors': (ranks >= 5).sum(),
    }
    assert sums.keys() == expected.keys()
    for key, value in sums.items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-5, err_msg=key)


def test_activations_cross_towers_only_where_the_paper_says(forward):
    hlo = forward[0].as_text()
    ops = re.findall(
        r'= (\S+) (all-gather|all-reduce|reduce-scatter|collective-permute|all-to-all)'
        r'(?:-start)?\(',
        hlo,
    )
    shapes = [re.sub(r'\{[^}]*\}', '', shape) for shape, _ in ops]
    assert [op for _, op in ops] == ['all-gather'] * 5, ops
    b = GLOBAL_BATCH
    assert shapes == [
        f'f32[{b},13,13,256]',  # pool2 of both towers into conv3
        f'f32[{b},6,6,256]',  # pool5 into fc6
        f'f32[{b},4096]',  # fc6 into fc7
        f'f32[{b},4096]',  # fc7 into fc8
        f'f32[{b},{CLASSES}]',  # the two halves of the logits
    ]


def test_each_device_holds_only_its_towers_half(setup, two_devices):
    new_state = two_devices[1]
    full = jax.device_get(new_state)
    momentum = new_state.opt_state.inner_state[2].trace
    for tree in (new_state.params, momentum):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            shards = sorted(leaf.addressable_shards, key=lambda s: s.index[-1].start)
            assert len(shards) == 2, jax.tree_util.keystr(path)
            half = leaf.shape[-1] // 2
            for t, shard in enumerate(shards):
                assert shard.data.shape == (*leaf.shape[:-1], half), jax.tree_util.keystr(path)
                expected = np.asarray(leaf)[..., t * half : (t + 1) * half]
                np.testing.assert_array_equal(np.asarray(shard.data), expected)
    assert full.params['conv3']['kernel'].shape == (3, 3, 256, 384)
    assert new_state.params['conv3']['kernel'].addressable_shards[0].data.shape == (3, 3, 256, 192)
    assert new_state.step.sharding.is_fully_replicated


def test_state_round_trips_between_placements_without_recompiling(setup, two_devices):
    placement, new_state, _ = two_devices
    host = jax.device_get(new_state)  # what a checkpoint holds: numpy, full shapes
    # Into the data-parallel placement and back again: unchanged.
    replicated = parallel.replicate(host, jax.local_devices()[:2])
    back = jax.device_get(placement.place_state(jax.device_get(replicated)))
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(back), jax.tree.leaves(host), strict=True
    ):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    # The host edits the learning rate (plateau rule) and places the state again: same layout,
    # so the next steps reuse the compiled step.
    host = host.replace(opt_state=optim.set_learning_rate(host.opt_state, 0.001))
    batch = placement.place_batch(_per_replica(setup['batch'], 1))
    compiled = placement.train_step._cache_size()
    _, metrics = placement.train_step(placement.place_state(host), batch, jax.random.key(1))
    assert placement.train_step._cache_size() == compiled
    np.testing.assert_allclose(jax.device_get(metrics)['learning_rate'], 0.001)


@pytest.mark.parametrize('count', [1, 3])
def test_odd_device_count_is_a_clear_error(setup, count):
    with pytest.raises(ValueError, match='even number of local devices'):
        towers.placement(setup['config'], setup['stats'], jax.local_devices()[:count])


def test_odd_class_count_is_a_clear_error(setup):
    placement = towers.placement(setup['config'], setup['stats'], jax.local_devices()[:2])
    state = setup['host_state']
    params = dict(state.params, fc8={'kernel': np.zeros((4096, 5)), 'bias': np.zeros(5)})
    with pytest.raises(ValueError, match='num_classes must be even'):
        placement.place_state(state.replace(params=params))


def test_the_tower_model_is_the_single_device_module_with_tower_layers(setup):
    """One network definition: the towers run models.AlexNet itself, geometry unchanged."""
    single, tower = setup['model'], towers.tower_model(setup['config'])
    assert type(tower) is type(single) is models.AlexNet
    injected = {'conv', 'dense', 'dropout', 'exchange', 'norm'}
    for field in single.__dataclass_fields__:
        if field not in injected | {'parent', 'name'}:
            assert getattr(tower, field) == getattr(single, field), field
    for field in injected:
        assert getattr(tower, field) != getattr(single, field), field


def test_importing_towers_does_not_import_the_driver():
    import subprocess

    code = 'import sys, alexnet_jax.towers; print("alexnet_jax.train" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ['False']
