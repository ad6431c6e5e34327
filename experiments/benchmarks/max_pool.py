"""Max-pool gradient: ``ops.max_pool``'s two 1-D passes against autodiff, side by side.

Autodiff of ``reduce_window`` goes through XLA's select_and_scatter; ``ops.max_pool`` pools the
width and then the height, each pass keeping its winning tap (same values and gradient). This
times both on the backend JAX runs on, in one process, alternating:
- forward + backward of each of the variant's three pools, at the step's batch size, in a loss;
- the whole training step (``train_step.py``'s JAX side) built with each: the second's model
  gets the backend's kernels (``layers.kernels_for``) with ``max_pool`` swapped for autodiff.

    python experiments/benchmarks/max_pool.py                              # CPU, batch 32
    python experiments/benchmarks/max_pool.py --batch 256 --half --steps 50  # on a GPU
"""

import argparse
import os
import statistics
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)

from alexnet_jax import runtime  # noqa: E402

runtime.configure(keep_host_memory=True)  # first: the process settings a training run has

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax import ops  # noqa: E402
from experiments.benchmarks import train_step  # noqa: E402
from experiments.benchmarks.lrn import jax_runner, time_call  # noqa: E402

# The input of pool1, pool2 and pool5 (height = width, channels); all 3x3, stride 2, VALID.
POOL_INPUTS = {
    'paper': ((55, 96), (27, 256), (13, 256)),
    'single_tower': ((55, 96), (27, 256), (13, 256)),
    'owt': ((55, 64), (27, 192), (13, 256)),
}


def autodiff_pool(x: jax.Array, window: int, stride: int, padding: str = 'VALID') -> jax.Array:
    return nn.max_pool(x, (window, window), (stride, stride), padding=padding)


def bench_pools(variant: str, args: argparse.Namespace, dtype) -> None:
    rng = np.random.default_rng(0)
    for size, channels in POOL_INPUTS[variant]:
        x = rng.normal(size=(args.batch, size, size, channels)).astype(dtype)
        out = (size - 3) // 2 + 1
        ct = rng.normal(size=(args.batch, out, out, channels)).astype(dtype)
        ours = jax_runner(lambda x: ops.max_pool(x, 3, 2), x, ct)
        autodiff = jax_runner(lambda x: autodiff_pool(x, 3, 2), x, ct)
        times = {'ours': [], 'autodiff': []}
        for _ in range(args.repeats):
            times['ours'].append(time_call(ours, 2, args.steps))
            times['autodiff'].append(time_call(autodiff, 2, args.steps))
        a, b = statistics.median(times['ours']), statistics.median(times['autodiff'])
        label = f'{variant} pool {args.batch}x{size}x{size}x{channels}'
        print(f'| {label} | {b:.3f} | {a:.3f} | {b / a:.2f} |', flush=True)


def step_times(variant: str, args: argparse.Namespace, pools: dict) -> dict[str, float]:
    """Median ms of ``train_step.py``'s JAX step for each named max-pool, rounds alternated.

    Each step's model gets the backend's kernels (``layers.kernels_for``) with ``max_pool``
    swapped for the named one; ``args`` needs ``batch``, ``half`` and ``steps``/``repeats``.
    """
    runners = {}
    for name, pool in pools.items():
        runner = train_step.JaxRunner(args, variant, kernels={'max_pool': pool})
        runner.run_step(wait=True)
        runners[name] = runner
    times = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            runner.run_step(wait=True)  # one untimed step between the versions
            times[name].append(1e3 * train_step.timed_steps(runner, args.steps)['time'])
    return {name: statistics.median(t) for name, t in times.items()}


def bench_steps(variant: str, args: argparse.Namespace) -> None:
    ms = step_times(variant, args, {'ours': ops.max_pool, 'autodiff': autodiff_pool})
    a, b = ms['ours'], ms['autodiff']
    print(f'| {variant} training step | {b:.2f} | {a:.2f} | {b / a:.2f} |', flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--variants', default='paper,owt')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--half', action='store_true', help='bfloat16 (pools and step)')
    parser.add_argument('--steps', type=int, default=3, help='timed calls per round')
    parser.add_argument('--repeats', type=int, default=3, help='alternating rounds')
    args = parser.parse_args()
    dtype = jnp.bfloat16 if args.half else np.float32
    print(f'{jax.devices()[0].device_kind}, batch {args.batch}, {"bf16" if args.half else "fp32"}')
    print('| ms (fwd+bwd; step) | autodiff | ours | ratio |\n|---|---:|---:|---:|')
    for variant in args.variants.split(','):
        bench_pools(variant, args, dtype)
        bench_steps(variant, args)
    print('ratio: autodiff time / ours (above 1: ours is faster)')


if __name__ == '__main__':
    main()
