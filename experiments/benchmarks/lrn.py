"""LRN forward+backward on a conv1-sized batch: this LRN against autodiff, TensorFlow and PyTorch.

Every implementation computes the same loss, ``sum(lrn(x) * cotangent)`` with a fixed random
cotangent, and its gradient with respect to ``x``; the timed call returns both (the loss value
and the input gradient) and waits for them. Reported: the median over ``--repeats`` timed calls
after ``--warmup`` untimed ones, in ms per forward+backward, and each time's ratio to this LRN.

    python experiments/benchmarks/lrn.py               # 32x55x55x96, the paper's constants
    python experiments/benchmarks/lrn.py --batch 128   # the issue's example size

PyTorch is optional (``pip install torch``); its row is skipped when it is not importable.
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
from alexnet_jax import runtime  # noqa: E402

runtime.configure()  # first: XLA's and TensorFlow's settings, as a training run has them

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax.lrn import lrn  # noqa: E402

SIZE, K, ALPHA, BETA = 5, 2.0, 1e-4, 0.75  # Section 3.3


def plain_lrn(x: jax.Array) -> jax.Array:
    """The paper's formula written out, differentiated by JAX's autodiff."""
    half = SIZE // 2
    channels = x.shape[-1]
    squares = jnp.pad(x * x, [(0, 0)] * (x.ndim - 1) + [(half, half)])
    window = sum(squares[..., j : j + channels] for j in range(SIZE))
    return x / (K + ALPHA * window) ** BETA


def plain_lrn_rsqrt(x: jax.Array) -> jax.Array:
    """The same, with d^-0.75 as rsqrt(d) * sqrt(rsqrt(d)) as ours uses: isolates the VJP."""
    half = SIZE // 2
    channels = x.shape[-1]
    squares = jnp.pad(x * x, [(0, 0)] * (x.ndim - 1) + [(half, half)])
    window = sum(squares[..., j : j + channels] for j in range(SIZE))
    r = jax.lax.rsqrt(K + ALPHA * window)
    return x * r * jnp.sqrt(r)


def time_call(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms; ``fn`` must only return once its results are ready."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def jax_runner(f: Callable[[jax.Array], jax.Array], x: np.ndarray, ct: np.ndarray):
    loss = lambda x, ct: jnp.sum(f(x) * ct)
    step = jax.jit(jax.value_and_grad(loss))
    xj, ctj = jnp.asarray(x), jnp.asarray(ct)
    return lambda: jax.block_until_ready(step(xj, ctj))


def tensorflow_runner(x: np.ndarray, ct: np.ndarray):
    import tensorflow as tf

    @tf.function(jit_compile=False)
    def step(x, ct):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tf.nn.local_response_normalization(
                x, depth_radius=SIZE // 2, bias=K, alpha=ALPHA, beta=BETA
            )
            loss = tf.reduce_sum(out * ct)
        return loss, tape.gradient(loss, x)

    xt, ctt = tf.constant(x), tf.constant(ct)
    return lambda: [t.numpy() for t in step(xt, ctt)][0]


def torch_runner(x: np.ndarray, ct: np.ndarray):
    try:
        import torch
    except ImportError:
        return None
    layer = torch.nn.LocalResponseNorm(SIZE, alpha=ALPHA * SIZE, beta=BETA, k=K)  # alpha / size
    # PyTorch wants channels first; the transposes happen once, outside the timing.
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    ctt = torch.from_numpy(np.ascontiguousarray(ct.transpose(0, 3, 1, 2)))

    def step():
        leaf = xt.detach().requires_grad_(True)
        loss = (layer(leaf) * ctt).sum()
        loss.backward()
        return loss.item(), leaf.grad

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--height', type=int, default=55)
    parser.add_argument('--channels', type=int, default=96)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--skip', default='', help='comma-separated rows to leave out')
    args = parser.parse_args()

    shape = (args.batch, args.height, args.height, args.channels)
    rng = np.random.default_rng(0)
    # Post-ReLU conv1-like activations: non-negative, a spread of magnitudes.
    x = np.maximum(rng.normal(0.0, 20.0, shape), 0.0).astype(np.float32)
    ct = rng.normal(0.0, 1.0, shape).astype(np.float32)

    runners = {
        'alexnet_jax.lrn (custom VJP)': jax_runner(lrn, x, ct),
        'JAX autodiff of the formula': jax_runner(plain_lrn, x, ct),
        'JAX autodiff, rsqrt form of d^-0.75': jax_runner(plain_lrn_rsqrt, x, ct),
        'TensorFlow tf.nn.local_response_normalization': tensorflow_runner(x, ct),
        'PyTorch nn.LocalResponseNorm': torch_runner(x, ct),
    }
    skip = {s.strip().lower() for s in args.skip.split(',') if s.strip()}
    print(
        f'LRN forward+backward, input {"x".join(map(str, shape))} float32, '
        f'median of {args.repeats} after {args.warmup} warm-up; jax {jax.__version__}, '
        f'{os.cpu_count()} CPUs'
    )
    rows = []
    for name, run in runners.items():
        if run is None:
            print(f'  ({name}: not importable, skipped)')
            continue
        if rows and any(s in name.lower() for s in skip):  # never skip ours (the first)
            continue
        rows.append((name, time_call(run, args.warmup, args.repeats)))
    ours = rows[0][1]
    width = max(len(name) for name, _ in rows)
    print(f'| {"implementation":<{width}} | ms / fwd+bwd | ratio to ours |')
    print(f'|{"-" * (width + 2)}|-------------:|--------------:|')
    for name, ms in rows:
        print(f'| {name:<{width}} | {ms:12.1f} | {ms / ours:12.2f}x |')


if __name__ == '__main__':
    main()
