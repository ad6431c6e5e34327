"""Does training several seeds in one step pay? ``vmap`` over seeds against one seed at a time.

A sweep's seeds are independent runs of the same net. JAX can stack S of them and train them in
one step: ``jax.vmap`` of this project's ``steps.train_step`` over the seed axis (parameters,
optimizer state, batch and random key each stacked S deep), inside the same ``pmap`` training
uses. For a small net one seed's step may leave the CPU idle between small kernels; S seeds in
one program give XLA larger ones. Measured here, side by side in one process on the same
Fashion-MNIST batch: images/s of S separate single-seed steps (S steps of the ordinary jitted
step, one after another: what a sweep does now) against one S-seed ``vmap`` step. Rounds
alternate between the two; the median round and the spread are reported.

    python -m experiments.benchmarks.seeds_vmap [--seeds 1 2 4 8] [--rounds 5] [--steps 10] \
        [--json FILE]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))  # run as a file


def _stacked(states: list) -> object:
    """One train state whose arrays hold ``states``' along a new leading axis (the seed axis);
    the functions (model, optimizer) are the first state's, the same for every seed."""
    import jax
    import jax.numpy as jnp

    fields = ('step', 'params', 'opt_state', 'batch_stats', 'plateau')
    return states[0].replace(
        **{
            f: jax.tree.map(lambda *leaves: jnp.stack(leaves), *[getattr(s, f) for s in states])
            for f in fields
        }
    )


def _setup(config, seeds: int):
    """(single step, its states, vmapped step, stacked state, batch, keys) for ``seeds`` seeds."""
    import jax

    from alexnet_jax import dataset_stats, input_pipeline, models, parallel, steps

    stats = dataset_stats.load_stats(config)
    model = models.create_model(config).clone(bn_axis_name=steps.AXIS)
    shape = (config.image_size, config.image_size, 1)
    states = []
    for seed in range(seeds):
        seeded = config.copy_and_resolve_references()
        seeded.seed = seed
        states.append(steps.create_train_state(seeded, model, shape, steps=10_000))
    batch = next(input_pipeline.create_train_iter(config, local_device_count=1))
    step = functools.partial(steps.train_step, config=config, stats=stats)
    single = jax.pmap(step, axis_name=steps.AXIS, in_axes=(None, 0, None), out_axes=(None, None))
    together = jax.pmap(
        jax.vmap(step, in_axes=(0, 0, 0)),
        axis_name=steps.AXIS,
        in_axes=(None, 0, None),
        out_axes=(None, None),
    )
    stacked_batch = parallel.shard({k: v[0][None].repeat(seeds, 0)[None] for k, v in batch.items()})
    keys = jax.random.split(jax.random.key(1), seeds)
    placed = [parallel.replicate(s) for s in states]
    stacked = parallel.replicate(_stacked(states))
    return single, placed, together, stacked, batch, stacked_batch, keys


def _time(fn, steps_: int) -> float:
    import jax

    started = time.perf_counter()
    out = None
    for _ in range(steps_):
        out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - started


def measure(seeds: int, rounds: int, steps_: int) -> dict:
    import jax

    from alexnet_jax import parallel
    from configs import fashion_mnist

    config = fashion_mnist.get_config()
    single, states, together, stacked, batch, stacked_batch, keys = _setup(config, seeds)
    one_batch = parallel.shard(batch)
    rng = jax.random.key(1)
    per_step = config.batch_size * seeds

    def separately():
        outs = [single(state, one_batch, rng) for state in states]
        return [o[1]['loss'] for o in outs]

    def at_once():
        return together(stacked, stacked_batch, keys)[1]['loss']

    started = time.perf_counter()
    jax.block_until_ready(at_once())
    compile_vmap = time.perf_counter() - started
    jax.block_until_ready(separately())
    rates = {'separately': [], 'vmap': []}
    for _ in range(rounds):
        rates['separately'].append(per_step * steps_ / _time(separately, steps_))
        rates['vmap'].append(per_step * steps_ / _time(at_once, steps_))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        'seeds': seeds,
        'images_per_s': med,
        'spread': {k: [min(v), max(v)] for k, v in rates.items()},
        'ratio': med['vmap'] / med['separately'],
        'compile_vmap_s': compile_vmap,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 4, 8])
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--json', help='write the results here')
    args = parser.parse_args(argv)
    from alexnet_jax import runtime

    runtime.configure(keep_host_memory=True)
    results = []
    print('| seeds | separately img/s | vmap img/s | vmap / separately | vmap compile s |')
    print('|---|---|---|---|---|')
    for seeds in args.seeds:
        r = measure(seeds, args.rounds, args.steps)
        results.append(r)
        sep, vm = r['spread']['separately'], r['spread']['vmap']
        print(
            f'| {seeds} | {r["images_per_s"]["separately"]:.0f} ({sep[0]:.0f}-{sep[1]:.0f}) '
            f'| {r["images_per_s"]["vmap"]:.0f} ({vm[0]:.0f}-{vm[1]:.0f}) | {r["ratio"]:.2f} '
            f'| {r["compile_vmap_s"]:.1f} |',
            flush=True,
        )
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
