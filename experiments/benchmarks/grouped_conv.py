"""The `paper` net's grouped convolutions: one grouped call against two plain ones.

Section 3.2 splits conv2, conv4 and conv5 into two groups (one per GPU). XLA can run such a
layer as one convolution with ``feature_group_count=2`` (``lax.conv_general_dilated``, what
``nn.Conv`` does) or as two plain convolutions on the channel halves (``ops.split_grouped_conv``,
what the CPU takes). This times both, forward pass plus the input and kernel gradients (what a
training step runs), on whatever device JAX has, at the step's batch size, and prints the ratio
per layer: issue 19's bar is that the grouped net's convolutions are no slower than two plain ones.

Each variant is one jitted function run ``--steps`` times in a row and waited for after the last
(as training dispatches steps), ``--rounds`` rounds alternating between the two, median round.

    python experiments/benchmarks/grouped_conv.py --batch 256 --half   # on a GPU
    python experiments/benchmarks/grouped_conv.py --batch 8 --steps 2  # a CPU smoke run
"""

import argparse
import functools
import json
import os
import statistics
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from alexnet_jax import ops  # noqa: E402

# (name, input size, in channels, out channels, kernel, padding) of `paper`'s grouped layers.
GROUPED = [
    ('conv2', 27, 96, 256, 5, 2),
    ('conv4', 13, 384, 384, 3, 1),
    ('conv5', 13, 384, 256, 3, 1),
]


def train_pass(conv, x: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The forward pass and both gradients of ``sum(conv(x, w) * g)`` for a fixed ``g``."""

    def loss(x, w):
        y = conv(x, w)
        return jnp.sum(y.astype(jnp.float32) * jnp.cos(y.astype(jnp.float32)))

    return jax.grad(loss, argnums=(0, 1))(x, w)


def conv_fn(grouped: bool, pad: int):
    def conv(x, w):
        kw = dict(
            window_strides=(1, 1),
            padding=[(pad, pad), (pad, pad)],
            dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
            feature_group_count=2,
        )
        if grouped:
            return jax.lax.conv_general_dilated(x, w, **kw)
        return ops.split_grouped_conv(x, w, **kw)

    return conv


def time_rounds(fns: dict, args: argparse.Namespace) -> dict[str, list[float]]:
    for fn in fns.values():  # compile and warm up
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(args.steps - 1):
                fn()
            jax.block_until_ready(fn())
            times[name].append((time.perf_counter() - start) / args.steps)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--half', action='store_true', help='bfloat16 inputs and kernels')
    parser.add_argument('--steps', type=int, default=50, help='calls per timed round')
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--json', help='also write the results here')
    args = parser.parse_args()
    dtype = jnp.bfloat16 if args.half else jnp.float32
    device = jax.devices()[0]
    print(
        f'{device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, batch '
        f'{args.batch}, {jnp.dtype(dtype).name}; ms per forward + both gradients, median of '
        f'{args.rounds} rounds of {args.steps} calls'
    )
    print('| layer | grouped (one call) | two plain | grouped / two plain | rounds (min-max) |')
    print('|---|---:|---:|---:|---|')
    results, key = [], jax.random.key(0)
    for name, size, cin, cout, k, pad in GROUPED:
        kx, kw, key = jax.random.split(key, 3)
        x = jax.random.normal(kx, (args.batch, size, size, cin), dtype)
        w = (0.01 * jax.random.normal(kw, (k, k, cin // 2, cout))).astype(dtype)
        grouped = jax.jit(lambda x, w, pad=pad: train_pass(conv_fn(True, pad), x, w))
        split = jax.jit(lambda x, w, pad=pad: train_pass(conv_fn(False, pad), x, w))
        # The two compute the same function (a second code path as the check).
        a, b = grouped(x, w), split(x, w)
        tol = 2e-2 if args.half else 1e-4
        for p, q in zip(a, b, strict=True):
            p, q = p.astype(jnp.float32), q.astype(jnp.float32)
            err = float(jnp.linalg.norm(p - q) / jnp.linalg.norm(q))
            if not err < tol:
                raise SystemExit(f'{name}: grouped and split gradients differ ({err:.2e})')
        fns = {
            'grouped': functools.partial(grouped, x, w),
            'split': functools.partial(split, x, w),
        }
        times = time_rounds(fns, args)
        g, s = statistics.median(times['grouped']), statistics.median(times['split'])
        per_round = [a / b for a, b in zip(times['grouped'], times['split'], strict=True)]
        print(
            f'| {name} | {g * 1e3:.3f} | {s * 1e3:.3f} | {g / s:.2f} | '
            f'{min(per_round):.2f}-{max(per_round):.2f} |',
            flush=True,
        )
        results.append({'layer': name, 'grouped_s': times['grouped'], 'split_s': times['split']})
    total_g = sum(statistics.median(r['grouped_s']) for r in results)
    total_s = sum(statistics.median(r['split_s']) for r in results)
    print(f'| all three | {total_g * 1e3:.3f} | {total_s * 1e3:.3f} | {total_g / total_s:.2f} | |')
    if args.json:
        meta = {
            'device': device.device_kind,
            'jax': jax.__version__,
            'batch': args.batch,
            'dtype': jnp.dtype(dtype).name,
            'steps': args.steps,
            'rounds': args.rounds,
        }
        with open(args.json, 'w') as f:
            json.dump({'meta': meta, 'layers': results}, f, indent=1)


if __name__ == '__main__':
    main()
