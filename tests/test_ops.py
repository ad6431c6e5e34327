"""The CPU-friendly convolution and max-pool against lax's own ops and their autodiff."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import ops

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _lax_conv(x, w, strides, padding, groups=1):
    return jax.lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=NHWC, feature_group_count=groups
    )


@pytest.mark.parametrize(
    ('shape', 'kernel', 'stride', 'padding'),
    [
        ((2, 27, 27, 3), (11, 11, 3, 8), 4, 'VALID'),  # conv1 of `paper`, shrunk
        ((2, 26, 26, 3), (11, 11, 3, 8), 4, ((2, 2), (2, 2))),  # conv1 of `owt`
        ((2, 9, 9, 6), (5, 5, 6, 4), 1, ((2, 2), (2, 2))),  # conv2
        ((2, 7, 7, 4), (3, 3, 4, 5), 1, 'SAME'),  # conv3-5
    ],
)
def test_fast_conv_values_and_gradients_equal_lax(shape, kernel, stride, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=kernel), jnp.float32)

    def loss(conv, x, w):
        y = conv(x, w)
        return jnp.sum(y * jnp.cos(y))  # a cotangent that differs everywhere

    ours = lambda x, w: ops.fast_conv(x, w, (stride, stride), padding, dimension_numbers=NHWC)
    ref = lambda x, w: _lax_conv(x, w, (stride, stride), padding)
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-4, atol=1e-4)
    g_ours = jax.grad(loss, argnums=(1, 2))(ours, x, w)
    g_ref = jax.grad(loss, argnums=(1, 2))(ref, x, w)
    for a, b in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_split_groups_gradients_equal_feature_group_count():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    ours = lambda x, w: ops.split_grouped_conv(
        x, w, (1, 1), 'SAME', dimension_numbers=NHWC, feature_group_count=2
    )
    ref = lambda x, w: _lax_conv(x, w, (1, 1), 'SAME', groups=2)
    g_ours = jax.grad(lambda x, w: jnp.sum(jnp.sin(ours(x, w))), argnums=(0, 1))(x, w)
    g_ref = jax.grad(lambda x, w: jnp.sum(jnp.sin(ref(x, w))), argnums=(0, 1))(x, w)
    for a, b in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ('shape', 'window', 'stride', 'padding'),
    [
        ((2, 13, 13, 4), 3, 2, 'VALID'),  # overlapping, as the paper
        ((2, 12, 12, 4), 2, 2, 'VALID'),  # non-overlapping
        ((2, 7, 7, 3), 3, 2, 'SAME'),  # the small variant's padded pools
    ],
)
@pytest.mark.parametrize('ties', [False, True])
def test_max_pool_values_and_gradients_equal_flax(shape, window, stride, padding, ties):
    rng = np.random.default_rng(2)
    x = rng.normal(size=shape).astype(np.float32)
    if ties:  # quantised values: many windows hold their maximum twice (ReLU zeros do this)
        x = np.maximum(np.round(x), 0.0)
    x = jnp.asarray(x)
    cot = jnp.asarray(rng.normal(size=nn.max_pool(x, (window,) * 2, (stride,) * 2, padding).shape))
    ours = lambda x: ops.max_pool(x, window, stride, padding)
    ref = lambda x: nn.max_pool(x, (window, window), (stride, stride), padding=padding)
    np.testing.assert_array_equal(ours(x), ref(x))
    g_ours = jax.grad(lambda x: jnp.sum(ours(x) * cot))(x)
    g_ref = jax.grad(lambda x: jnp.sum(ref(x) * cot))(x)
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-6, atol=1e-6)
