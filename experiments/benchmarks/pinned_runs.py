"""Does running a sweep's runs side by side, one per core, pay? Against one run on every core.

The claim sweeps train the `small` net on Fashion-MNIST, one run after another, each on all the
host's cores. A step of that net spends part of its time in kernels too small to split across
cores, so N runs at once, each pinned to its own core, may get more images through than one run
on N cores. Measured here with the quick start's training step on real Fashion-MNIST batches:
one process on all cores against N processes at once, each pinned to one core (its thread pools
sized to it: the affinity is set before JAX starts). Each process times the same number of
steps after a warm-up; all of them start on the same signal. Throughput is images/s summed
over the processes, rounds alternate between the two layouts, and the median round is reported
with the spread.

    python -m experiments.benchmarks.pinned_runs [--rounds 5] [--steps 30]

What the sweeps do with it: ``experiments/sweeps/claims.sh`` runs in parallel chains under
``taskset`` (experiments/RESULTS.md, issue 17).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def child(steps: int) -> None:
    """Builds the quick start's step, warms it up, then times ``steps`` steps on each 'go'."""
    sys.path.insert(0, ROOT)
    from alexnet_jax import runtime

    runtime.configure(keep_host_memory=True)
    import jax

    from alexnet_jax import dataset_stats, input_pipeline, models, parallel
    from alexnet_jax import steps as steps_lib
    from configs import fashion_mnist

    config = fashion_mnist.get_config()
    stats = dataset_stats.load_stats(config)
    model = models.create_model(config).clone(bn_axis_name=steps_lib.AXIS)
    shape = (config.image_size, config.image_size, 1)
    state = parallel.replicate(steps_lib.create_train_state(config, model, shape, steps=10_000))
    batch = parallel.shard(next(input_pipeline.create_train_iter(config, local_device_count=1)))
    step, _ = steps_lib.pmap_steps(config, stats)
    rng = jax.random.key(0)
    for _ in range(3):
        state, _ = step(state, batch, rng)
    jax.block_until_ready(state)
    print(json.dumps({'ready': True}), flush=True)
    for line in sys.stdin:
        if line.strip() != 'go':
            break
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, batch, rng)
        jax.block_until_ready((state, metrics))
        seconds = time.perf_counter() - start
        print(json.dumps({'images': steps * config.batch_size, 'seconds': seconds}), flush=True)


def _start(cores: list[int], steps: int) -> subprocess.Popen:
    command = [sys.executable, '-m', 'experiments.benchmarks.pinned_runs', '--child', str(steps)]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),  # before JAX sizes its threads
    )
    assert json.loads(proc.stdout.readline())['ready']
    return proc


def _round(procs: list[subprocess.Popen]) -> float:
    """Images/s of one timed round, all ``procs`` started together."""
    for proc in procs:
        proc.stdin.write('go\n')
        proc.stdin.flush()
    results = [json.loads(proc.stdout.readline()) for proc in procs]
    return sum(r['images'] for r in results) / max(r['seconds'] for r in results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--steps', type=int, default=30, help='timed steps per process per round')
    parser.add_argument('--child', type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return child(args.child)
    cores = sorted(os.sched_getaffinity(0))
    layouts = {
        f'one run on {len(cores)} cores': [_start(cores, args.steps)],
        f'{len(cores)} runs, one core each': [_start([c], args.steps) for c in cores],
    }
    rates: dict[str, list[float]] = {name: [] for name in layouts}
    for _ in range(args.rounds):
        for name, procs in layouts.items():
            rates[name].append(_round(procs))
    for procs in layouts.values():
        for proc in procs:
            proc.stdin.close()
            proc.wait()
    print(f'`small`, Fashion-MNIST, batch 128, {args.steps} steps a round, {args.rounds} rounds')
    print('| layout | images/s, median (min-max) |\n|---|---|')
    for name, values in rates.items():
        print(f'| {name} | {statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f}) |')
    one, many = (statistics.median(v) for v in rates.values())
    print(f'side by side / one run: {many / one:.2f}')


if __name__ == '__main__':
    main()
