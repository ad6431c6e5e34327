"""config.half_kernels: Section 3.2's one-GPU baseline (conv1-conv4 halved, conv5 and fc kept).

Shapes only (``jax.eval_shape``): nothing is initialised or run, so the file takes seconds.
"""

import jax
import jax.numpy as jnp
import pytest

from alexnet_jax import specs
from alexnet_jax.config_checks import ConfigError, validate_config
from alexnet_jax.models import param_count
from alexnet_jax.models import variant as alexnet
from configs import default, fashion_mnist


def _shapes(model, size, channels):
    """(params, sown stages) as shapes, for one image."""
    images = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)

    def run(images):
        variables = model.init(jax.random.key(0), images, train=False)
        _, state = model.apply(variables, images, train=False, mutable=['intermediates'])
        return variables['params'], state['intermediates']['stages'][0]

    return jax.eval_shape(run, images)


def test_paper_one_gpu_net_counts_the_layer_shapes_by_hand():
    # The one-GPU net of Section 3.2 in the paper's geometry, every kernel seeing all channels:
    layers = [
        # (kernels, kernel height, width, input channels)
        (48, 11, 11, 3),  # conv1
        (128, 5, 5, 48),  # conv2
        (192, 3, 3, 128),  # conv3
        (192, 3, 3, 192),  # conv4
        (256, 3, 3, 192),  # conv5: not halved (footnote)
        (4096, 1, 1, 6 * 6 * 256),  # fc6
        (4096, 1, 1, 4096),  # fc7
        (1000, 1, 1, 4096),  # fc8
    ]
    expected = sum(out * h * w * cin + out for out, h, w, cin in layers)
    assert expected == 59_798_312
    for model in (
        alexnet('paper', groups=1, half_kernels=True),
        alexnet('single_tower', half_kernels=True),
    ):
        params, _ = _shapes(model, 227, 3)
        assert param_count(params) == expected
        assert params['conv5']['kernel'].shape == (3, 3, 192, 256)
        assert params['fc6']['kernel'].shape == (6 * 6 * 256, 4096)


def test_small_halves_conv1_to_conv4_and_keeps_conv5_and_the_fc_layers():
    _, full = _shapes(alexnet('small', num_classes=10, groups=1), 28, 1)
    _, half = _shapes(alexnet('small', num_classes=10, groups=1, half_kernels=True), 28, 1)
    for name in ('conv1', 'conv2', 'conv3', 'conv4'):
        assert half[name].shape[-1] * 2 == full[name].shape[-1], name
    assert [half[n].shape[-1] for n in ('conv1', 'conv2', 'conv3', 'conv4')] == [16, 32, 48, 48]
    for name in ('conv5', 'pool5', 'fc6', 'fc7'):
        assert half[name].shape == full[name].shape, name


@pytest.mark.parametrize('variant', list(specs.VARIANTS))
def test_every_variant_halves_its_own_widths(variant):
    preset = [c.features for c in specs.VARIANTS[variant].convs]
    spec = specs.model_spec(variant, groups=1, half_kernels=True)
    assert [c.features for c in spec.built_convs()] == [f // 2 for f in preset[:4]] + [preset[4]]
    assert spec.convs == specs.VARIANTS[variant].convs  # the geometry the variant names stays
    assert spec.hidden == specs.VARIANTS[variant].hidden
    assert spec.network() != specs.model_spec(variant, groups=1).network()  # checkpoints differ


def _config(base=default, **fields):
    c = base.get_config()
    for key, value in fields.items():
        c[key] = value
    return c


@pytest.mark.parametrize(
    'fields',
    [
        {'model': 'paper', 'half_kernels': True},  # the preset's groups=2
        {'model': 'single_tower', 'groups': 2, 'half_kernels': True},  # groups=2 set
    ],
)
def test_half_kernels_with_towers_is_refused_naming_the_fix(fields):
    with pytest.raises(ConfigError, match=r'config\.half_kernels=True .* --config\.groups=1'):
        validate_config(_config(**fields))


def test_half_kernels_on_the_quick_start_needs_groups_1():
    with pytest.raises(ConfigError, match="model 'small' has groups=2"):
        validate_config(_config(fashion_mnist, half_kernels=True))
    with pytest.raises(ConfigError, match='half_kernels'):
        alexnet('small', half_kernels=True)
    validate_config(_config(fashion_mnist, half_kernels=True, groups=1))
    validate_config(_config(model='single_tower', half_kernels=True))


def test_configs_of_older_runs_without_the_field_resolve_to_full_kernels():
    config = _config()
    with config.unlocked():
        del config['half_kernels']
    assert specs.resolve_model(config) == specs.resolve_model(_config())
