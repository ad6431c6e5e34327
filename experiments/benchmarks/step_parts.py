"""Where a training step's time goes: the step timed with one part taken out at a time.

A profile-free breakdown (METHOD.md's "time variants that leave one stage out"): the step of
``train_step.py``'s ``JaxRunner`` (the one training runs), then the same step with one config
field changed, each compiled once and timed in alternating rounds in one process; the
difference from the full step is what that part costs. The forward pass alone is the eval step
on the same batch (no dropout or colour noise, no gradients, no update).

    python experiments/benchmarks/step_parts.py --variant owt --batch 256 --half   # a GPU
    python experiments/benchmarks/step_parts.py --variant paper --batch 8 --steps 2  # smoke

Parts: ``lrn`` (norm='none'; the paper's nets only), ``dropout`` (dropout_rate=0),
``colour noise`` (pca_noise_std=0), ``mean image`` (normalization='none').
"""

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)

from experiments.benchmarks.train_step import IMAGE_SIZE, JaxRunner, train_flops  # noqa: E402

# (label, config overrides) of each variant of the step; the first is the full step.
PARTS = [
    ('full step', {}),
    ('without LRN', {'norm': 'none'}),
    ('without dropout', {'dropout_rate': 0.0}),
    ('without colour noise', {'pca_noise_std': 0.0}),
    ('without mean-image subtraction', {'normalization': 'none'}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--variant', choices=sorted(IMAGE_SIZE), default='owt')
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--half', action='store_true', help='bfloat16 compute')
    parser.add_argument('--steps', type=int, default=30, help='steps per timed round')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--json', help='also write the results here')
    args = parser.parse_args()
    from alexnet_jax import runtime

    runtime.configure(keep_host_memory=True, dispatch_ahead=False)  # as train_step's worker
    import jax

    parts = [p for p in PARTS if not (p[1].get('norm') and args.variant == 'owt')]
    runners = {label: JaxRunner(args, args.variant, **kw) for label, kw in parts}
    full = runners['full step']
    timed = {label: r.run_step for label, r in runners.items()}

    import numpy as np

    from alexnet_jax import parallel

    labels = np.asarray(full.batch['label'])
    eval_batch = dict(full.batch, mask=parallel.shard(np.ones(labels.shape, bool)))

    def forward(wait: bool) -> None:
        out = full.eval_step(full.state, eval_batch)
        if wait:
            jax.block_until_ready(out)

    timed['forward pass only (eval step)'] = forward
    for fn in timed.values():  # compile, then warm up
        for i in range(3):
            fn(wait=i == 2)
    times: dict[str, list[float]] = {label: [] for label in timed}
    for _ in range(args.rounds):
        for label, fn in timed.items():
            start = time.perf_counter()
            for i in range(args.steps):
                fn(wait=i == args.steps - 1)
            times[label].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(times['full step'])
    flops = train_flops(args.variant, args.batch)
    print(
        f'{args.variant}, batch {args.batch}, {"bf16" if args.half else "fp32"}, '
        f'{jax.devices()[0].device_kind}, jax {jax.__version__}; median of {args.rounds} rounds '
        f'of {args.steps} steps; full step {flops / base / 1e12:.1f} TFLOP/s'
    )
    print('| step | ms | part costs ms | share of the step |\n|---|---:|---:|---:|')
    for label, ts in times.items():
        ms = statistics.median(ts) * 1e3
        cost = base * 1e3 - ms if label != 'full step' else 0.0
        print(f'| {label} | {ms:.3f} | {cost:.3f} | {100 * cost / (base * 1e3):.1f}% |')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(
                {
                    'variant': args.variant,
                    'batch': args.batch,
                    'half': args.half,
                    'device': jax.devices()[0].device_kind,
                    'jax': jax.__version__,
                    'times_s': times,
                },
                f,
                indent=1,
            )


if __name__ == '__main__':
    main()
