"""fc6-8 at batch 32: ops.dense (forward as a 1x1 convolution) against one dot, jitted alone.

Ran at commit 3bf2a39, the last with ``ops.dense`` (removed after this measurement).
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', '..'))
from alexnet_jax import runtime  # noqa: E402

runtime.configure(keep_host_memory=True, dispatch_ahead=False)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax import ops  # noqa: E402

rng = np.random.default_rng(0)
print('jax', jax.__version__, 'XLA_FLAGS', os.environ.get('XLA_FLAGS'))
print('| layer | part | ops.dense ms | one dot ms | one dot / ops.dense (rounds min-max) |')
print('|---|---|---:|---:|---|')
for name, n_in, n_out in (('fc6', 9216, 4096), ('fc7', 4096, 4096), ('fc8', 4096, 1000)):
    x = jnp.asarray(rng.normal(size=(32, n_in)).astype(np.float32))
    w = jnp.asarray((0.01 * rng.normal(size=(n_in, n_out))).astype(np.float32))
    g = jnp.ones((32, n_out), jnp.float32)
    parts = {}
    for label, f in (('ops.dense', ops.dense), ('one dot', ops.plain_dense)):
        parts[label] = {
            'forward': jax.jit(f),
            'train': jax.jit(lambda x, w, g, f=f: jax.vjp(f, x, w)[1](g)),
        }
    for part in ('forward', 'train'):
        fns = {label: parts[label][part] for label in parts}
        args = (x, w) if part == 'forward' else (x, w, g)
        for fn in fns.values():
            for _ in range(3):
                jax.block_until_ready(fn(*args))
        times = {label: [] for label in fns}
        for _ in range(15):
            for label, fn in fns.items():
                t = time.perf_counter()
                for _ in range(5):
                    out = fn(*args)
                jax.block_until_ready(out)
                times[label].append((time.perf_counter() - t) / 5)
        a, b = times['ops.dense'], times['one dot']
        r = [y / x_ for x_, y in zip(a, b, strict=True)]
        label = 'forward' if part == 'forward' else 'both gradients'
        ms_a, ms_b = statistics.median(a) * 1e3, statistics.median(b) * 1e3
        spread = f'{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})'
        print(f'| {name} | {label} | {ms_a:.2f} | {ms_b:.2f} | {spread} |')
