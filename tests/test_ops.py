"""The CPU-friendly ops against lax's and flax's own, and the process settings of xla_cpu.py."""

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import layers, ops

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _lax_conv(x, w, strides, padding, groups=1):
    return jax.lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=NHWC, feature_group_count=groups
    )


def _conv2d(backend, *args, **kwargs):
    """layers.Conv2D with the kernels create_model picks for ``backend``."""
    kernels = layers.kernels_for(backend)
    return layers.Conv2D(
        *args, conv_general_dilated=kernels.conv, add_bias=kernels.add_bias, **kwargs
    )


def _dense(backend, *args, **kwargs):
    kernels = layers.kernels_for(backend)
    return layers.Dense(*args, dense=kernels.dense, add_bias=kernels.add_bias, **kwargs)


@pytest.mark.parametrize('backend', ['cpu', 'gpu', 'tpu'])
@pytest.mark.parametrize(
    ('shape', 'kernel', 'stride', 'padding', 'groups'),
    [
        ((2, 27, 27, 3), 11, 4, 'VALID', 1),  # conv1 of `paper`, shrunk
        ((2, 26, 26, 3), 11, 4, ((2, 2), (2, 2)), 1),  # conv1 of `owt`
        ((2, 9, 9, 6), 5, 1, ((2, 2), (2, 2)), 2),  # conv2, two towers
        ((2, 7, 7, 4), 3, 1, 'SAME', 1),  # conv3-5
    ],
)
def test_conv2d_equals_flax_conv_in_parameters_values_and_gradients(
    shape, kernel, stride, padding, groups, backend
):
    """layers.Conv2D (CPU: ops.split_grouped_conv + ops.add_bias) against flax's own nn.Conv."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    kwargs = dict(strides=stride, padding=padding, feature_group_count=groups)
    bias_init = nn.initializers.normal(1.0)  # nonzero, so the bias's part of the sum shows
    ours = _conv2d(backend, 8, kernel, bias_init=bias_init, **kwargs)
    ref = nn.Conv(8, (kernel, kernel), bias_init=bias_init, **kwargs)
    params = ours.init(jax.random.key(0), x)
    ref_params = ref.init(jax.random.key(0), x)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_array_equal(a, b)  # same names, shapes and initial values
    assert jax.tree.structure(params) == jax.tree.structure(ref_params)

    def loss(module, params, x):
        y = module.apply(params, x)
        return jnp.sum(y * jnp.cos(y))  # a cotangent that differs everywhere

    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-4, atol=1e-4)
    g_ours = jax.grad(loss, argnums=(1, 2))(ours, params, x)
    g_ref = jax.grad(loss, argnums=(1, 2))(ref, params, x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize('backend', ['cpu', 'gpu', 'tpu'])
@pytest.mark.parametrize(('batch', 'inputs', 'features'), [(4, 72, 40), (1, 9, 3), (32, 300, 17)])
def test_dense_equals_flax_dense_in_parameters_values_and_gradients(
    batch, inputs, features, backend
):
    """layers.Dense (CPU: one dot + ops.add_bias) against flax's own nn.Dense, in float64."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(batch, inputs)), jnp.float32)
    bias_init = nn.initializers.normal(1.0)
    ours = _dense(backend, features, bias_init=bias_init)
    ref = nn.Dense(features, bias_init=bias_init)
    params, ref_params = ours.init(jax.random.key(1), x), ref.init(jax.random.key(1), x)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(params) == jax.tree.structure(ref_params)

    kernel = np.asarray(params['params']['kernel'], np.float64)
    bias = np.asarray(params['params']['bias'], np.float64)
    x64 = np.asarray(x, np.float64)
    y64 = x64 @ kernel + bias
    np.testing.assert_allclose(ours.apply(params, x), y64, rtol=1e-5, atol=1e-5)
    cot = rng.normal(size=y64.shape)  # d loss / dy for loss = sum(y * cot)
    grads = jax.grad(lambda p, x: jnp.sum(ours.apply(p, x) * cot), argnums=(0, 1))(params, x)
    np.testing.assert_allclose(grads[0]['params']['kernel'], x64.T @ cot, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[0]['params']['bias'], cot.sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[1], cot @ kernel.T, rtol=1e-5, atol=1e-5)


def test_add_bias_gradient_is_the_sum_over_positions():
    rng = np.random.default_rng(2)
    y = jnp.asarray(rng.normal(size=(3, 5, 4, 6)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(6,)), jnp.float32)
    cot = rng.normal(size=y.shape)
    dy, dbias = jax.vjp(ops.add_bias, y, bias)[1](jnp.asarray(cot, jnp.float32))
    np.testing.assert_allclose(dbias, cot.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dy, cot, rtol=1e-6)
    np.testing.assert_allclose(ops.add_bias(y, bias), np.asarray(y) + np.asarray(bias), rtol=1e-6)


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
    ('shape', 'kernel', 'stride', 'padding', 'features'),
    [
        ((2, 227, 227, 3), 11, 4, 'VALID', 8),  # conv1 of `paper`: the input padded by 1
        ((2, 230, 230, 3), 11, 4, 'VALID', 8),  # the last 2 rows and columns cropped (unread)
        ((2, 224, 224, 3), 11, 4, ((2, 2), (2, 2)), 8),  # conv1 of `owt`: padded
        ((2, 30, 31, 3), 5, 2, 'SAME', 4),  # height and width differ, uneven SAME padding
        ((1, 17, 15, 5), 3, 2, ((1, 0), (0, 2)), 3),  # uneven explicit padding
        ((2, 20, 20, 2), 4, 4, 'VALID', 3),  # kernel = stride: one block
    ],
)
def test_space_to_depth_conv_equals_the_strided_conv_with_both_gradients(
    shape, kernel, stride, padding, features
):
    """The stride-1 block form against lax's strided convolution: values, input and kernel
    gradients, at full float32 precision on both sides."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, shape[-1], features)), jnp.float32)
    strides = (stride, stride)
    ours = lambda x, w: ops.space_to_depth_conv(x, w, strides, padding, dimension_numbers=NHWC)
    ref = lambda x, w: _lax_conv(x, w, strides, padding)
    with jax.default_matmul_precision('highest'):
        y_ours, y_ref = ours(x, w), ref(x, w)
        cot = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
        g_ours = jax.vjp(ours, x, w)[1](cot)
        g_ref = jax.vjp(ref, x, w)[1](cot)
    assert y_ours.shape == y_ref.shape
    np.testing.assert_allclose(y_ours, y_ref, rtol=1e-5, atol=1e-4)
    for a, b in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)


def test_space_to_depth_conv_leaves_other_convolutions_to_split_grouped_conv(monkeypatch):
    """Stride 1, grouped or differently laid out convolutions never take the block form."""
    calls = []
    monkeypatch.setattr(ops, 'split_grouped_conv', lambda *a, **k: calls.append(k) or 0)
    x, w = jnp.ones((1, 9, 9, 4)), jnp.ones((3, 3, 2, 4))
    ops.space_to_depth_conv(x, w, (1, 1), 'SAME', dimension_numbers=NHWC)
    ops.space_to_depth_conv(x, w, (2, 2), 'SAME', dimension_numbers=NHWC, feature_group_count=2)
    ops.space_to_depth_conv(x, w, (2, 1), 'SAME', dimension_numbers=NHWC)
    ops.space_to_depth_conv(x, w, (2, 2), 'SAME', dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
    assert len(calls) == 4
    y = ops.space_to_depth_conv(x, jnp.ones((3, 3, 4, 4)), (2, 2), 'SAME', dimension_numbers=NHWC)
    assert len(calls) == 4 and y.shape == (1, 5, 5, 4)


@pytest.mark.parametrize(
    ('shape', 'window', 'stride', 'padding'),
    [
        ((2, 13, 13, 4), 3, 2, 'VALID'),  # overlapping, as the paper
        ((2, 12, 12, 4), 2, 2, 'VALID'),  # non-overlapping
        ((2, 7, 7, 3), 3, 2, 'SAME'),  # the small variant's padded pools
        ((2, 11, 14, 3), 3, 2, 'VALID'),  # height and width differ
        ((2, 13, 9, 3), 2, 2, 'VALID'),  # the last row and column are in no window
        ((1, 10, 10, 2), 3, 3, 'VALID'),  # stride = window
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


@pytest.mark.parametrize('where', [(0, 0), (1, 2), (2, 1), (4, 4)])
def test_max_pool_passes_nan_on_as_flax_does(where):
    """A NaN anywhere in a window makes that output NaN (a NaN guard downstream must see it)."""
    x = np.random.default_rng(3).normal(size=(1, 7, 7, 2)).astype(np.float32)
    x[0, where[0], where[1], 1] = np.nan
    ours = np.asarray(ops.max_pool(jnp.asarray(x), 3, 2))
    ref = np.asarray(nn.max_pool(jnp.asarray(x), (3, 3), (2, 2)))
    assert np.isnan(ref).any()
    np.testing.assert_array_equal(ours, ref)  # NaN where the reference has NaN, else equal


def test_max_pool_bfloat16_equals_flax():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 13, 13, 8)), jnp.bfloat16)
    cot = jnp.asarray(np.random.default_rng(5).normal(size=(2, 6, 6, 8)), jnp.bfloat16)
    ref = lambda x: nn.max_pool(x, (3, 3), (2, 2))
    ours = lambda x: ops.max_pool(x, 3, 2)
    np.testing.assert_array_equal(ours(x), ref(x))
    grad = lambda f: np.asarray(jax.grad(lambda x: jnp.sum(f(x) * cot))(x), np.float32)
    # Where windows overlap, up to four cotangents add up, in another order and with bfloat16
    # rounding in between (2^-8 of each), so equal to bfloat16's resolution, not bit for bit.
    np.testing.assert_allclose(grad(ours), grad(ref), rtol=2**-6, atol=2**-5)
    np.testing.assert_array_equal(grad(ours) != 0, grad(ref) != 0)  # the same winners


def test_ops_and_the_model_never_ask_for_the_backend_when_traced(monkeypatch):
    """The kernels are chosen once, by create_model: tracing never reads jax.default_backend()."""
    from alexnet_jax import models

    model = models.variant('small', num_classes=10, backend='cpu')  # reads nothing either
    images = jnp.zeros((2, 28, 28, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))

    def asked():
        raise AssertionError('jax.default_backend() called while tracing')

    monkeypatch.setattr(jax, 'default_backend', asked)
    rngs = {'dropout': jax.random.key(1)}
    loss = lambda p: jnp.sum(model.apply({'params': p}, images, train=True, rngs=rngs))
    grads = jax.eval_shape(jax.grad(loss), variables['params'])
    assert jax.tree.structure(grads) == jax.tree.structure(variables['params'])
    with pytest.raises(AssertionError, match='default_backend'):  # the patch does bite
        models.variant('small')


def _run_python(code: str, **env: str) -> str:
    import subprocess
    import sys

    env = {
        **{k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'GLIBC_TUNABLES')},
        **env,
    }
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


# Allocates a 64 MB output 56 times, each dropped before the next, and counts the pages the kernel
# faulted in for the last 16. With the memory kept, the heap grows while it settles (here to ~7
# such blocks, as their frees lag, within ~30 calls) and then not at all; without, every
# allocation faults.
_FAULTS = """
import resource, sys
from alexnet_jax import xla_cpu
print(xla_cpu.keep_host_memory())
import jax, jax.numpy as jnp
double = jax.jit(lambda a: a * 2.0)
a = jnp.ones((4096, 4096), jnp.float32)
for _ in range(40):
    double(a).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(16):
    double(a).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_keep_host_memory_reuses_freed_pages_and_can_be_turned_off():
    pages = 16 * 64 * 2**20 // 4096  # a fresh 64 MB output, 16 times
    applied, faults = _run_python(_FAULTS).split()
    assert applied == 'True' and int(faults) < pages // 4
    applied, faults = _run_python(_FAULTS, ALEXNET_JAX_KEEP_HOST_MEMORY='0').split()
    assert applied == 'False' and int(faults) > 3 * pages // 4  # glibc's default: mmap, unmap


def test_keep_host_memory_only_for_the_cpu_backend():
    code = (
        'from alexnet_jax import xla_cpu; print(xla_cpu.runs_on_cpu(), xla_cpu.keep_host_memory())'
    )
    assert _run_python(code, JAX_PLATFORMS='cuda,cpu').split() == ['False', 'False']
    assert _run_python(code, JAX_PLATFORMS='cpu').split()[0] == 'True'


# glibc's own behaviour, the reason for the tcache tunable: an aligned 64 MB block is freed
# (a block allocated after it keeps it from merging into the top of the heap) and asked for
# again, ten times, after the caches of small free blocks were emptied (so that they have room
# for the pieces an aligned allocation cuts off, as in a busy process). Prints how often the
# new block went elsewhere.
_ALIGNED_REUSE = """
import ctypes, os
from alexnet_jax import xla_cpu
xla_cpu.exec_with_malloc_tunables()
print(os.environ.get('GLIBC_TUNABLES'), xla_cpu.keep_host_memory())
libc = ctypes.CDLL(None)
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def aligned(n):
    p = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(p), 64, n) == 0
    return p.value
drained = [libc.malloc(n) for n in range(8, 128, 8) for _ in range(16)]  # empty small caches
moved = 0
for _ in range(10):
    a = aligned(64 << 20)
    libc.malloc(4096)  # kept
    libc.free(a)
    b = aligned(64 << 20)
    moved += b != a
    libc.free(b)
print(moved)
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_the_restart_sets_the_tcache_tunable_once_and_keeps_the_users():
    code = (
        "import os; print('start', os.environ.get('GLIBC_TUNABLES'), flush=True)\n"
        'from alexnet_jax import xla_cpu; xla_cpu.exec_with_malloc_tunables()\n'
        "print('on', os.environ.get('GLIBC_TUNABLES'))"
    )
    on = 'glibc.malloc.tcache_count=0'
    assert _run_python(code, JAX_PLATFORMS='cpu').splitlines() == [
        'start None',
        f'start {on}',
        f'on {on}',
    ]
    mine = 'glibc.malloc.arena_max=2'
    lines = _run_python(code, JAX_PLATFORMS='cpu', GLIBC_TUNABLES=mine).splitlines()
    assert lines[-1] == f'on {mine}:{on}' and len(lines) == 3
    theirs = 'glibc.malloc.tcache_count=3'
    lines = _run_python(code, JAX_PLATFORMS='cpu', GLIBC_TUNABLES=theirs).splitlines()
    assert lines == [f'start {theirs}', f'on {theirs}']  # theirs kept, no restart
    for off in ({'ALEXNET_JAX_KEEP_HOST_MEMORY': '0'}, {'JAX_PLATFORMS': 'cuda,cpu'}):
        assert _run_python(code, **off).splitlines() == ['start None', 'on None']


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_with_the_tcache_off_glibc_reuses_a_freed_aligned_block():
    # The first block comes from the top of the heap and may move once.
    tunables, applied, moved = _run_python(_ALIGNED_REUSE, JAX_PLATFORMS='cpu').split()
    assert tunables == 'glibc.malloc.tcache_count=0' and applied == 'True' and int(moved) <= 1
    import platform

    version = tuple(int(v) for v in platform.libc_ver()[1].split('.')[:2])
    if version < (2, 39):  # 2.39 merges the pieces itself (glibc bug 30723)
        cached = {'JAX_PLATFORMS': 'cpu', 'GLIBC_TUNABLES': 'glibc.malloc.tcache_count=7'}
        assert int(_run_python(_ALIGNED_REUSE, **cached).split()[-1]) >= 3
