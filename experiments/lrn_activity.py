"""How active is Section 3.3's LRN? The size of alpha * sum(a^2) against k at each LRN layer.

    python -m experiments.lrn_activity --workdir RUN [--batches 2] [--step N] [--init]
    python -m experiments.lrn_activity --config configs/fashion_mnist.py --init [--batches 2] \
        [--config.normalization=mean_image --config.init_scheme=paper]

LRN divides each a_i by (k + alpha * S_i)^beta, with S_i the sum of a_j^2 over the n channels
centred on channel i, clipped at the first and last channel (Section 3.3). Written as
k^beta * (1 + r_i)^beta with r_i = alpha * S_i / k, the layer is a constant factor k^-beta times
a scale factor (1 + r_i)^-beta: when r << 1 everywhere it normalises nothing. For each LRN layer
(``norm1`` after conv1's ReLU, ``norm2`` after conv2's) this reports the mean, median, 90th and
99th percentile and maximum of r over every image, position and channel, and the mean scale
factor (1 + r)^-beta.

Convention: the project's (``alexnet_jax/lrn.py``), which is the paper's: alpha is NOT divided
by n (Caffe and PyTorch divide it). k, n, alpha, beta and the tower slices (``groups``, with
``tower_local_lrn``) are read from each LRN module itself.

The LRN inputs are captured with ``flax.linen.intercept_methods`` on the project's LRN modules:
the model's outputs and parameters are untouched. The images are what the network sees in
evaluation: ``input_pipeline.create_eval_iter`` batches through ``device_preprocess`` as
``steps.eval_step`` does (centre crop or ten crops, the config's normalisation and compute
dtype), padding examples dropped. ``--init`` measures fresh parameters from the config (drawn
as ``steps.create_train_state`` draws them) instead of a checkpoint.
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax.lrn import LRN

STATISTICS = ('mean', 'median', 'p90', 'p99', 'max', 'scale_mean')


def _window_sum(x: jax.Array, size: int) -> jax.Array:
    """Sum over the ``size`` channels centred on each channel (last axis), clipped at the edges."""
    half, channels = size // 2, x.shape[-1]
    total = jnp.zeros_like(x)
    for offset in range(-half, half + 1):
        lo, hi = max(0, -offset), min(channels, channels - offset)  # channels i with i+offset valid
        total = total.at[..., lo:hi].add(x[..., lo + offset : hi + offset])
    return total


def _ratio(a: jax.Array, module: LRN) -> jax.Array:
    """r = alpha * S / k for the input ``a`` of ``module``, in float32 or wider (as lrn.py)."""
    a = a.astype(jnp.promote_types(a.dtype, jnp.float32))
    squares = jnp.split(a * a, module.groups, axis=-1)  # each tower's channels on their own
    sums = jnp.concatenate([_window_sum(s, module.size) for s in squares], axis=-1)
    return module.alpha * sums / module.k


def lrn_ratios(
    model: nn.Module, variables: Any, images: jax.Array
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Per LRN layer: (r, the scale factor (1 + r)^-beta), each with the LRN input's shape.

    ``images`` are model inputs ([N, H, W, C], or [N, crops, H, W, C]); eval mode.
    """
    images = images.reshape(-1, *images.shape[-3:])
    found: dict[str, tuple[jax.Array, jax.Array]] = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, LRN) and context.method_name == '__call__':
            r = _ratio(args[0], module)
            found[module.name] = (r, (1.0 + r) ** -module.beta)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        model.apply(variables, images, train=False)
    return found


def summarize(ratios: dict[str, tuple[Any, Any]]) -> dict[str, dict[str, float]]:
    """:data:`STATISTICS` of each layer's (r, scale factor), over every element."""
    summary = {}
    for name, (r, scale) in ratios.items():
        r = np.asarray(r, np.float64).ravel()
        p50, p90, p99 = np.percentile(r, [50, 90, 99])
        summary[name] = {
            'mean': float(r.mean()),
            'median': float(p50),
            'p90': float(p90),
            'p99': float(p99),
            'max': float(r.max()),
            'scale_mean': float(np.mean(np.asarray(scale, np.float64))),
        }
    return summary


def lrn_activity(
    model: nn.Module, variables: Any, images: jax.Array
) -> dict[str, dict[str, float]]:
    """Layer name -> mean, median, p90, p99 and max of alpha * S / k, and the mean scale factor
    (1 + alpha * S / k)^-beta, over images, positions and channels. Empty without LRN layers."""
    return summarize(jax.jit(functools.partial(lrn_ratios, model))(variables, images))


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
    header = ['layer', 'mean r', 'median r', 'p90 r', 'p99 r', 'max r', 'mean (1+r)^-beta']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for name, s in summary.items():
        cells = [f'{s[k]:.3g}' for k in ('mean', 'median', 'p90', 'p99', 'max')]
        lines.append('| ' + ' | '.join([name, *cells, f'{s["scale_mean"]:.6f}']) + ' |')
    return '\n'.join(lines)


def eval_images(config: ml_collections.ConfigDict, batches: int) -> Iterator[jax.Array]:
    """The first ``batches`` evaluation batches as the network sees them (see the docstring)."""
    from alexnet_jax import dataset_stats, device_preprocessing, input_pipeline, steps

    stats = dataset_stats.load_stats(config)
    dtype = steps.compute_dtype(config)

    @jax.jit
    def preprocess(batch):
        return device_preprocessing.device_preprocess(
            batch, None, stats, config, train=False, dtype=dtype
        )

    for batch in itertools.islice(
        input_pipeline.create_eval_iter(config, local_device_count=1), batches
    ):
        batch = {k: v[0] for k, v in batch.items()}  # the one device's shard
        keep = batch.pop('mask')  # padding examples are not images of the split
        yield preprocess({k: v[keep] for k, v in batch.items()})


def measure(
    config: ml_collections.ConfigDict, variables: Any, batches: int
) -> dict[str, dict[str, float]]:
    """:func:`lrn_activity` pooled over ``batches`` evaluation batches."""
    from alexnet_jax import models

    model = models.create_model(config)
    ratios = jax.jit(lambda v, x: lrn_ratios(model, v, x))
    pooled: dict[str, list[list[np.ndarray]]] = {}
    for images in eval_images(config, batches):
        for name, pair in jax.device_get(ratios(variables, images)).items():
            for kept, value in zip(pooled.setdefault(name, [[], []]), pair, strict=True):
                kept.append(np.asarray(value).ravel())
    return summarize({name: tuple(map(np.concatenate, pair)) for name, pair in pooled.items()})


def _variables(
    config: ml_collections.ConfigDict, workdir: str | None, init: bool, step: int | None
) -> dict[str, Any]:
    """The run's checkpointed variables, or fresh ones (``init``) as training draws them."""
    from alexnet_jax import datasets, models, steps, trained

    if init:
        model = models.create_model(config)
        state = steps.create_train_state(config, model, datasets.get(config).info().image_shape, 1)
    else:
        state = trained.load_trained_state(config, workdir, step)
    return {'params': state.params, 'batch_stats': state.batch_stats}


def main(argv: list[str]) -> None:
    from absl import app, flags

    from alexnet_jax import cli, config_checks, runtime, specs, trained

    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    runtime.configure()
    cli.quiet_libraries()
    f = flags.FLAGS
    try:
        if f.workdir is None and (f.config is None or not f.init):
            raise ValueError('Give --workdir RUN, or --config FILE with --init.')
        config = f.config if f.workdir is None else trained.config_from_workdir(f.workdir)
        config_checks.validate_config(config)
        spec = specs.resolve_model(config)
        variables = _variables(config, f.workdir, f.init, f.step)
        summary = measure(config, variables, f.batches)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f'error: {error}')
    if not summary:
        sys.exit(f'error: model {config.model!r} with norm={spec.norm!r} has no LRN layer.')
    source = (
        'initialisation'
        if f.init
        else (f'checkpoint step {f.step}' if f.step else 'newest checkpoint')
    )
    print(
        f'LRN activity: model {config.model}, {config.dataset}, normalization='
        f'{config.normalization}, init_scheme={spec.init_scheme}, {source}, '
        f'{f.batches} evaluation batch(es) of {config.eval_batch_size or config.batch_size}; '
        'r = alpha * sum(a^2) / k (alpha not divided by n)\n'
    )
    print(markdown_table(summary))


def _define_flags() -> None:
    """The command's flags, defined when it runs (an import must not claim `--config`)."""
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        'config', None, 'Config file (configs/*.py), with --init; overrides as --config.FIELD=V.'
    )
    flags.DEFINE_string('workdir', None, 'A training run directory (its config and checkpoint).')
    flags.DEFINE_integer('batches', 2, 'Evaluation batches to measure.')
    flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest).')
    flags.DEFINE_bool('init', False, 'Measure fresh parameters from the config, not a checkpoint.')


def run() -> None:
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == '__main__':
    run()
