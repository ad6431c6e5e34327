"""oneDNN's convolutions (alexnet_jax/onednn_conv.py) against lax.conv_general_dilated.

Needs g++ and oneDNN's headers (``apt-get install g++ libdnnl-dev``, as the README's setup line
and CI install them).
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import layers, onednn_conv, ops

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _lax(x, w, strides, padding, groups=1):
    return jax.lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=NHWC, feature_group_count=groups
    )


def _ours(x, w, strides, padding, groups=1):
    return onednn_conv.conv(
        x, w, strides, padding, dimension_numbers=NHWC, feature_group_count=groups
    )


@pytest.mark.parametrize(
    ('x_shape', 'k', 'out', 'strides', 'padding', 'groups'),
    [
        ((2, 9, 9, 3), 3, 4, (1, 1), 'SAME', 1),
        ((2, 8, 10, 6), 3, 4, (1, 1), 'VALID', 1),  # height and width differ
        ((2, 11, 11, 3), 5, 5, (2, 2), [(1, 2), (0, 1)], 1),  # uneven padding
        ((1, 23, 23, 3), 11, 8, (4, 4), [(2, 2), (2, 2)], 1),  # conv1 of the paper, smaller
        ((2, 7, 7, 6), 3, 8, (1, 1), 'SAME', 2),  # two groups (the towers' conv2/4/5)
        ((2, 9, 9, 16), 3, 32, (1, 1), 'SAME', 1),  # whole vectors: Winograd's, on AVX-512
        ((2, 8, 10, 32), 3, 16, (1, 1), 'VALID', 1),
    ],
)
def test_values_and_both_gradients_equal_lax(x_shape, k, out, strides, padding, groups):
    onednn_conv.load()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, x_shape[-1] // groups, out)), jnp.float32)
    args = (strides, padding, groups)
    y_ref = _lax(x, w, *args)
    np.testing.assert_allclose(_ours(x, w, *args), y_ref, rtol=1e-5, atol=1e-4)
    cot = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
    grads = lambda f: jax.grad(lambda x, w: jnp.sum(f(x, w, *args) * cot), argnums=(0, 1))(x, w)
    for ours, ref in zip(grads(_ours), grads(_lax), strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)


def test_float32_runs_in_onednn_and_other_cases_in_lax():
    onednn_conv.load()
    x = jnp.ones((1, 6, 6, 2), jnp.float32)
    w = jnp.ones((3, 3, 2, 4), jnp.float32)
    hlo = lambda f, *a: jax.jit(f).lower(*a).as_text()
    assert 'alexnet_onednn_conv_forward' in hlo(lambda x, w: _ours(x, w, (1, 1), 'SAME'), x, w)
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    assert 'custom_call' not in hlo(lambda x, w: _ours(x, w, (1, 1), 'SAME'), xb, wb)
    np.testing.assert_array_equal(_ours(xb, wb, (1, 1), 'SAME'), _lax(xb, wb, (1, 1), 'SAME'))
    dilated = lambda x, w: onednn_conv.conv(
        x, w, (1, 1), 'SAME', rhs_dilation=(2, 2), dimension_numbers=NHWC
    )
    assert 'custom_call' not in hlo(dilated, x, w)


def test_vmap_over_a_stack_of_kernels():
    onednn_conv.load()
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
    ws = jnp.asarray(rng.normal(size=(3, 3, 3, 3, 4)), jnp.float32)
    ours = jax.vmap(lambda w: _ours(x, w, (1, 1), 'SAME'))(ws)
    for i in range(3):
        np.testing.assert_allclose(ours[i], _lax(x, ws[i], (1, 1), 'SAME'), rtol=1e-5, atol=1e-5)


def _avx512_core() -> bool:
    with open('/proc/cpuinfo') as f:
        flags = set(next(line for line in f if line.startswith('flags')).split())
    return {'avx512f', 'avx512bw', 'avx512vl', 'avx512dq'} <= flags


def test_winograd_for_3x3_stride_1_on_whole_vectors_unless_turned_off(monkeypatch):
    # A plan is made once per geometry and process, so each case has a batch size of its own.
    monkeypatch.delenv(onednn_conv.WINOGRAD_ENV, raising=False)
    same = ((1, 1), (1, 1))
    names = lambda n, c, k, o, stride=1, pad=same: onednn_conv.implementations(
        (n, 13, 13, c), (k, k, c, o), (stride, stride), pad
    )
    assert all(('wino' in name) == _avx512_core() for name in names(101, 256, 3, 384))
    assert not any('wino' in name for name in names(102, 8, 3, 16))  # not whole vectors
    assert not any('wino' in name for name in names(103, 64, 5, 192, pad=((2, 2), (2, 2))))
    assert not any('wino' in name for name in names(104, 64, 3, 64, stride=2))
    monkeypatch.setenv(onednn_conv.WINOGRAD_ENV, '0')
    assert not any('wino' in name for name in names(105, 256, 3, 384))


def test_the_cpu_model_uses_it_unless_turned_off(monkeypatch):
    assert layers.kernels_for('cpu').conv is onednn_conv.conv
    monkeypatch.setenv(onednn_conv.ENABLE_ENV, '0')
    assert layers.kernels_for('cpu').conv is ops.split_grouped_conv


def test_a_missing_compiler_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(onednn_conv.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
    with pytest.raises(onednn_conv.Unavailable, match='apt-get install g\\+\\+ libdnnl-dev'):
        onednn_conv.build()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_build_leaves_nothing_and_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv(onednn_conv.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv('CXX', 'false')  # a compiler that fails
    with pytest.raises(onednn_conv.Unavailable, match='libdnnl-dev'):
        onednn_conv.build()
    assert list(tmp_path.iterdir()) == []  # no half-written library left to load later


def test_unavailable_falls_back_to_xla_with_a_warning(monkeypatch, caplog):
    def fail():
        raise onednn_conv.Unavailable('no oneDNN here (test)')

    monkeypatch.setattr(onednn_conv, 'load', fail)
    onednn_conv._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        assert layers.kernels_for('cpu').conv is ops.split_grouped_conv
    assert 'no oneDNN here (test)' in caplog.text
