"""Convolution, dense layer, bias and max-pooling formulated for speed on XLA:CPU (and GPU).

Same values as ``lax.conv_general_dilated``, ``x @ kernel``, ``y + bias`` and ``nn.max_pool``
(:func:`plain_dense` and :func:`plain_max_pool` here, which other backends run as they are; the
max-pool gradient is also faster on GPU), and the same gradients up to float rounding
(``tests/test_ops.py``); only how XLA runs them differs. Nothing here looks at the backend:
``models.create_model`` picks the kernels for it once (``layers.kernels_for``). On CPU they
assume the YNNPACK fusions that ``alexnet_jax/xla_cpu.py`` turns on. What each change bought is
measured in ``experiments/RESULTS.md`` (issue 7).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def split_grouped_conv(lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
    """``lax.conv_general_dilated`` with each feature group run as its own convolution.

    Same parameters, same result as ``feature_group_count=g``. XLA:CPU hands a grouped
    convolution's kernel gradient to a slow generic loop (16-23 GFLOP/s against 300-340 for an
    ungrouped one, conv2/4/5 of `paper`, JAX 0.10.2), while g plain convolutions on channel
    slices all run in YNNPACK. Assumes channels-last input and HWIO kernels, as Flax's
    ``nn.Conv`` uses.
    """
    groups = kwargs.pop('feature_group_count', 1)
    if groups == 1:
        return jax.lax.conv_general_dilated(lhs, rhs, *args, feature_group_count=groups, **kwargs)
    xs = jnp.split(lhs, groups, axis=-1)
    ws = jnp.split(rhs, groups, axis=-1)
    outs = [
        jax.lax.conv_general_dilated(x, w, *args, **kwargs) for x, w in zip(xs, ws, strict=True)
    ]
    return jnp.concatenate(outs, axis=-1)


def dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` for ``x`` [batch, in] and ``kernel`` [in, out], as ``nn.Dense`` computes it.

    On XLA:CPU the forward product is written as a 1x1 convolution. YNNPACK runs ``x @ kernel``
    with a small batch and a large kernel at about half the speed of XLA's Eigen product, while
    it runs the backward products fast (Eigen is several times slower at ``dx``). XLA turns the
    1x1 convolution into a dot after YNNPACK has claimed its dots, so the forward goes to Eigen;
    the custom gradient keeps the backward in YNNPACK (JAX 0.10.2). fc6-8 then take half the
    time of PyTorch's (``experiments/logs/2026-12-03-vm-issue19/layers.log``).
    """
    return _dense(x, kernel)


def plain_dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` as one dot, as ``nn.Dense`` computes it (the kernel other backends run)."""
    return jax.lax.dot_general(x, kernel, (((1,), (0,)), ((), ())))


@jax.custom_vjp
def _dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    dims = ('NHWC', 'HWIO', 'NHWC')
    y = jax.lax.conv_general_dilated(
        x[:, None, None], kernel[None, None], (1, 1), 'VALID', dimension_numbers=dims
    )
    return y[:, 0, 0]


def _dense_fwd(x, kernel):
    return _dense(x, kernel), (x, kernel)


def _dense_bwd(residuals, g):
    x, kernel = residuals
    dx = jax.lax.dot_general(g, kernel, (((1,), (1,)), ((), ())))
    dkernel = jax.lax.dot_general(x, g, (((0,), (0,)), ((), ())))
    return dx, dkernel


_dense.defvjp(_dense_fwd, _dense_bwd)


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y + bias`` over the last axis, whose bias gradient is a matrix product on XLA:CPU.

    The gradient of a broadcast add is a sum over every other axis. With YNNPACK's fusions on,
    XLA:CPU runs such a reduction 15-30x slower than without them (conv1's bias gradient,
    32x55x55x64: 23 ms), while the same sum written as ``ones @ g`` goes to YNNPACK: 2 ms.
    """
    return _add_bias(y, bias)


@jax.custom_vjp
def _add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    return y + bias


def _add_bias_fwd(y, bias):
    return y + bias, jnp.zeros((0,), bias.dtype)  # only the dtype is needed: no residual


def _add_bias_bwd(residual, g):
    rows = g.reshape(-1, g.shape[-1])
    ones = jnp.ones((1, rows.shape[0]), g.dtype)
    dbias = jax.lax.dot(ones, rows, preferred_element_type=jnp.float32)[0]
    return g, dbias.astype(residual.dtype)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def max_pool(x: jax.Array, window: int, stride: int, padding: str = 'VALID') -> jax.Array:
    """``nn.max_pool`` over a square window of NHWC ``x``, with a cheaper gradient.

    Same values and the same gradient as ``nn.max_pool`` (all of it to the first maximum of each
    window, in row-major order, as XLA's select_and_scatter does). Autodiff of reduce_window
    goes through select_and_scatter, which XLA runs slowly on CPU and GPU; here the backward
    pass records which of the window's taps won and scatters the cotangent phase by phase. On
    XLA:CPU (batch 32, fp32, 2 cores, JAX 0.10.2, YNNPACK fusions on) a pool's forward and
    backward take 2.1-2.9x less time than autodiff's, and the whole training step 3-7% less
    (``experiments/logs/2026-12-03-vm-issue19/max_pool.log``; ``experiments/benchmarks/
    max_pool.py`` measures it on any backend). GPUs use it too: an H200 run measured it faster
    there (experiments/RESULTS.md, issue 7; that run's log was pasted, not kept).
    Other backends (TPU: not measured) keep autodiff (:func:`plain_max_pool`).
    """
    if padding != 'VALID':
        pads = jax.lax.padtype_to_pads(x.shape[1:3], (window, window), (stride, stride), padding)
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    return _max_pool(x, window, stride)


def plain_max_pool(x: jax.Array, window: int, stride: int, padding: str = 'VALID') -> jax.Array:
    """``nn.max_pool`` over a square window, differentiated by autodiff (select_and_scatter)."""
    return nn.max_pool(x, (window, window), (stride, stride), padding=padding)


def _reduce_max(x: jax.Array, window: int, stride: int) -> jax.Array:
    dims, strides = (1, window, window, 1), (1, stride, stride, 1)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, 'VALID')


def _window_taps(x: jax.Array, y: jax.Array, stride: int, window: int):
    """For each tap (i, j) of the window: its offset and the strided view of ``x`` it sees."""
    span_h, span_w = stride * (y.shape[1] - 1) + 1, stride * (y.shape[2] - 1) + 1
    for i in range(window):
        for j in range(window):
            yield i, j, x[:, i : i + span_h : stride, j : j + span_w : stride]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    return _reduce_max(x, window, stride)


def _max_pool_fwd(x, window, stride):
    y = _reduce_max(x, window, stride)
    return y, (x, y)


def _max_pool_bwd(window, stride, residuals, g):
    x, y = residuals
    # The first tap (row-major) that holds the maximum wins the whole cotangent.
    winner = jnp.full(y.shape, window * window, jnp.int8)
    for i, j, view in reversed(list(_window_taps(x, y, stride, window))):
        winner = jnp.where(view == y, jnp.int8(i * window + j), winner)
    # Scatter by phase: input row stride * q + r receives from tap r + stride * m of output row
    # q - m. Each of the stride x stride phases is a sum of shifted, masked copies of g at the
    # output's resolution (one fused loop), and the phases interleave into dx in one copy.
    zero = jnp.zeros((), g.dtype)
    (b, out_h, out_w, c), (in_h, in_w) = y.shape, x.shape[1:3]
    q_h, q_w = -(-in_h // stride), -(-in_w // stride)
    rows = []
    for ry in range(stride):
        phases = []
        for rx in range(stride):
            phase = jnp.zeros((b, q_h, q_w, c), g.dtype)
            for ty in range(ry, window, stride):
                for tx in range(rx, window, stride):
                    mine = jnp.where(winner == ty * window + tx, g, zero)
                    my, mx = ty // stride, tx // stride  # lax.pad crops where negative
                    pads = ((0, 0, 0), (my, q_h - out_h - my, 0), (mx, q_w - out_w - mx, 0))
                    phase = phase + jax.lax.pad(mine, zero, (*pads, (0, 0, 0)))
            phases.append(phase)
        rows.append(jnp.stack(phases, axis=3))  # [b, q_h, q_w, rx, c]
    dx = jnp.stack(rows, axis=2).reshape(b, q_h * stride, q_w * stride, c)
    return (dx[:, :in_h, :in_w],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
