"""Milliseconds per layer of `owt` (or `paper`): our ops against PyTorch's, side by side.

Where the training-step benchmark says how far apart the two frameworks are, this one says
where: the forward pass, input gradient and kernel gradient of each convolution, each fully
connected layer and each max-pool, at the step's batch size, float32, on CPU. Ours are the ops
the model uses on CPU (``layers.kernels_for('cpu')``: oneDNN's or XLA's convolutions,
one dot for the dense layers, ``ops.max_pool``), jitted one at a
time; PyTorch's are ``conv2d`` and ``torch.nn.grad``, ``linear`` and ``max_pool2d``, the
convolutions and pools channels-last (its faster layout on CPU, as in the training step's best
PyTorch setting). Both run in this process, alternating, after
``runtime.configure(keep_host_memory=True)``, so that neither pays for fresh pages.

    python experiments/benchmarks/layers.py [--variant owt|paper] [--batch 32] [--repeats 7]

Needs torch (``requirements-bench.txt``).
"""

import argparse
import functools
import os
import sys
from collections.abc import Callable

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)

from alexnet_jax import runtime  # noqa: E402

runtime.configure(keep_host_memory=True)  # first: the process settings a training run has

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax import layers, ops  # noqa: E402
from experiments.benchmarks.lrn import time_call  # noqa: E402

# (name, input size, in channels, out channels, kernel, stride, padding, groups)
CONVS = {
    'owt': [
        ('conv1', 224, 3, 64, 11, 4, 2, 1),
        ('conv2', 27, 64, 192, 5, 1, 2, 1),
        ('conv3', 13, 192, 384, 3, 1, 1, 1),
        ('conv4', 13, 384, 256, 3, 1, 1, 1),
        ('conv5', 13, 256, 256, 3, 1, 1, 1),
    ],
    'paper': [
        ('conv1', 227, 3, 96, 11, 4, 0, 1),
        ('conv2', 27, 96, 256, 5, 1, 2, 2),
        ('conv3', 13, 256, 384, 3, 1, 1, 1),
        ('conv4', 13, 384, 384, 3, 1, 1, 2),
        ('conv5', 13, 384, 256, 3, 1, 1, 2),
    ],
}
# (name, input size, channels) of the 3x3/2 max-pools
POOLS = {
    'owt': [('pool1', 55, 64), ('pool2', 27, 192), ('pool5', 13, 256)],
    'paper': [('pool1', 55, 96), ('pool2', 27, 256), ('pool5', 13, 256)],
}
FCS = [('fc6', 9216, 4096), ('fc7', 4096, 4096), ('fc8', 4096, 1000)]


KERNELS = layers.kernels_for('cpu')


def _ready(fn: Callable, *args: object) -> object:
    return jax.block_until_ready(fn(*args))


def conv_rows(variant: str, batch: int, rng: np.random.Generator, torch) -> list[tuple]:
    rows = []
    for name, size, cin, cout, k, stride, pad, groups in CONVS[variant]:
        x = rng.normal(size=(batch, size, size, cin)).astype(np.float32)
        w = (0.01 * rng.normal(size=(k, k, cin // groups, cout))).astype(np.float32)

        def conv(x, w, stride=stride, pad=pad, groups=groups):
            return KERNELS.conv(
                x,
                w,
                (stride, stride),
                [(pad, pad), (pad, pad)],
                feature_group_count=groups,
                dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
            )

        xj, wj = jnp.asarray(x), jnp.asarray(w)
        gj = jnp.ones_like(conv(xj, wj))
        fwd = jax.jit(conv)
        dx = jax.jit(lambda x, w, g, conv=conv: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
        dw = jax.jit(lambda x, w, g, conv=conv: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])

        # Channels-last on PyTorch's side too: its faster layout on CPU (train_step.py).
        cl = torch.channels_last
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=cl)
        wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).contiguous(memory_format=cl)
        f = torch.nn.functional
        gt = torch.ones_like(f.conv2d(xt, wt, stride=stride, padding=pad, groups=groups))
        gt = gt.contiguous(memory_format=cl)
        kw = dict(stride=stride, padding=pad, groups=groups)
        part = functools.partial
        ours = [
            part(_ready, fwd, xj, wj),
            part(_ready, dx, xj, wj, gj),
            part(_ready, dw, xj, wj, gj),
        ]
        theirs = [
            part(f.conv2d, xt, wt, **kw),
            part(torch.nn.grad.conv2d_input, xt.shape, wt, gt, **kw),
            part(torch.nn.grad.conv2d_weight, xt, wt.shape, gt, **kw),
        ]
        parts = ('forward', 'input grad', 'kernel grad')
        rows += [(name, p, o, t) for p, o, t in zip(parts, ours, theirs, strict=True)]
    return rows


def fc_rows(batch: int, rng: np.random.Generator, torch) -> list[tuple]:
    rows = []
    dense = layers.kernels_for('cpu').dense
    for name, n_in, n_out in FCS:
        x = rng.normal(size=(batch, n_in)).astype(np.float32)
        w = (0.01 * rng.normal(size=(n_in, n_out))).astype(np.float32)
        xj, wj = jnp.asarray(x), jnp.asarray(w)
        gj = jnp.ones((batch, n_out), jnp.float32)
        fwd = jax.jit(dense)
        dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: dense(x, w), x)[1](g)[0])
        dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: dense(x, w), w)[1](g)[0])
        xt = torch.from_numpy(x)
        wt = torch.from_numpy(w.T.copy())  # PyTorch stores [out, in]
        gt = torch.ones(batch, n_out)
        part = functools.partial
        # What autograd runs for F.linear's two gradients.
        rows.append(
            (name, 'forward', part(_ready, fwd, xj, wj), part(torch.nn.functional.linear, xt, wt))
        )
        rows.append((name, 'input grad', part(_ready, dx, xj, wj, gj), part(torch.mm, gt, wt)))
        rows.append((name, 'kernel grad', part(_ready, dw, xj, wj, gj), part(torch.mm, gt.t(), xt)))
    return rows


def pool_rows(variant: str, batch: int, rng: np.random.Generator, torch) -> list[tuple]:
    rows = []
    for name, size, channels in POOLS[variant]:
        x = np.maximum(rng.normal(size=(batch, size, size, channels)), 0).astype(np.float32)
        xj = jnp.asarray(x)
        gj = jnp.ones_like(ops.max_pool(xj, 3, 2))
        both = jax.jit(lambda x, g: jax.vjp(lambda x: ops.max_pool(x, 3, 2), x)[1](g)[0])
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        xt = xt.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        gt = torch.ones_like(torch.nn.functional.max_pool2d(xt, 3, 2))

        def torch_both(xt=xt, gt=gt):
            return torch.autograd.grad(torch.nn.functional.max_pool2d(xt, 3, 2), xt, gt)

        rows.append((name, 'fwd+grad', functools.partial(_ready, both, xj, gj), torch_both))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--variant', choices=sorted(CONVS), default='owt')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=7)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    rows = conv_rows(args.variant, args.batch, rng, torch)
    rows += fc_rows(args.batch, rng, torch)
    rows += pool_rows(args.variant, args.batch, rng, torch)
    print(f'{args.variant}, batch {args.batch}, float32, {os.cpu_count()} CPUs; median ms')
    print('| layer | part | ours | PyTorch | ours/PyTorch time |\n|---|---|---:|---:|---:|')
    total_ours = total_theirs = 0.0
    for name, part, ours, theirs in rows:
        if name == 'conv1' and part == 'input grad':
            continue  # the step never needs the images' gradient
        a = time_call(
            ours, warmup=1, repeats=args.repeats
        )  # alternate, so that drift hits both alike
        b = time_call(theirs, warmup=1, repeats=args.repeats)
        total_ours, total_theirs = total_ours + a, total_theirs + b
        print(f'| {name} | {part} | {a:.1f} | {b:.1f} | {a / b:.2f} |', flush=True)
    ratio = total_ours / total_theirs
    print(f'| all | | {total_ours:.1f} | {total_theirs:.1f} | {ratio:.2f} |')


if __name__ == '__main__':
    main()
