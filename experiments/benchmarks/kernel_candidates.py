"""Kernels tried for issue 19 and not kept: each against the one the model uses, side by side.

PyTorch's CPU step is ahead of ours on conv1 and on the max-pools (``layers.py``). Candidates:
- conv1 (11x11, stride 4, 3 channels) as a stride-1 convolution over 4x4 space-to-depth blocks
  (48 channels, the kernel zero-padded to 12x12), and as an explicit patch matrix product
  (``lax.conv_general_dilated_patches``), each through XLA; and oneDNN's direct kernels (what
  training runs on CPU) against the block form through oneDNN (Winograd's algorithm there).
  Timed: forward and kernel gradient (the step needs no input gradient of conv1), with the
  largest difference from ``lax.conv_general_dilated``.
- max-pool: the forward pass as a maximum over the window's taps that also records the winning
  tap (an argmax over the stacked taps, int8, the only residual), the backward pass one strided
  pad per tap, summed. Timed alone (forward + backward, checked equal to ``ops.max_pool``) and
  inside the whole training step (``max_pool.step_times``), alternating with the unchanged step.

    python experiments/benchmarks/kernel_candidates.py [--batch 32] [--repeats 9] \
        [--parts conv1,pools,step]
"""

import argparse
import functools
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)

from alexnet_jax import runtime  # noqa: E402

runtime.configure(keep_host_memory=True)  # first: the process settings a training run has

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax import onednn_conv, ops  # noqa: E402
from experiments.benchmarks import max_pool  # noqa: E402
from experiments.benchmarks.lrn import time_call  # noqa: E402

DIMS = ('NHWC', 'HWIO', 'NHWC')
# (variant, input size, kernels, padding) of conv1: 11x11, stride 4
CONV1 = (('owt', 224, 64, 2), ('paper', 227, 96, 0))
# (variant, pool input: height = width, channels)
POOLS = (('owt', 55, 64), ('owt', 27, 192), ('paper', 55, 96), ('paper', 27, 256))


def lax_conv(x: jax.Array, w: jax.Array, stride: int, pad: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, w, (stride,) * 2, [(pad, pad)] * 2, dimension_numbers=DIMS
    )


def space_to_depth_conv(x: jax.Array, w: jax.Array, stride: int, pad: int) -> jax.Array:
    """The strided convolution as a stride-1 one over stride x stride blocks of the input."""
    x, w = ops.space_to_depth(x, w, stride, [(pad, pad)] * 2)
    return jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID', dimension_numbers=DIMS)


def onednn_conv1(x: jax.Array, w: jax.Array, stride: int, pad: int) -> jax.Array:
    """oneDNN's direct kernels, as training runs conv1 on CPU (``layers.kernels_for``)."""
    return onednn_conv.conv(x, w, (stride,) * 2, [(pad, pad)] * 2, dimension_numbers=DIMS)


def space_to_depth_onednn(x: jax.Array, w: jax.Array, stride: int, pad: int) -> jax.Array:
    """The block form run by oneDNN's primitives, which pick Winograd for it on AVX-512 (48
    channels, 3x3, stride 1; ``onednn_conv.conv`` would leave it to XLA below AVX-512)."""
    x, w = ops.space_to_depth(x, w, stride, [(pad, pad)] * 2)
    return onednn_conv._conv(x, w, (1, 1, 0, 0, 0, 0))


def patch_conv(x: jax.Array, w: jax.Array, stride: int, pad: int) -> jax.Array:
    """The convolution as one matrix product of the image patches with the kernel."""
    k, c, features = w.shape[0], w.shape[2], w.shape[3]
    patches = jax.lax.conv_general_dilated_patches(
        x, (k, k), (stride, stride), [(pad, pad)] * 2, dimension_numbers=DIMS
    )
    # The patches' features run channel-major, then kernel row and column.
    return patches @ w.transpose(2, 0, 1, 3).reshape(c * k * k, features)


def _max_and_winner(x: jax.Array, window: int, stride: int) -> tuple[jax.Array, jax.Array]:
    out = (x.shape[1] - window) // stride + 1
    span = stride * (out - 1) + 1
    taps = jnp.stack(
        [
            x[:, i : i + span : stride, j : j + span : stride]
            for i in range(window)
            for j in range(window)
        ]
    )
    return jnp.max(taps, axis=0), jnp.argmax(taps, axis=0).astype(jnp.int8)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _tap_winner_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    return _max_and_winner(x, window, stride)[0]


def _tap_winner_fwd(x, window, stride):
    y, winner = _max_and_winner(x, window, stride)
    return y, (winner, jnp.zeros((*x.shape[1:3], 0), x.dtype))  # the input's size, no data


def _tap_winner_bwd(window, stride, residuals, g):
    winner, size = residuals
    (_, out, _, _), (in_h, in_w) = g.shape, size.shape[:2]
    span = stride * (out - 1) + 1
    zero = jnp.zeros((), g.dtype)
    dx = jnp.zeros((g.shape[0], in_h, in_w, g.shape[3]), g.dtype)
    for tap in range(window * window):
        i, j = divmod(tap, window)
        mine = jnp.where(winner == tap, g, zero)
        rows, cols = (i, in_h - i - span, stride - 1), (j, in_w - j - span, stride - 1)
        dx = dx + jax.lax.pad(mine, zero, ((0, 0, 0), rows, cols, (0, 0, 0)))
    return (dx,)


_tap_winner_pool.defvjp(_tap_winner_fwd, _tap_winner_bwd)


def tap_winner_max_pool(x: jax.Array, window: int, stride: int, padding: str = 'VALID'):
    assert padding == 'VALID', "the candidate covers the model's VALID pools only"
    return _tap_winner_pool(x, window, stride)


CONV1_VERSIONS = (
    ('lax', lax_conv),
    ('space_to_depth', space_to_depth_conv),
    ('patches', patch_conv),
    ('onednn', onednn_conv1),
    ('space_to_depth, onednn', space_to_depth_onednn),
)


def _ready(fn, *args):
    return jax.block_until_ready(fn(*args))


def conv1_rows(args: argparse.Namespace, rng: np.random.Generator) -> None:
    print('| conv1 | version | forward ms | kernel grad ms | max abs diff |')
    print('|---|---|---:|---:|---:|')
    for variant, size, features, pad in CONV1:
        x = jnp.asarray(rng.normal(size=(args.batch, size, size, 3)), jnp.float32)
        w = jnp.asarray(0.01 * rng.normal(size=(11, 11, 3, features)), jnp.float32)
        reference = lax_conv(x, w, 4, pad)
        g = jnp.asarray(rng.normal(size=reference.shape), jnp.float32)
        for name, conv in CONV1_VERSIONS:
            fwd = jax.jit(lambda x, w, conv=conv, pad=pad: conv(x, w, 4, pad))
            dw = jax.jit(
                lambda x, w, g, conv=conv, pad=pad: jax.vjp(lambda w: conv(x, w, 4, pad), w)[1](g)
            )
            diff = float(jnp.max(jnp.abs(fwd(x, w) - reference)))
            a = time_call(functools.partial(_ready, fwd, x, w), 2, args.repeats)
            b = time_call(functools.partial(_ready, dw, x, w, g), 2, args.repeats)
            print(f'| {variant} | {name} | {a:.1f} | {b:.1f} | {diff:.1e} |', flush=True)


def pool_rows(args: argparse.Namespace, rng: np.random.Generator) -> None:
    print('\n| pool input | ops.max_pool fwd+bwd ms | tap winner ms | ratio | same values |')
    print('|---|---:|---:|---:|---|')
    for variant, size, channels in POOLS:
        x = jnp.asarray(np.maximum(rng.normal(size=(args.batch, size, size, channels)), 0))
        x = x.astype(jnp.float32)
        g = jnp.asarray(rng.normal(size=ops.max_pool(x, 3, 2).shape), jnp.float32)
        results = {}
        for name, pool in (('ops', ops.max_pool), ('candidate', tap_winner_max_pool)):

            def both(x, g, pool=pool):
                y, vjp = jax.vjp(lambda x: pool(x, 3, 2), x)
                return y, vjp(g)[0]

            both = jax.jit(both)
            results[name] = (
                both(x, g),
                time_call(functools.partial(_ready, both, x, g), 2, args.repeats),
            )
        (ours, a), (theirs, b) = results['ops'], results['candidate']
        same = all(bool(jnp.array_equal(u, v)) for u, v in zip(ours, theirs, strict=True))
        label = f'{variant} {args.batch}x{size}x{size}x{channels}'
        print(f'| {label} | {a:.1f} | {b:.1f} | {a / b:.2f} | {same} |', flush=True)


def step_rows(args: argparse.Namespace) -> None:
    print('\n| training step, batch 32 | ms with ops.max_pool | with the candidate | ratio |')
    print('|---|---:|---:|---:|')
    pools = {'ops': ops.max_pool, 'candidate': tap_winner_max_pool}
    for variant in ('owt', 'paper'):
        ms = max_pool.step_times(variant, args, pools)
        a, b = ms['ops'], ms['candidate']
        print(f'| {variant} | {a:.0f} | {b:.0f} | {a / b:.2f} |', flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=9)
    parser.add_argument('--parts', default='conv1,pools,step', help='comma-separated')
    args = parser.parse_args()
    parts = set(args.parts.split(','))
    if parts - {'conv1', 'pools', 'step'}:
        parser.error(f'unknown parts {sorted(parts - {"conv1", "pools", "step"})}')
    args.half, args.steps = False, 2  # read by max_pool.step_times
    rng = np.random.default_rng(0)
    print(f'{jax.devices()[0].device_kind}, batch {args.batch}, float32; median ms')
    if 'conv1' in parts:
        onednn_conv.load()
        conv1_rows(args, rng)
        for _, size, features, pad in CONV1:  # which oneDNN kernels ran, part by part
            x = jax.ShapeDtypeStruct((args.batch, size, size, 3), jnp.float32)
            w = jax.ShapeDtypeStruct((11, 11, 3, features), jnp.float32)
            xb, wb = jax.eval_shape(
                lambda x, w, pad=pad: ops.space_to_depth(x, w, 4, [(pad, pad)] * 2), x, w
            )
            print(
                f'oneDNN, conv1 {x.shape} {w.shape}:',
                onednn_conv.implementations(x.shape, w.shape, (4, 4), [(pad, pad)] * 2),
            )
            print(
                f'  its blocks {xb.shape} {wb.shape}:',
                onednn_conv.implementations(xb.shape, wb.shape, (1, 1), [(0, 0)] * 2),
            )
    if 'pools' in parts:
        pool_rows(args, rng)
    if 'step' in parts:
        step_rows(args)
    print('ratio: ops time / candidate time (above 1: the candidate is faster)')


if __name__ == '__main__':
    main()
