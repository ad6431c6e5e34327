"""oneDNN's convolution kernels against XLA's, layer by layer: the evidence for ``onednn_conv``'s
choice of which convolutions it runs on this host's instruction set.

For each convolution of `owt` or `paper` (batch 32, float32, CPU): the forward pass, input
gradient and kernel gradient through oneDNN's primitives (``onednn_conv._conv``: whatever
``onednn_conv.conv``'s rules would pick) and through XLA's own convolution (one per group, as
``ops.split_grouped_conv``), each jitted alone, alternating in 7 rounds of 3 calls; the median
round. The last column is what the model runs (``onednn_conv.conv``'s choice for that layer).
An AVX2 host is emulated by capping oneDNN (``ONEDNN_MAX_CPU_ISA=AVX2``) and XLA's code
generation (``XLA_FLAGS=--xla_cpu_max_isa=AVX2``):

    python experiments/benchmarks/conv_choice.py --variant owt
    ONEDNN_MAX_CPU_ISA=AVX2 XLA_FLAGS=--xla_cpu_max_isa=AVX2 \\
        python experiments/benchmarks/conv_choice.py --variant owt
"""

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)

from alexnet_jax import runtime  # noqa: E402

runtime.configure(keep_host_memory=True, dispatch_ahead=False)  # as a training run

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax import onednn_conv, ops  # noqa: E402
from experiments.benchmarks.layers import CONVS  # noqa: E402
from experiments.benchmarks.step_parts import onednn_everywhere  # noqa: E402

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _onednn(x, w, stride, pad, groups):
    """oneDNN's primitives on every group, whatever ``onednn_conv.conv`` would choose."""
    return onednn_everywhere(x, w, (stride,) * 2, [(pad, pad)] * 2, feature_group_count=groups)


def _xla(x, w, stride, pad, groups):
    padding = [(pad, pad)] * 2
    return ops.split_grouped_conv(
        x, w, (stride,) * 2, padding, feature_group_count=groups, dimension_numbers=NHWC
    )


def _chosen(x, w, stride, pad, groups) -> str:
    """'oneDNN' or 'XLA': which one ``onednn_conv.conv`` puts in the model for this layer."""
    padding = [(pad, pad)] * 2

    def model(x, w):
        return onednn_conv.conv(
            x, w, (stride,) * 2, padding, feature_group_count=groups, dimension_numbers=NHWC
        )

    jaxpr = str(jax.make_jaxpr(model)(x, w))
    return 'oneDNN' if 'alexnet_onednn_conv' in jaxpr else 'XLA'


def _parts(conv, x, w, g, stride, pad, groups):
    def f(x, w):
        return conv(x, w, stride, pad, groups)

    return {
        'forward': (jax.jit(f), (x, w)),
        'input grad': (jax.jit(lambda x, w, g: jax.vjp(lambda x: f(x, w), x)[1](g)[0]), (x, w, g)),
        'kernel grad': (
            jax.jit(lambda x, w, g: jax.vjp(lambda w: f(x, w), w)[1](g)[0]),
            (x, w, g),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--variant', choices=sorted(CONVS), default='owt')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--calls', type=int, default=3, help='calls per round')
    args = parser.parse_args()
    onednn_conv.load()
    isa = 'AVX-512' if onednn_conv.runs_avx512() else 'below AVX-512'
    print(
        f'{args.variant}, batch {args.batch}, float32, {os.cpu_count()} CPUs, oneDNN {isa} '
        f'(ONEDNN_MAX_CPU_ISA={os.environ.get("ONEDNN_MAX_CPU_ISA", "")}, '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")}); median ms of {args.rounds} rounds'
    )
    print('| layer | part | oneDNN | XLA | oneDNN / XLA | rounds (min-max) | the model runs |')
    print('|---|---|---:|---:|---:|---|---|')
    rng = np.random.default_rng(0)
    for name, size, cin, cout, k, stride, pad, groups in CONVS[args.variant]:
        x = jnp.asarray(rng.normal(size=(args.batch, size, size, cin)), jnp.float32)
        w = jnp.asarray(0.01 * rng.normal(size=(k, k, cin // groups, cout)), jnp.float32)
        g = jnp.ones_like(_xla(x, w, stride, pad, groups))
        sides = {
            'oneDNN': _parts(_onednn, x, w, g, stride, pad, groups),
            'XLA': _parts(_xla, x, w, g, stride, pad, groups),
        }
        chosen = _chosen(x, w, stride, pad, groups)
        for part in ('forward', 'input grad', 'kernel grad'):
            if name == 'conv1' and part == 'input grad':
                continue  # the step never needs the images' gradient
            times: dict[str, list[float]] = {side: [] for side in sides}
            for fns in sides.values():  # compile and warm up
                fn, inputs = fns[part]
                jax.block_until_ready(fn(*inputs))
            for _ in range(args.rounds):  # alternate, so that drift hits both alike
                for side, fns in sides.items():
                    fn, inputs = fns[part]
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        out = fn(*inputs)
                    jax.block_until_ready(out)
                    times[side].append((time.perf_counter() - start) / args.calls * 1e3)
            a, b = (statistics.median(times[side]) for side in ('oneDNN', 'XLA'))
            ratios = [p / q for p, q in zip(times['oneDNN'], times['XLA'], strict=True)]
            print(
                f'| {name} | {part} | {a:.1f} | {b:.1f} | {a / b:.2f} '
                f'| {min(ratios):.2f}-{max(ratios):.2f} | {chosen} |',
                flush=True,
            )


if __name__ == '__main__':
    main()
