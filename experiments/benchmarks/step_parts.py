"""Where a training step's time goes: the step timed with one part taken out or swapped.

A profile-free breakdown (METHOD.md's "time variants that leave one stage out"): the step of
``train_step.py``'s ``JaxRunner`` (the one training runs), then the same step with one config
field changed or one kernel swapped, each compiled once and timed in alternating rounds in one
process; the difference from the full step is what that part costs (or what the swap saves).
The forward pass alone is the eval step on the same batch (no dropout or colour noise, no
gradients, no update).

    python experiments/benchmarks/step_parts.py --variant owt --batch 256 --half   # a GPU
    python experiments/benchmarks/step_parts.py --variant paper --batch 8 --steps 2  # smoke
    python experiments/benchmarks/step_parts.py --parts s2d,autodiff-pool  # only the swaps

Parts (``--parts``; the default is the first five): ``lrn`` (norm='none'; the paper's nets
only), ``dropout`` (dropout_rate=0), ``noise`` (pca_noise_std=0), ``mean``
(normalization='none'), ``forward`` (the eval step). Kernel swaps, A/Bs of
``layers.kernels_for``'s choice, run when named: ``s2d`` (conv1 at stride 1 on 4x4 pixel
blocks, ``ops.space_to_depth_conv``, for GPUs; on CPU it also moves conv2-5 from oneDNN to XLA),
``autodiff-pool`` (the max-pool's gradient by autodiff, ``ops.plain_max_pool``), and on CPU
(float32, oneDNN built): ``split-conv`` (every convolution in XLA, ``ops.split_grouped_conv``),
``plain-bias`` (``+`` in place of ``ops.add_bias``: the bias gradient a sum, not a product),
``onednn-everywhere`` (every convolution in oneDNN; below AVX-512 ``onednn_conv.conv`` leaves
the 3x3 ones to XLA).
"""

import argparse
import json
import operator
import os
import statistics
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from alexnet_jax import ops  # noqa: E402
from experiments.benchmarks.train_step import (  # noqa: E402
    FORWARD_MACS,
    IMAGE_SIZE,
    JaxRunner,
    train_flops,
)


def onednn_everywhere(lhs, rhs, window_strides, padding, feature_group_count=1, **kwargs):
    """Every convolution group in oneDNN's primitives, none left to XLA (``onednn_conv.conv``
    leaves 3x3 ones to XLA below AVX-512): the choice as it was before that rule."""
    from alexnet_jax import onednn_conv

    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    geometry = (*window_strides, *padding[0], *padding[1])
    xs = jnp.split(lhs, feature_group_count, axis=-1)
    ws = jnp.split(rhs, feature_group_count, axis=-1)
    outs = [onednn_conv._conv(x, w, geometry) for x, w in zip(xs, ws, strict=True)]
    return jnp.concatenate(outs, axis=-1)


# key: (label, config overrides, kernel overrides); the full step comes first, always.
PARTS = {
    'lrn': ('without LRN', {'norm': 'none'}, {}),
    'dropout': ('without dropout', {'dropout_rate': 0.0}, {}),
    'noise': ('without colour noise', {'pca_noise_std': 0.0}, {}),
    'mean': ('without mean-image subtraction', {'normalization': 'none'}, {}),
    's2d': ('conv1 on 4x4 blocks at stride 1', {}, {'conv': ops.space_to_depth_conv}),
    'autodiff-pool': ('max-pool gradient by autodiff', {}, {'max_pool': ops.plain_max_pool}),
    'split-conv': ('convolutions by split_grouped_conv', {}, {'conv': ops.split_grouped_conv}),
    'plain-bias': ('biases added by broadcast', {}, {'add_bias': operator.add}),
    'onednn-everywhere': ('every convolution in oneDNN', {}, {'conv': onednn_everywhere}),
}
FORWARD = 'forward pass only (eval step)'
DEFAULT_PARTS = 'lrn,dropout,noise,mean,forward'  # the kernel swaps run when asked for


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'{value}: at least 1')
    return value


def _write_json(args: argparse.Namespace, times: dict[str, list[float]]) -> None:
    """The rounds so far (``rounds_done`` of ``rounds``), replacing the file in one step."""
    record = {
        'variant': args.variant,
        'batch': args.batch,
        'half': args.half,
        'device': jax.devices()[0].device_kind,
        'jax': jax.__version__,
        'parts': args.parts,
        'steps': args.steps,
        'rounds': args.rounds,
        'rounds_done': len(times['full step']),
        'times_s': times,
    }
    partial = f'{args.json}.partial'
    with open(partial, 'w') as f:
        json.dump(record, f, indent=1)
    os.replace(partial, args.json)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--variant', choices=sorted(IMAGE_SIZE), default='owt')
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--half', action='store_true', help='bfloat16 compute')
    parser.add_argument('--steps', type=_positive, default=30, help='steps per timed round')
    parser.add_argument('--rounds', type=_positive, default=5)
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument(
        '--mfu-peak-tflops', type=float, help="the device's peak for an MFU column (989: H200 bf16)"
    )
    parser.add_argument('--parts', default=DEFAULT_PARTS, help='comma-separated; see the top')
    args = parser.parse_args()
    keys = [k for k in args.parts.split(',') if k]
    unknown = sorted(set(keys) - {*PARTS, 'forward'})
    if unknown:
        parser.error(f'unknown parts {unknown}; choose from {[*PARTS, "forward"]}')
    from alexnet_jax import runtime

    runtime.configure(keep_host_memory=True, dispatch_ahead=False)  # as train_step's worker
    if args.variant == 'owt' and 'lrn' in keys:  # owt has no LRN
        keys.remove('lrn')
    full = JaxRunner(args, args.variant)
    runners = {'full step': full}
    for key in keys:
        if key != 'forward':
            label, overrides, kernels = PARTS[key]
            runners[label] = JaxRunner(args, args.variant, kernels=kernels, **overrides)
    timed = {label: r.run_step for label, r in runners.items()}

    import numpy as np

    from alexnet_jax import parallel

    labels = np.asarray(full.batch['label'])
    eval_batch = dict(full.batch, mask=parallel.shard(np.ones(labels.shape, bool)))

    def forward(wait: bool) -> None:
        out = full.eval_step(full.state, eval_batch)
        if wait:
            jax.block_until_ready(out)

    if 'forward' in keys:
        timed[FORWARD] = forward
    for label, fn in timed.items():  # compile, then warm up
        start = time.perf_counter()
        for i in range(3):
            fn(wait=i == 2)
        print(f'compiled and warmed up: {label} ({time.perf_counter() - start:.1f} s)', flush=True)
    # Each round is printed and saved as it ends, so that a run cut short keeps what it measured.
    times: dict[str, list[float]] = {label: [] for label in timed}
    for number in range(1, args.rounds + 1):
        for label, fn in timed.items():
            start = time.perf_counter()
            for i in range(args.steps):
                fn(wait=i == args.steps - 1)
            times[label].append((time.perf_counter() - start) / args.steps)
        rounds = ', '.join(f'{label} {ts[-1] * 1e3:.3f}' for label, ts in times.items())
        print(f'round {number}/{args.rounds}, ms per step: {rounds}', flush=True)
        if args.json:
            _write_json(args, times)
    base = statistics.median(times['full step'])
    flops = train_flops(args.variant, args.batch)
    print(
        f'{args.variant}, batch {args.batch}, {"bf16" if args.half else "fp32"}, '
        f'{jax.devices()[0].device_kind}, jax {jax.__version__}; median of {args.rounds} rounds '
        f'of {args.steps} steps; full step {flops / base / 1e12:.1f} TFLOP/s'
    )
    mfu = args.mfu_peak_tflops
    print(
        '| step | ms | part costs ms | share of the step | / full step (rounds min-max) |'
        + (f' MFU % ({mfu:g} TFLOP/s) |' if mfu else '')
        + '\n|---|---:|---:|---:|---|'
        + ('---:|' if mfu else '')
    )
    for label, ts in times.items():
        ms = statistics.median(ts) * 1e3
        cost = base * 1e3 - ms if label != 'full step' else 0.0
        rounds = [t / f for t, f in zip(ts, times['full step'], strict=True)]
        spread = f'{min(rounds):.3f}-{max(rounds):.3f}' if label != 'full step' else ''
        row = f'| {label} | {ms:.3f} | {cost:.3f} | {100 * cost / (base * 1e3):.1f}% | {spread} |'
        if mfu:  # the step's training FLOPs whatever a row leaves out; the eval step's forward
            done = 2 * FORWARD_MACS[args.variant] * args.batch if label == FORWARD else flops
            row += f' {100 * done / (ms / 1e3) / (mfu * 1e12):.1f} |'
        print(row)


if __name__ == '__main__':
    main()
