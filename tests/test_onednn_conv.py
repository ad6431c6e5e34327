"""oneDNN's convolutions (alexnet_jax/onednn_conv.py) against lax.conv_general_dilated.

Needs g++ and oneDNN's headers (``apt-get install g++ libdnnl-dev``, as the README's setup line
and CI install them).
"""

import logging
import os
import subprocess
import sys

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
    assert all(('wino' in name) == _avx512_core() for name in names(9, 64, 3, 64))
    assert all(name.endswith(' x9') for name in names(9, 64, 3, 64))  # small: one call
    assert not any('wino' in name for name in names(10, 8, 3, 16))  # not whole vectors
    assert not any('wino' in name for name in names(11, 64, 5, 192, pad=((2, 2), (2, 2))))
    assert not any('wino' in name for name in names(12, 64, 3, 64, stride=2))
    if _avx512_core():  # conv4's forward over 32 images: a scratchpad too large for one call
        forward = names(32, 384, 3, 384).forward
        images = int(forward.rsplit(' x', 1)[1])
        assert 'wino' in forward and 8 <= images < 32 and 32 % images == 0
    monkeypatch.setenv(onednn_conv.WINOGRAD_ENV, '0')
    assert not any('wino' in name for name in names(13, 64, 3, 64))
    assert all(name.endswith(' x13') for name in names(13, 64, 3, 64))


@pytest.mark.parametrize('channels', [(384, 384), (192, 192)])
def test_batches_split_across_calls_equal_lax(channels):
    # Where Winograd's scratchpad would be too large for the whole batch (conv4 of `owt`, and of
    # `paper`'s towers for the kernel gradient), its calls take part of it and the kernel
    # gradient sums over them.
    onednn_conv.load()
    c, o = channels
    n = 48  # a scratchpad too large for one call also with the tests' single thread
    split = onednn_conv.implementations((n, 13, 13, c), (3, 3, c, o), (1, 1), ((1, 1), (1, 1)))
    if _avx512_core():  # what this test is for: the split happens
        assert not split.forward.endswith(f' x{n}') or not split.kernel_grad.endswith(f' x{n}')
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(n, 13, 13, c)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, c, o)) / np.sqrt(9 * c), jnp.float32)
    cot = jnp.asarray(rng.normal(size=(n, 13, 13, o)), jnp.float32)
    args = ((1, 1), 'SAME')

    def value_and_grads(f):
        dx, dw = jax.grad(lambda x, w: jnp.sum(f(x, w, *args) * cot), (0, 1))(x, w)
        return f(x, w, *args), dx, dw

    for ours, ref in zip(value_and_grads(_ours), value_and_grads(_lax), strict=True):
        assert float(jnp.max(jnp.abs(ours - ref))) <= 1e-5 * float(jnp.max(jnp.abs(ref)))


_WHO_RUNS = """
import jax, jax.numpy as jnp
from alexnet_jax import onednn_conv
onednn_conv.load()
print(onednn_conv.runs_avx512())
print(onednn_conv.implementations((4, 13, 13, 256), (3, 3, 256, 384), (1, 1), ((1, 1), (1, 1))))
dims = ('NHWC', 'HWIO', 'NHWC')
for x, w, s, p, g in [((2, 9, 9, 8), (3, 3, 4, 8), 1, 1, 2), ((2, 9, 9, 4), (5, 5, 4, 8), 1, 2, 1),
                      ((2, 23, 23, 3), (11, 11, 3, 8), 4, 2, 1)]:
    x = jax.random.normal(jax.random.key(0), x)
    w = jax.random.normal(jax.random.key(1), w)
    def f(conv, x, w):
        y = conv(x, w, (s, s), [(p, p)] * 2, dimension_numbers=dims, feature_group_count=g)
        return jnp.sum(jnp.sin(y))
    grads = jax.value_and_grad(lambda x, w: f(onednn_conv.conv, x, w), (0, 1))
    jaxpr = str(jax.make_jaxpr(grads)(x, w))
    ours = jax.tree.leaves(grads(x, w))
    ref = jax.tree.leaves(
        jax.value_and_grad(lambda x, w: f(jax.lax.conv_general_dilated, x, w), (0, 1))(x, w))
    error = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(ours, ref))
    print(w.shape[0], 'oneDNN' if 'alexnet_onednn_conv' in jaxpr else 'XLA', error < 1e-3)
"""


def _who_runs(**env: str) -> list[str]:
    environ = {**os.environ, **env}
    environ.pop(onednn_conv.WINOGRAD_ENV, None)
    out = subprocess.run(
        [sys.executable, '-c', _WHO_RUNS], env=environ, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def test_an_avx2_host_runs_3x3_convolutions_in_xla_and_the_rest_in_onednn():
    """On an AVX2 host (emulated by capping oneDNN's instruction set, which it reads once per
    process) oneDNN 2.6 has no float32 Winograd, so its plan falls back to the direct kernels,
    and the 3x3 stride-1 convolutions go to XLA (faster there); 5x5 and 11x11 stay in oneDNN.
    Values and gradients equal lax's either way."""
    avx512, plan, three, five, eleven = _who_runs(ONEDNN_MAX_CPU_ISA='AVX2')
    assert avx512 == 'False'
    assert 'wino' not in plan and plan.count('avx2') == 3, plan
    assert three == '3 XLA True'
    assert five == '5 oneDNN True'
    assert eleven == '11 oneDNN True'


def test_an_avx512_host_runs_every_convolution_in_onednn():
    avx512, plan, *rows = _who_runs()
    if avx512 != 'True':
        pytest.skip('this host has no AVX-512 (oneDNN runs below it)')
    assert rows == ['3 oneDNN True', '5 oneDNN True', '11 oneDNN True']


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
