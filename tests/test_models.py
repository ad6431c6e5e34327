"""alexnet_jax.models: geometry, parameter counts, towers, initialisation and every switch.

Anything at 227x227 that needs only shapes goes through ``jax.eval_shape``; behaviour is checked
on the ``small`` variant with tiny batches, so the file runs in seconds on two cores.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import layers
from alexnet_jax.lrn import lrn
from alexnet_jax.models import VARIANTS, create_model, param_count
from alexnet_jax.models import variant as alexnet
from alexnet_jax.ops import split_grouped_conv
from configs import fashion_mnist

LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')
INPUT_SIZE = {'paper': 227, 'single_tower': 227, 'caffenet': 227, 'owt': 224, 'bn': 227}


def _abstract(model, size, channels=3, batch=2):
    """Shapes of (variables, logits, intermediates) without computing anything."""
    images = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)

    def run(images):
        variables = model.init(jax.random.key(0), images, train=False)
        logits, state = model.apply(variables, images, train=False, mutable=['intermediates'])
        return variables, logits, state['intermediates']['stages'][0]

    return jax.eval_shape(run, images)


@functools.cache
def _small_variables(size=28, channels=1, **switches):
    model = alexnet('small', num_classes=10, **switches)
    # Eagerly: the small net's ops compile once and are shared by every configuration.
    return model.init(jax.random.key(0), jnp.zeros((1, size, size, channels)), train=False)


@pytest.fixture(scope='module')
def paper_variables():
    """A real initialisation of the paper net (~3 s), shared by the tests that need values."""
    model = alexnet('paper')
    images = jnp.zeros((1, 227, 227, 3))
    return jax.jit(lambda key: model.init(key, images, train=False))(jax.random.key(0))


def _images(size=28, channels=1, batch=2, seed=0):
    return jax.random.uniform(jax.random.key(seed), (batch, size, size, channels))


def _forward(model, variables, images, **kwargs):
    """Logits and the sown stages."""
    logits, state = model.apply(variables, images, mutable=['intermediates'], **kwargs)
    return logits, state['intermediates']['stages'][0]


def _capture(model, variables, images, layer, perturb=None, jit=False, **kwargs):
    """The input and raw (pre-activation) output of ``layer``, optionally perturbing the input."""

    def run(variables, images):
        seen = {}

        def interceptor(next_fun, args, kwargs_, context):
            if context.module.name == layer and context.method_name == '__call__':
                if perturb is not None:
                    args = (perturb(args[0]), *args[1:])
                seen['input'] = args[0]
                seen['output'] = next_fun(*args, **kwargs_)
                return seen['output']
            return next_fun(*args, **kwargs_)

        with nn.intercept_methods(interceptor):
            _, state = model.apply(variables, images, mutable=['intermediates'], **kwargs)
        return seen['input'], seen['output'], state['intermediates']['stages'][0]

    return (jax.jit(run) if jit else run)(variables, images)


# ---------------------------------------------------------------------------------------------
# Shapes and parameter counts


@pytest.mark.parametrize('variant', ['paper', 'single_tower', 'caffenet', 'owt', 'bn'])
def test_output_shape_of_the_imagenet_variants(variant):
    _, logits, _ = _abstract(alexnet(variant), INPUT_SIZE[variant])
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    _, logits, _ = _abstract(alexnet(variant, num_classes=7), INPUT_SIZE[variant], batch=1)
    assert logits.shape == (1, 7)


@pytest.mark.parametrize('size', [28, 32])
@pytest.mark.parametrize('channels', [1, 3])
def test_small_variant_output_shape_at_28_and_32_with_1_and_3_channels(size, channels):
    variables, logits, _ = _abstract(alexnet('small', num_classes=10), size, channels, batch=3)
    assert variables['params']['conv1']['kernel'].shape == (5, 5, channels, 32)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32


def test_small_variant_forward_is_finite():
    logits = alexnet('small', num_classes=10).apply(_small_variables(), _images(), train=False)
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    assert float(jnp.std(logits)) > 0


# Arithmetic (weights + biases; kernels are kh * kw * in/groups * out):
#   paper (grouped):
#     conv1 11*11*3*96 + 96       =     34,944
#     conv2  5*5*48*256 + 256     =    307,456   (groups=2: each kernel sees 48 of 96 channels)
#     conv3  3*3*256*384 + 384    =    885,120
#     conv4  3*3*192*384 + 384    =    663,936   (groups=2)
#     conv5  3*3*192*256 + 256    =    442,624   (groups=2)
#     fc6   6*6*256*4096 + 4096   = 37,752,832
#     fc7   4096*4096 + 4096      = 16,781,312
#     fc8   4096*1000 + 1000      =  4,097,000
#     total                       = 60,965,224
#   single_tower: conv2 5*5*96*256 + 256 = 614,656; conv4 3*3*384*384 + 384 = 1,327,488;
#     conv5 3*3*384*256 + 256 = 884,992: +307,200 +663,552 +442,368 = +1,413,120 -> 62,378,344
#   owt (64-192-384-256-256, no groups):
#     conv1 11*11*3*64 + 64 = 23,296; conv2 5*5*64*192 + 192 = 307,392;
#     conv3 3*3*192*384 + 384 = 663,936; conv4 3*3*384*256 + 256 = 884,992;
#     conv5 3*3*256*256 + 256 = 590,080; fc6/fc7/fc8 as above = 58,631,144 -> 61,100,840
#   bn: single_tower + a scale and a bias per channel of conv1..conv5:
#     2 * (96 + 256 + 384 + 384 + 256) = 2,752 -> 62,381,096 (+ 2,752 batch statistics)
@pytest.mark.parametrize(
    ('variant', 'expected'),
    [
        ('paper', 60_965_224),
        ('single_tower', 62_378_344),
        ('caffenet', 60_965_224),
        ('owt', 61_100_840),
        ('bn', 62_381_096),
    ],
)
def test_parameter_counts(variant, expected):
    variables, _, _ = _abstract(alexnet(variant), INPUT_SIZE[variant], batch=1)
    assert param_count(variables['params']) == expected
    assert sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(variables['params'])) == (
        expected
    )
    if variant == 'bn':
        assert param_count(variables['batch_stats']) == 2_752
    else:
        assert set(variables) == {'params'}


def test_groups_1_on_paper_counts_like_single_tower():
    variables, _, _ = _abstract(alexnet('paper', groups=1), 227, batch=1)
    assert param_count(variables['params']) == 62_378_344


@pytest.mark.parametrize('variant', ['paper', 'single_tower', 'owt'])
def test_parameter_names_and_kernel_shapes(variant):
    params = _abstract(alexnet(variant), INPUT_SIZE[variant], batch=1)[0]['params']
    assert set(params) == set(LAYERS)
    for name in LAYERS:
        assert set(params[name]) == {'kernel', 'bias'}, name
    if variant == 'paper':
        expected = {
            'conv1': (11, 11, 3, 96),
            'conv2': (5, 5, 48, 256),
            'conv3': (3, 3, 256, 384),
            'conv4': (3, 3, 192, 384),
            'conv5': (3, 3, 192, 256),
            'fc6': (9216, 4096),
            'fc7': (4096, 4096),
            'fc8': (4096, 1000),
        }
        assert {name: params[name]['kernel'].shape for name in LAYERS} == expected


def test_paper_shape_after_every_stage():
    _, logits, stages = _abstract(alexnet('paper', num_classes=10), 227, batch=2)
    expected = {
        'conv1': (55, 55, 96),
        'pool1': (27, 27, 96),
        'conv2': (27, 27, 256),
        'pool2': (13, 13, 256),
        'conv3': (13, 13, 384),
        'conv4': (13, 13, 384),
        'conv5': (13, 13, 256),
        'pool5': (6, 6, 256),
        'fc6': (4096,),
        'fc7': (4096,),
    }
    assert {name: s.shape[1:] for name, s in stages.items()} == expected
    assert all(s.shape[0] == 2 for s in stages.values())
    assert logits.shape == (2, 10)


# ---------------------------------------------------------------------------------------------
# Towers


@pytest.mark.parametrize('layer', ['conv2', 'conv4', 'conv5'])
@pytest.mark.parametrize('backend', ['cpu', 'gpu', 'tpu'])  # groups split or not
def test_grouping_splits_the_towers(layer, backend):
    model = alexnet('small', num_classes=10, backend=backend)
    variables, images = _small_variables(), _images()
    noise = lambda x, lo, hi: x.at[..., lo:hi].add(1.0 + jnp.abs(x[..., lo:hi]))
    base_in, base, _ = _capture(model, variables, images, layer, train=False)
    cin, cout = base_in.shape[-1], base.shape[-1]
    for tower in (0, 1):
        lo, hi = tower * cin // 2, (tower + 1) * cin // 2
        perturb = functools.partial(noise, lo=lo, hi=hi)
        _, out, _ = _capture(model, variables, images, layer, perturb=perturb, train=False)
        mine = slice(tower * cout // 2, (tower + 1) * cout // 2)
        other = slice((1 - tower) * cout // 2, (2 - tower) * cout // 2)
        np.testing.assert_array_equal(out[..., other], base[..., other])
        assert float(jnp.min(jnp.max(jnp.abs(out[..., mine] - base[..., mine]), (0, 1, 2)))) > 0


def test_without_groups_a_tower_perturbation_reaches_every_output():
    model = alexnet('small', num_classes=10, groups=1)
    variables, images = _small_variables(groups=1), _images()
    _, base, _ = _capture(model, variables, images, 'conv2', train=False)
    _, out, _ = _capture(
        model, variables, images, 'conv2', perturb=lambda x: x.at[..., :16].add(1.0), train=False
    )
    changed = jnp.max(jnp.abs(out - base), axis=(0, 1, 2))
    assert float(jnp.min(changed)) > 0  # every output channel, both halves


@pytest.mark.parametrize(
    ('groups', 'strides', 'padding'),
    [(2, (1, 1), 'SAME'), (2, (2, 2), 'VALID'), (2, (1, 1), [(2, 2), (1, 1)]), (4, (1, 1), 'SAME')],
)
def test_split_grouped_conv_equals_feature_group_count(groups, strides, padding):
    kx, kw = jax.random.split(jax.random.key(groups))
    lhs = jax.random.normal(kx, (2, 9, 9, 8))
    rhs = jax.random.normal(kw, (3, 3, 8 // groups, 12))
    kwargs = {'dimension_numbers': ('NHWC', 'HWIO', 'NHWC'), 'feature_group_count': groups}
    expected = jax.lax.conv_general_dilated(lhs, rhs, strides, padding, **kwargs)
    actual = split_grouped_conv(lhs, rhs, strides, padding, **kwargs)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    # Not a plain convolution: groups really cut the connections.
    ungrouped_rhs = jnp.tile(rhs, (1, 1, groups, 1))
    plain = jax.lax.conv_general_dilated(
        lhs, ungrouped_rhs, strides, padding, **kwargs | {'feature_group_count': 1}
    )
    assert not np.allclose(plain, expected, atol=1e-3)


@pytest.mark.parametrize('backend', ['gpu', 'tpu'])
def test_the_kernels_of_every_backend_give_the_same_logits_and_gradients(backend):
    """create_model's kernel choice: the CPU kernels (oneDNN or split groups, bias gradient as a
    product, max-pool gradient by phases) against those of ``backend``."""
    variables, images = _small_variables(), _images(batch=3)
    config = fashion_mnist.get_config()  # the small net, 10 classes
    cpu = create_model(config, backend='cpu')
    other = create_model(config, backend=backend)
    assert cpu.conv != other.conv  # really two kernel sets
    # Grouped layers as two plain convolutions on GPU too (1.7x faster on an H200).
    assert layers.kernels_for('gpu').conv is split_grouped_conv
    labels = jnp.arange(3) % 10

    def loss(model, params, images):
        logits = model.apply({'params': params}, images, train=False)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    np.testing.assert_allclose(
        cpu.apply(variables, images, train=False),
        other.apply(variables, images, train=False),
        rtol=1e-5,
        atol=1e-5,
    )
    g_cpu = jax.grad(loss, argnums=(1, 2))(cpu, variables['params'], images)
    g_other = jax.grad(loss, argnums=(1, 2))(other, variables['params'], images)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(g_cpu), jax.tree.leaves(g_other), strict=True
    ):
        scale = float(jnp.max(jnp.abs(b)))
        assert scale > 0, jax.tree_util.keystr(path)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=str(path))


# ---------------------------------------------------------------------------------------------
# Initialisation


def _check_paper_init(params):
    bias_one = {'conv2', 'conv4', 'conv5', 'fc6', 'fc7'}
    for name in LAYERS:
        kernel = params[name]['kernel']
        n = kernel.size
        # N(0, 0.01): sample mean and std within 4-5 of their standard errors.
        assert abs(float(jnp.mean(kernel))) < 5 * 0.01 / np.sqrt(n), name
        assert float(jnp.std(kernel)) == pytest.approx(0.01, rel=4 / np.sqrt(2 * n)), name
        expected_bias = 1.0 if name in bias_one else 0.0
        np.testing.assert_array_equal(params[name]['bias'], expected_bias, err_msg=name)


def test_paper_initialisation_of_the_paper_net(paper_variables):
    _check_paper_init(paper_variables['params'])


def test_init_scheme_switch():
    _check_paper_init(_small_variables(init_scheme='paper')['params'])
    modern = _small_variables()['params']  # small defaults to 'modern'
    for name in LAYERS:
        kernel = np.asarray(modern[name]['kernel'])
        fan_in = int(np.prod(kernel.shape[:-1]))
        gain = 1.0 if name == 'fc8' else 2.0  # He before a ReLU, LeCun for the logits
        assert kernel.std() == pytest.approx(np.sqrt(gain / fan_in), rel=0.1), name
        np.testing.assert_array_equal(modern[name]['bias'], 0.0)


# ---------------------------------------------------------------------------------------------
# Dropout and BatchNorm


def test_dropout_only_in_training():
    model = alexnet('small', num_classes=10)
    variables, images = _small_variables(), _images(batch=4)
    train = lambda seed: model.apply(
        variables, images, train=True, rngs={'dropout': jax.random.key(seed)}
    )
    assert not np.allclose(train(0), train(1))
    np.testing.assert_array_equal(train(0), train(0))
    evaluated = model.apply(variables, images, train=False)
    np.testing.assert_array_equal(evaluated, model.apply(variables, images, train=False))
    # Evaluation is the net without dropout: equal to training with rate 0 (no BatchNorm here).
    no_dropout = alexnet('small', num_classes=10, dropout_rate=0.0)
    for seed in (0, 1):
        np.testing.assert_allclose(
            no_dropout.apply(variables, images, train=True, rngs={'dropout': jax.random.key(seed)}),
            evaluated,
            rtol=1e-6,
            atol=1e-6,
        )


@pytest.mark.parametrize('rate', [0.5, 0.2])
def test_dropout_drops_the_hidden_outputs_at_its_rate(rate):
    """Section 4.2: fc7's output (fc8's input) is zeroed with probability rate, else scaled."""
    model = alexnet('small', num_classes=10, dropout_rate=rate)
    variables, images = _small_variables(), _images(batch=16)
    rngs = {'dropout': jax.random.key(3)}
    dropped, _, stages = _capture(model, variables, images, 'fc8', train=True, rngs=rngs)
    fc7 = stages['fc7']
    alive = fc7 > 0
    kept = dropped != 0
    frac_dropped = 1.0 - float(jnp.sum(kept & alive) / jnp.sum(alive))
    assert frac_dropped == pytest.approx(rate, abs=0.05)
    np.testing.assert_allclose(dropped[kept], fc7[kept] / (1.0 - rate), rtol=1e-6)
    undropped, _, stages = _capture(model, variables, images, 'fc8', train=False)
    np.testing.assert_array_equal(undropped, stages['fc7'])


def test_bn_variant_keeps_batch_stats():
    variables, _, _ = _abstract(alexnet('bn'), 227, batch=1)
    widths = {'bn1': 96, 'bn2': 256, 'bn3': 384, 'bn4': 384, 'bn5': 256}
    assert {k: v['mean'].shape for k, v in variables['batch_stats'].items()} == {
        k: (w,) for k, w in widths.items()
    }
    assert set(variables['batch_stats']['bn1']) == {'mean', 'var'}
    assert {k: set(v) for k, v in variables['params'].items() if k.startswith('bn')} == {
        k: {'scale', 'bias'} for k in widths
    }


def test_batchnorm_updates_its_statistics_in_training_only():
    model = alexnet('small', num_classes=10, norm='bn')
    variables, images = _small_variables(norm='bn'), _images(batch=4)
    assert set(variables['batch_stats']) == {'bn1', 'bn2'}  # small normalises after conv1, conv2
    rngs = {'dropout': jax.random.key(0)}
    _, state = model.apply(
        variables, images, train=True, rngs=rngs, mutable=['batch_stats', 'intermediates']
    )
    conv1 = state['intermediates']['stages'][0]['conv1']  # BatchNorm's input (after the ReLU)
    new = state['batch_stats']['bn1']
    # momentum 0.9 from mean 0 / var 1: 0.1 of the batch's statistics.
    np.testing.assert_allclose(new['mean'], 0.1 * jnp.mean(conv1, (0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        new['var'], 0.9 + 0.1 * jnp.var(conv1, (0, 1, 2)), rtol=1e-4, atol=1e-6
    )
    assert not np.allclose(new['mean'], variables['batch_stats']['bn1']['mean'])
    # Evaluation uses the running statistics: an example's logits do not depend on its batch.
    one = model.apply(variables, images[:1], train=False)
    np.testing.assert_allclose(one, model.apply(variables, images, train=False)[:1], atol=1e-5)
    batch = model.apply(variables, images, train=True, rngs=rngs, mutable=['batch_stats'])[0]
    alone = model.apply(variables, images[:1], train=True, rngs=rngs, mutable=['batch_stats'])[0]
    assert not np.allclose(alone, batch[:1], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Precision


def test_bfloat16_forward_close_to_float32():
    variables, images = _small_variables(), _images(batch=4)
    logits32, stages32 = _forward(alexnet('small', num_classes=10), variables, images, train=False)
    model16 = alexnet('small', num_classes=10, compute_dtype='bfloat16')
    logits16, stages16 = _forward(model16, variables, images, train=False)
    assert logits16.dtype == jnp.float32  # logits come back in float32
    assert stages16['conv1'].dtype == jnp.bfloat16  # but the net ran in bfloat16
    assert jax.tree_util.tree_leaves(variables)[0].dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(logits32)))
    err = float(jnp.max(jnp.abs(logits16 - logits32)))
    # 8 significant bits through 8 layers: a few percent of the logits' scale, and not exact.
    assert 0 < err < 0.05 * scale


# ---------------------------------------------------------------------------------------------
# Switches


def _max_pool(x, window):
    return nn.max_pool(x, (window, window), (2, 2), padding='SAME')


@pytest.mark.parametrize('norm', ['lrn', 'none'])
def test_norm_switch_places_lrn_after_relu_and_before_pool(norm):
    model = alexnet('small', num_classes=10, norm=norm)
    variables, images = _small_variables(), _images()  # LRN and none have the same parameters
    _, stages = _forward(model, variables, images, train=False)
    for i in (1, 2):
        x = stages[f'conv{i}']
        expected = _max_pool(lrn(x) if norm == 'lrn' else x, 3)
        np.testing.assert_allclose(stages[f'pool{i}'], expected, rtol=1e-6, atol=1e-6)
    if norm == 'lrn':  # and it makes a difference at these scales
        assert not np.allclose(stages['pool1'], _max_pool(stages['conv1'], 3), rtol=1e-4)


def test_tower_local_lrn_normalises_each_towers_half_on_one_device():
    """Section 3.2's LRN within each GPU's maps, as a switch of the one-device model."""
    model = alexnet('small', num_classes=10, tower_local_lrn=True)
    variables, images = _small_variables(), _images()  # no parameters change
    _, stages = _forward(model, variables, images, train=False)
    for i in (1, 2):
        x = stages[f'conv{i}']
        halves = jnp.split(x, 2, axis=-1)
        per_tower = jnp.concatenate([lrn(h) for h in halves], axis=-1)
        np.testing.assert_allclose(stages[f'pool{i}'], _max_pool(per_tower, 3), rtol=1e-6)
    _, plain = _forward(alexnet('small', num_classes=10), variables, images, train=False)
    assert not np.allclose(stages['pool1'], plain['pool1'], rtol=1e-6, atol=0)


def test_norm_switch_changes_the_variables_and_logits():
    images = _images()
    lrn_vars, none_vars, bn_vars = (_small_variables(norm=n) for n in ('lrn', 'none', 'bn'))
    assert set(lrn_vars) == set(none_vars) == {'params'}
    assert set(bn_vars) == {'params', 'batch_stats'}
    assert set(bn_vars['params']) == set(LAYERS) | {'bn1', 'bn2'}
    with_lrn = alexnet('small', num_classes=10).apply(lrn_vars, images, train=False)
    without = alexnet('small', num_classes=10, norm='none').apply(lrn_vars, images, train=False)
    assert not np.allclose(with_lrn, without, rtol=1e-3)


def test_caffenet_pools_before_lrn(paper_variables):
    # caffenet has the paper net's parameters; only the order of pool1 and LRN differs.
    images = 255.0 * _images(227, 3, batch=1)
    # conv2 sees lrn(pool1), and pool1 = pool(conv1); the paper's order would give pool(lrn(.)).
    conv2_in, _, stages = _capture(
        alexnet('caffenet'), paper_variables, images, 'conv2', jit=True, train=False
    )
    pooled = nn.max_pool(stages['conv1'], (3, 3), (2, 2), padding='VALID')
    np.testing.assert_allclose(stages['pool1'], pooled, rtol=1e-6)
    np.testing.assert_allclose(conv2_in, lrn(pooled), rtol=1e-5, atol=1e-6)
    assert not np.allclose(conv2_in, pooled, rtol=1e-3)  # LRN is not the identity here
    paper_conv2_in, _, _ = _capture(
        alexnet('paper'), paper_variables, images, 'conv2', jit=True, train=False
    )
    assert not np.allclose(paper_conv2_in, conv2_in, rtol=1e-3)


@pytest.mark.parametrize(
    ('variant', 'size'),
    [
        ('paper', 227),
        ('small', 28),
        ('small', 32),
    ],
)
def test_pooling_switch_keeps_every_output_size(variant, size):
    shapes = {}
    for pooling in ('overlapping', 'non_overlapping'):
        variables, _, stages = _abstract(alexnet(variant, pooling=pooling), size, channels=1)
        shapes[pooling] = (
            {k: v.shape for k, v in stages.items()},
            jax.tree_util.tree_map(lambda p: p.shape, variables['params']),
        )
    assert shapes['overlapping'] == shapes['non_overlapping']


def test_pooling_switch_changes_the_window():
    variables, images = _small_variables(), _images()
    for pooling, window in (('overlapping', 3), ('non_overlapping', 2)):
        model = alexnet('small', num_classes=10, pooling=pooling, norm='none')
        _, stages = _forward(model, variables, images, train=False)
        np.testing.assert_array_equal(stages['pool1'], _max_pool(stages['conv1'], window))
        other = _max_pool(stages['conv1'], 5 - window)
        assert not np.array_equal(stages['pool1'], other)


@pytest.mark.parametrize('activation', ['relu', 'tanh'])
def test_activation_switch(activation):
    model = alexnet('small', num_classes=10, activation=activation)
    variables, images = _small_variables(), _images()
    _, pre, stages = _capture(model, variables, images, 'conv1', train=False)
    fn = jax.nn.relu if activation == 'relu' else jnp.tanh
    np.testing.assert_allclose(stages['conv1'], fn(pre), rtol=1e-6, atol=1e-7)
    assert float(jnp.min(pre)) < 0  # so relu and tanh really differ here
    if activation == 'tanh':
        assert float(jnp.min(stages['conv1'])) < 0 and float(jnp.max(stages['fc7'])) < 1


def test_groups_switch_changes_the_kernels():
    grouped, single = _small_variables()['params'], _small_variables(groups=1)['params']
    for name in ('conv2', 'conv4', 'conv5'):
        g, s = grouped[name]['kernel'].shape, single[name]['kernel'].shape
        assert g[:2] == s[:2] and g[3] == s[3] and 2 * g[2] == s[2], name
    for name in ('conv1', 'conv3', 'fc6'):
        assert grouped[name]['kernel'].shape == single[name]['kernel'].shape, name


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ('switch', 'value', 'accepted'),
    [
        ('variant', 'vgg', list(VARIANTS)),
        ('norm', 'layer', ['lrn', 'bn', 'none']),
        ('pooling', 'average', ['overlapping', 'non_overlapping']),
        ('activation', 'gelu', ['relu', 'tanh']),
        ('init_scheme', 'xavier', ['paper', 'modern']),
        ('groups', 3, ['1', '2']),
    ],
)
def test_unknown_choices_raise_naming_the_value_and_the_choices(switch, value, accepted):
    with pytest.raises(ValueError) as info:
        alexnet(value) if switch == 'variant' else alexnet('small', **{switch: value})
    message = str(info.value)
    assert repr(value) in message
    for choice in accepted:
        assert choice in message, (choice, message)


@pytest.mark.parametrize('rate', [1.0, -0.1])
def test_bad_dropout_rate_raises(rate):
    with pytest.raises(ValueError, match=rf'dropout_rate.*{rate}'):
        alexnet('small', dropout_rate=rate)


@pytest.mark.parametrize(
    ('variant', 'size', 'accepted'),
    [('paper', 224, '227'), ('owt', 227, '224'), ('small', 27, '28 or 32'), ('bn', 32, '227')],
)
def test_input_size_the_variant_cannot_take_raises(variant, size, accepted):
    with pytest.raises(ValueError) as info:
        _abstract(alexnet(variant), size)
    message = str(info.value)
    assert f'{size}x{size}' in message and accepted in message and repr(variant) in message


def test_non_square_input_raises():
    images = jax.ShapeDtypeStruct((1, 28, 32, 1), jnp.float32)
    with pytest.raises(ValueError, match=r'square.*\(1, 28, 32, 1\)'):
        jax.eval_shape(lambda x: alexnet('small').init(jax.random.key(0), x, train=False), images)
