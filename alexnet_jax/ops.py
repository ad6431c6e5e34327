"""Convolution, bias and max-pooling formulated for speed on XLA:CPU (and GPU).

Same values as ``lax.conv_general_dilated``, ``y + bias`` and ``nn.max_pool``
(:func:`plain_max_pool` here, which other backends run as it is; GPUs use :func:`max_pool` too),
and the same gradients up to float rounding (``tests/test_ops.py``); only how XLA runs them
differs. The dense layers' ``x @ kernel`` is one dot everywhere (:func:`plain_dense`). Nothing
here looks at the backend: ``models.create_model`` picks the kernels for it once
(``layers.kernels_for``). On CPU they assume the YNNPACK fusions that ``alexnet_jax/xla_cpu.py``
turns on. What each choice buys is measured in ``experiments/RESULTS.md`` (issue 19).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def split_grouped_conv(lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
    """``lax.conv_general_dilated`` with each feature group run as its own convolution.

    Same parameters, same result as ``feature_group_count=g``. XLA:CPU hands a grouped
    convolution's kernel gradient to a slow generic loop (16-23 GFLOP/s against 300-340 for an
    ungrouped one, conv2/4/5 of `paper`, JAX 0.10.2), while g plain convolutions on channel
    slices all run in YNNPACK. On an H200 (cuDNN, bf16, batch 256) the two plain calls are 1.7x
    faster than the grouped one too (experiments/benchmarks/grouped_conv.py). Assumes
    channels-last input and HWIO kernels, as Flax's ``nn.Conv`` uses.
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


def space_to_depth_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    **kwargs: Any,
) -> jax.Array:
    """:func:`split_grouped_conv`, with an ungrouped strided convolution run at stride 1.

    Same parameters, same result. A convolution of stride s over few channels (conv1: 11x11 at
    stride 4 over 3 colours) becomes a stride-1 convolution over s x s pixel blocks: the
    input's blocks become s*s*C channels, the kernel is padded with zeros to a multiple of s
    and cut into the same blocks (11x11x3 -> 3x3x48), and each output reads the same pixels with
    the same weights. A GPU's matrix units multiply tiles many channels deep, which 3 channels
    fill poorly; ``experiments/benchmarks/step_parts.py --parts s2d`` measures the difference
    on a GPU. On CPU the model keeps oneDNN's direct conv1: the block form through oneDNN's
    Winograd kernels took 0.87x its forward time and 1.0-1.08x its kernel gradient's, 4 ms of
    a 700 ms step (``experiments/benchmarks/kernel_candidates.py``). Every other convolution
    goes to :func:`split_grouped_conv`. Assumes NHWC input and HWIO kernels, as
    :class:`alexnet_jax.layers.Conv2D` passes them.
    """
    dims = ('NHWC', 'HWIO', 'NHWC')
    extra = dict(kwargs)
    groups = extra.pop('feature_group_count', 1)
    layout = tuple(extra.pop('dimension_numbers', None) or ())
    s = window_strides[0]
    if s == 1 or tuple(window_strides) != (s, s) or groups != 1 or layout != dims or extra:
        return split_grouped_conv(lhs, rhs, window_strides, padding, **kwargs)
    x, w = space_to_depth(lhs, rhs, s, padding)
    return jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID', dimension_numbers=dims)


def space_to_depth(
    lhs: jax.Array, rhs: jax.Array, stride: int, padding: str | Sequence[tuple[int, int]]
) -> tuple[jax.Array, jax.Array]:
    """The input and kernel of :func:`space_to_depth_conv`'s stride-1 VALID convolution.

    ``lhs`` NHWC, ``rhs`` HWIO, convolved at ``stride`` with ``padding``: the input padded (or
    cropped) to the stride blocks its outputs read, each block one pixel of stride**2 * C
    channels, and the kernel zero-padded to whole blocks and cut the same way.
    """
    n, height, width, channels = lhs.shape
    kh, kw, _, features = rhs.shape
    s = stride
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads((height, width), (kh, kw), (s, s), padding)
    (top, bottom), (left, right) = padding
    out_h = (height + top + bottom - kh) // s + 1
    out_w = (width + left + right - kw) // s + 1
    bh, bw = -(-kh // s), -(-kw // s)  # kernel size in blocks
    # Pad (or crop) the input to exactly the blocks the outputs read: s * (out + blocks - 1).
    rows, cols = s * (out_h + bh - 1), s * (out_w + bw - 1)
    x = jax.lax.pad(
        lhs,
        jnp.zeros((), lhs.dtype),
        ((0, 0, 0), (top, rows - height - top, 0), (left, cols - width - left, 0), (0, 0, 0)),
    )
    x = x.reshape(n, rows // s, s, cols // s, s, channels).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(n, rows // s, cols // s, s * s * channels)
    w = jnp.pad(rhs, ((0, bh * s - kh), (0, bw * s - kw), (0, 0), (0, 0)))
    w = w.reshape(bh, s, bw, s, channels, features).transpose(0, 2, 1, 3, 4, 5)
    return x, w.reshape(bh, bw, s * s * channels, features)


def plain_dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` as one dot, as ``nn.Dense`` computes it (every backend runs it)."""
    return jax.lax.dot_general(x, kernel, (((1,), (0,)), ((), ())))


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
    """``nn.max_pool`` over a square window of NHWC ``x``, as two 1-D pools with cheap gradients.

    Same values and the same gradient as ``nn.max_pool`` (all of it to the first maximum of each
    window, in row-major order, as XLA's select_and_scatter does). The square window is a pool
    along the width and then one along the height: pooling the width first and taking the first
    maximum in each pass picks the window's first maximum in row-major order. Each pass keeps
    which of its ``window`` taps won (int8), so the backward pass reads only the cotangent and
    those indices, never the input. Autodiff of ``reduce_window`` goes through
    select_and_scatter, which XLA runs slowly. On XLA:CPU (batch 32, fp32, 2 cores, JAX 0.10.2)
    a pool's forward and backward take 3.6-11x less time than autodiff's, and 1.0-4.9x less (most
    for pool5) than the earlier form of this function, which kept the input and scattered the
    whole window at once (``experiments/logs/2026-12-03-vm-issue19-pool/``;
    ``experiments/benchmarks/max_pool.py`` measures it on any backend). Backends other than CPU
    and GPU keep autodiff (:func:`plain_max_pool`); on GPU this form is not measured yet (the
    earlier one was faster than autodiff there).
    """
    if padding != 'VALID':
        pads = jax.lax.padtype_to_pads(x.shape[1:3], (window, window), (stride, stride), padding)
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    return _max_pool_1d(_max_pool_1d(x, window, stride, 2), window, stride, 1)


def plain_max_pool(x: jax.Array, window: int, stride: int, padding: str = 'VALID') -> jax.Array:
    """``nn.max_pool`` over a square window, differentiated by autodiff (select_and_scatter)."""
    return nn.max_pool(x, (window, window), (stride, stride), padding=padding)


def _max_and_winner(x: jax.Array, window: int, stride: int, axis: int):
    """The VALID max-pool of ``x`` along ``axis`` and, per output, the first tap that holds it."""
    out = (x.shape[axis] - window) // stride + 1
    span = stride * (out - 1) + 1
    taps = [jax.lax.slice_in_dim(x, t, t + span, stride, axis) for t in range(window)]
    y, winner = taps[0], jnp.zeros(taps[0].shape, jnp.int8)
    for t, tap in enumerate(taps[1:], start=1):
        wins = (tap > y) | jnp.isnan(tap)  # strictly greater: ties stay with the first; NaN wins
        y = jnp.where(wins, tap, y)
        winner = jnp.where(wins, jnp.int8(t), winner)
    return y, winner


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_1d(x: jax.Array, window: int, stride: int, axis: int) -> jax.Array:
    return _max_and_winner(x, window, stride, axis)[0]


def _max_pool_1d_fwd(x, window, stride, axis):
    y, winner = _max_and_winner(x, window, stride, axis)
    return y, (winner, x.shape[axis])


def _max_pool_1d_bwd(window, stride, axis, residuals, g):
    winner, size = residuals
    # Input position stride * q + r is tap r + stride * m of output q - m: each of the stride
    # phases r is a sum of shifted, masked copies of g at the output's length, and the phases
    # interleave into the gradient in one copy.
    out, zero = g.shape[axis], jnp.zeros((), g.dtype)
    per_phase = -(-size // stride)
    phases = []
    for r in range(stride):
        phase = jnp.zeros((*g.shape[:axis], per_phase, *g.shape[axis + 1 :]), g.dtype)
        for t in range(r, window, stride):
            shift = t // stride  # lax.pad crops where the high padding is negative
            pads = [(0, 0, 0)] * g.ndim
            pads[axis] = (shift, per_phase - out - shift, 0)
            phase = phase + jax.lax.pad(jnp.where(winner == t, g, zero), zero, pads)
        phases.append(phase)
    dx = jnp.stack(phases, axis=axis + 1)
    dx = dx.reshape(*g.shape[:axis], per_phase * stride, *g.shape[axis + 1 :])
    return (jax.lax.slice_in_dim(dx, 0, size, axis=axis),)


_max_pool_1d.defvjp(_max_pool_1d_fwd, _max_pool_1d_bwd)
