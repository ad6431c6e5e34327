"""Host memory of one variant's training step, phase by phase (issue 19 probe).

    GLIBC_TUNABLES=glibc.malloc.tcache_count=0 [TRIM=1] [TRIM2=1] [AOT=1] \
        python experiments/logs/2026-12-04-vm-issue19-trim/mem_phases2.py paper

Prints (RSS, high-water mark) less the RSS after imports, in MiB, after each phase. TRIM: glibc's
malloc_trim once the state is built; TRIM2: once the step is compiled; AOT: run the compiled
executable rather than the jitted function.
"""

import ctypes
import gc
import json
import os
import sys

sys.path.insert(0, os.getcwd())

from alexnet_jax import runtime  # noqa: E402

runtime.configure(keep_host_memory=True, dispatch_ahead=False)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from alexnet_jax import dataset_stats, models, parallel, steps  # noqa: E402
from alexnet_jax.synthetic_data import synthetic_train  # noqa: E402
from configs import imagenet  # noqa: E402
from experiments.benchmarks.host_memory import peak_rss_mib, rss_mib  # noqa: E402


def main(variant: str) -> None:
    jax.config.update('jax_cpu_enable_async_dispatch', False)
    base, out = rss_mib(), {}

    def mark(name: str) -> None:
        out[name] = (round(rss_mib() - base), round(peak_rss_mib() - base))

    def trim(env: str, name: str) -> None:
        if os.environ.get(env):
            ctypes.CDLL(None).malloc_trim(0)
            mark(name)

    jnp.zeros(3).block_until_ready()
    mark('backend')
    config = imagenet.get_config()
    config.dataset, config.model, config.batch_size = 'synthetic', variant, 32
    config.image_size = 224 if variant == 'owt' else 227
    stats = dataset_stats.load_stats(config)
    model = models.create_model(config).clone(bn_axis_name=steps.AXIS)
    shape = (config.image_size, config.image_size, 3)
    state = steps.create_train_state(config, model, shape, steps=1)
    jax.block_until_ready(state)
    mark('create')
    state = parallel.replicate(state)
    jax.block_until_ready(state)
    gc.collect()
    mark('replicate')
    trim('TRIM', 'trim')
    batch = parallel.shard(next(synthetic_train(config, 1, 32, 0, 0)))
    mark('batch')
    step, _ = steps.pmap_steps(config, stats)
    rng = jax.random.key(1)
    compiled = step.lower(state, batch, rng).compile()
    mark('compile')
    trim('TRIM2', 'trim2')
    if os.environ.get('AOT'):
        step = compiled
    state, _ = step(state, batch, rng)
    jax.block_until_ready(state)
    mark('step1')
    for _ in range(4):
        state, _ = step(state, batch, rng)
    jax.block_until_ready(state)
    mark('step5')
    print(variant, json.dumps(out))


if __name__ == '__main__':
    main(sys.argv[1])
