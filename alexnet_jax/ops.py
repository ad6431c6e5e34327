"""Convolution and max-pooling formulated for speed on XLA:CPU; plain ``lax`` elsewhere.

Same values as ``lax.conv_general_dilated`` / ``nn.max_pool`` and the same gradients up to float
rounding (``tests/test_ops.py``); only how XLA:CPU runs them differs. What each change bought is
measured in ``experiments/RESULTS.md`` (issue 7).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def split_grouped_conv(lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
    """``lax.conv_general_dilated`` with each feature group run as its own convolution.

    Same parameters, same result as ``feature_group_count=g``, but XLA:CPU runs a grouped
    convolution about 4x slower than an ungrouped one of twice the work (measured with the
    `small` variant, JAX 0.10.2), while g plain convolutions on channel slices run at full
    speed. Assumes channels-last input and HWIO kernels, as Flax's ``nn.Conv`` uses.
    """
    groups = kwargs.pop('feature_group_count', 1)
    if groups == 1:
        return fast_conv(lhs, rhs, *args, **kwargs)
    xs = jnp.split(lhs, groups, axis=-1)
    ws = jnp.split(rhs, groups, axis=-1)
    outs = [fast_conv(x, w, *args, **kwargs) for x, w in zip(xs, ws, strict=True)]
    return jnp.concatenate(outs, axis=-1)


def fast_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    **kwargs: Any,
) -> jax.Array:
    """``lax.conv_general_dilated`` (NHWC input, HWIO kernel) with a faster kernel gradient.

    Same result and gradients up to float rounding; see :func:`_conv` for why. Dilated and
    grouped convolutions, and anything not 2-D with square strides, go to ``lax`` unchanged.
    """
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    groups = kwargs.get('feature_group_count', 1)
    strides = tuple(window_strides)
    general = dilated or groups != 1 or len(strides) != 2 or strides[0] != strides[1]
    if general or jax.default_backend() != 'cpu':  # GPUs/TPUs: their own kernels are the fast path
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, **kwargs
        )
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    padding = tuple(tuple(int(p) for p in pair) for pair in padding)
    return _conv(lhs, rhs, strides[0], padding)


_NHWC = ('NHWC', 'HWIO', 'NHWC')
Padding = tuple[tuple[int, int], ...]


def _plain_conv(x: jax.Array, w: jax.Array, stride: int, padding: Padding) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, w: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """A 2-D NHWC/HWIO convolution whose kernel gradient avoids XLA:CPU's slow path.

    XLA:CPU (JAX 0.10.2) hands 2-D convolutions to YNNPACK, which runs the forward pass and the
    input gradient well, but the kernel gradient that autodiff emits (a convolution contracting
    over the batch, with the output gradient as a 27x27 "kernel" for conv2) at 20-35 GFLOP/s.
    YNNPACK takes only 2-D convolutions, so here the kernel gradient is the same contraction
    written with a third, size-1 spatial dimension, which XLA runs through Eigen instead: 2x
    faster for conv2. A strided convolution (conv1: 11x11 at stride 4) is first folded by
    space-to-depth into a unit-stride one over s*s*C channels, whose kernel gradient is then
    unfolded: Eigen's kernel gradient with a dilated window is slower still (JAX 0.10.2,
    2-core Sapphire Rapids, batch 32: conv1 fwd+dW 880 -> 525 ms, conv2 dW 516 -> 276 ms).
    """
    return _plain_conv(x, w, stride, padding)


def _conv_fwd(x, w, stride, padding):
    return _plain_conv(x, w, stride, padding), (x, w)


def _conv_bwd(stride, padding, residuals, g):
    x, w = residuals
    _, input_vjp = jax.vjp(lambda x: _plain_conv(x, w, stride, padding), x)
    if stride == 1:
        dw = _kernel_gradient(x, g, padding)
    else:
        kh, kw, cin, cout = w.shape
        blocks = _space_to_depth(x, g.shape[1:3], (kh, kw), stride, padding)
        dw = _kernel_gradient(blocks, g, ((0, 0), (0, 0)))  # (bh, bw, s * s * cin, cout)
        bh, bw = dw.shape[:2]
        dw = dw.reshape(bh, bw, stride, stride, cin, cout).transpose(0, 2, 1, 3, 4, 5)
        dw = dw.reshape(bh * stride, bw * stride, cin, cout)[:kh, :kw]
    return input_vjp(g)[0], dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _kernel_gradient(x: jax.Array, g: jax.Array, padding: Padding) -> jax.Array:
    """dW[i, j, c, o] = sum over (b, h, w) of x_padded[b, h + i, w + j, c] * g[b, h, w, o].

    A convolution of x (batch c, features b) by g (input features b, output features o), in
    3-D with a unit third dimension so that XLA:CPU runs it with Eigen (see :func:`_conv`).
    """
    dw = jax.lax.conv_general_dilated(
        x[..., None, :],
        g[..., None, :],
        (1, 1, 1),
        (*padding, (0, 0)),
        dimension_numbers=('CHWDN', 'IHWDO', 'HWDNC'),
    )
    return dw[:, :, 0]


def _space_to_depth(
    x: jax.Array, out_hw: tuple[int, int], kernel_hw: tuple[int, int], s: int, padding: Padding
) -> jax.Array:
    """``x`` padded and folded into s x s blocks: a stride-s conv by a k x k kernel is a unit-
    stride conv of the blocks by a ceil(k/s) x ceil(k/s) kernel over channels (row in block,
    column in block, channel); rows and columns that no output reads are cropped."""
    (top, _), (left, _) = padding
    bh, bw = -(-kernel_hw[0] // s), -(-kernel_hw[1] // s)
    rows, cols = s * (out_hw[0] + bh - 1), s * (out_hw[1] + bw - 1)
    b, height, width, cin = x.shape
    x = jnp.pad(
        x,
        (
            (0, 0),
            (top, max(0, rows - height - top)),
            (left, max(0, cols - width - left)),
            (0, 0),
        ),
    )[:, :rows, :cols]
    x = x.reshape(b, rows // s, s, cols // s, s, cin).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, rows // s, cols // s, s * s * cin)


def max_pool(x: jax.Array, window: int, stride: int, padding: str = 'VALID') -> jax.Array:
    """``nn.max_pool`` over a square window of NHWC ``x``, with a cheaper gradient on XLA:CPU.

    Same values and the same gradient as ``nn.max_pool`` (all of it to the first maximum of each
    window, in row-major order, as XLA's select_and_scatter does). Autodiff of reduce_window
    goes through select_and_scatter, which XLA:CPU runs 3-10x slower than the forward pool; here
    the backward pass records which of the window's taps won and scatters the cotangent with
    strided pads that fuse into one loop (3x faster fwd+bwd on conv1's 32x55x55x96, measured).
    """
    if jax.default_backend() != 'cpu':  # the slow select_and_scatter is XLA:CPU's
        return nn.max_pool(x, (window, window), (stride, stride), padding=padding)
    if padding != 'VALID':
        pads = jax.lax.padtype_to_pads(x.shape[1:3], (window, window), (stride, stride), padding)
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    return _max_pool(x, window, stride)


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
    span_h, span_w = stride * (y.shape[1] - 1) + 1, stride * (y.shape[2] - 1) + 1
    zero = jnp.zeros((), g.dtype)
    dx = jnp.zeros(x.shape, g.dtype)
    for i in range(window):
        for j in range(window):
            mine = jnp.where(winner == i * window + j, g, zero)
            pads = (
                (0, 0, 0),
                (i, x.shape[1] - i - span_h, stride - 1),
                (j, x.shape[2] - j - span_w, stride - 1),
                (0, 0, 0),
            )
            dx = dx + jax.lax.pad(mine, zero, pads)
    return (dx,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
