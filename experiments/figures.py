"""The paper's pictures from a trained run: conv1 filters (Figure 3), fc7 neighbours (Figure 4).

    python -m experiments.figures filters --workdir RUN --out filters.png
    python -m experiments.figures neighbours --workdir RUN --out neighbours.png \
        [--queries 6] [--k 6] [--train-subset 5000]

``RUN`` is the workdir of a training run (``alexnet_jax.main`` or one run of a sweep); its
newest checkpoint is used unless ``--step`` names another. Filters: every conv1 kernel scaled to
[0, 1] on its own (min to max), grey for one input channel, colour for RGB. Neighbours: the
left column holds test images (one per class, in class order), each row then the ``k`` training
images (from the first ``--train-subset`` of the train split) whose fc7 activations are nearest
by Euclidean distance, as in Section 6.1, and below it the ``k`` nearest by pixels: the paper's
point is that fc7 neighbours share the class without being close in pixel space. The title
gives how often the neighbours share the test image's class in each space, and names the run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np


def load_run(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, Any]:
    """The run's config and its trained state (newest checkpoint, or ``step``)."""
    from alexnet_jax import trained

    config = trained.config_from_workdir(workdir)
    return config, trained.load_trained_state(config, workdir, step=step)


def filter_mosaic(kernel: np.ndarray, columns: int | None = None, border: int = 1) -> np.ndarray:
    """conv1's HWIO ``kernel`` as one image [rows*(h+b)+b, cols*(w+b)+b, C], each filter in [0, 1].

    C is 1 (grey) for one input channel, else the first three channels as RGB. Borders are white.
    """
    kernel = np.asarray(kernel, np.float32)
    h, w, cin, cout = kernel.shape
    channels = 1 if cin == 1 else 3
    filters = np.moveaxis(kernel[:, :, :channels], -1, 0)  # [cout, h, w, C]
    lo = filters.min(axis=(1, 2, 3), keepdims=True)
    hi = filters.max(axis=(1, 2, 3), keepdims=True)
    filters = (filters - lo) / np.maximum(hi - lo, 1e-12)
    columns = columns or min(cout, 16 if cout > 48 else 8)
    rows = -(-cout // columns)
    mosaic = np.ones((rows * (h + border) + border, columns * (w + border) + border, channels))
    for i, f in enumerate(filters):
        r, c = divmod(i, columns)
        y, x = border + r * (h + border), border + c * (w + border)
        mosaic[y : y + h, x : x + w] = f
    return mosaic


def plot_filters(config: ml_collections.ConfigDict, state: Any, out: str, caption: str = '') -> str:
    """Figure 3: ``state``'s conv1 kernels as a grid of images, written to ``out``."""
    kernel = jax.device_get(state.params['conv1']['kernel'])
    mosaic = filter_mosaic(kernel)
    h, w, cin, cout = kernel.shape
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    scale = 0.12 if h <= 5 else 0.05
    fig, ax = plt.subplots(
        figsize=(max(3.0, mosaic.shape[1] * scale), max(2.0, mosaic.shape[0] * scale + 0.5)),
        dpi=100,
    )
    image = mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic
    ax.imshow(image, cmap='gray' if mosaic.shape[-1] == 1 else None, interpolation='nearest')
    ax.set_axis_off()
    ax.set_title(
        f'conv1: {cout} kernels {h}x{w}x{cin} ({config.model}, step {int(state.step)})'
        + (f'\n{caption}' if caption else ''),
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _centre_crops(config: ml_collections.ConfigDict, train: bool, limit: int) -> Iterator[dict]:
    """The first ``limit`` images of a split as the evaluation sees them (centre crop)."""
    import tensorflow as tf

    from alexnet_jax import datasets, preprocessing

    source = datasets.get(config).source('train' if train else 'test')
    base_hw = preprocessing.base_size(config, source.image_hw if config.crop_padding else None)
    offsets, flips = preprocessing.eval_offsets(base_hw, config.image_size, 1)
    n = min(limit, source.num_examples)
    if source.lookup is not None:
        ds = tf.data.Dataset.range(n).map(source.lookup)
    else:
        ds = source.records.take(n)

    def fn(ex):
        crops = preprocessing.make_crops(
            ex['image'], offsets, flips, config, channels=source.channels, jpeg=source.jpeg
        )
        return {
            'image': crops[0],
            'label': ex['label'],
            'crop_yx': tf.constant(offsets[0], tf.int32),
            'flip': tf.constant(False),
        }

    yield from ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).batch(256).as_numpy_iterator()


def _examples(config: ml_collections.ConfigDict, train: bool, limit: int) -> dict[str, np.ndarray]:
    from alexnet_jax import synthetic_data, tfds_data

    if config.dataset == 'synthetic':  # tests: random images, so any split will do
        chunks: Any = synthetic_data.synthetic_eval_examples(config, 0, 1)
    elif config.dataset not in tfds_data.KINDS:
        raise ValueError(f'neighbours reads tfds datasets only, not {config.dataset!r}.')
    else:
        chunks = _centre_crops(config, train, limit)
    parts, count = [], 0
    for chunk in chunks:
        parts.append(chunk)
        count += len(chunk['label'])
        if count >= limit:
            break
    return {k: np.concatenate([p[k] for p in parts])[:limit] for k in parts[0]}


def fc7_features(config: ml_collections.ConfigDict, state: Any, examples: dict) -> np.ndarray:
    """fc7 activations [N, hidden] (after the ReLU, no dropout) of uint8 ``examples``."""
    from alexnet_jax import dataset_stats, device_preprocessing, models, steps

    stats = dataset_stats.load_stats(config)
    model = models.create_model(config)
    variables = {'params': state.params, 'batch_stats': state.batch_stats}

    @jax.jit
    def features(variables, batch):  # the evaluation's inference, keeping what fc7 sowed
        images = device_preprocessing.device_preprocess(batch, None, stats, config, train=False)
        _, sown = steps.predict_probs(model.apply, variables, images, sown=True)
        return sown['stages'][0]['fc7']

    out = []
    keys = ('image', 'crop_yx', 'flip')
    for start in range(0, len(examples['label']), 256):
        batch = {k: examples[k][start : start + 256] for k in keys}
        out.append(np.asarray(features(variables, batch)))
    return np.concatenate(out)


def nearest_neighbours(queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    """Indices [Q, k] of the ``k`` database rows nearest each query row (Euclidean)."""
    d2 = (
        np.sum(queries**2, axis=1)[:, None]
        - 2.0 * queries @ database.T
        + np.sum(database**2, axis=1)[None, :]
    )
    return np.argsort(d2, axis=1, kind='stable')[:, :k]


def _pick_queries(labels: np.ndarray, count: int) -> np.ndarray:
    """The first test image of each class, in class order, then further images if needed."""
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
    rest = [i for i in range(len(labels)) if i not in set(firsts)]
    return np.asarray((firsts + rest)[:count])


def same_class_fraction(
    query_labels: np.ndarray, pool_labels: np.ndarray, idx: np.ndarray
) -> float:
    """The fraction of the neighbours ``idx`` [Q, k] whose label is their query's."""
    return float(np.mean(pool_labels[idx] == query_labels[:, None]))


def neighbours_by_space(
    config: ml_collections.ConfigDict, state: Any, test: dict, pool: dict, k: int
) -> dict[str, np.ndarray]:
    """Indices [Q, k] of each test image's ``k`` nearest pool images, in fc7 space and in pixel
    space (the uint8 crops as vectors): the paper's point is that the two differ."""

    def pixels(examples: dict) -> np.ndarray:
        return examples['image'].reshape(len(examples['image']), -1).astype(np.float32)

    return {
        'fc7': nearest_neighbours(
            fc7_features(config, state, test), fc7_features(config, state, pool), k
        ),
        'pixels': nearest_neighbours(pixels(test), pixels(pool), k),
    }


def plot_neighbours(
    config: ml_collections.ConfigDict,
    state: Any,
    out: str,
    queries: int = 6,
    k: int = 6,
    train_subset: int = 5000,
    caption: str = '',
) -> str:
    """Figure 4: test images and their nearest training images in fc7 space, each with the
    nearest in pixel space on the row below, to ``out``. The title gives, over 200 test images,
    how often the neighbours share the test image's class in each space."""
    test = _examples(config, train=False, limit=max(200, queries))
    pool = _examples(config, train=True, limit=train_subset)
    agreement = {
        space: same_class_fraction(test['label'], pool['label'], idx)
        for space, idx in neighbours_by_space(config, state, test, pool, k).items()
    }
    chosen = _pick_queries(test['label'], queries)
    shown = {key: v[chosen] for key, v in test.items()}
    spaces = neighbours_by_space(config, state, shown, pool, k)
    names = _class_names(config)
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = 2 * len(chosen)
    fig, axes = plt.subplots(
        rows, k + 1, figsize=(1.1 * (k + 1), 1.1 * rows + 0.4), dpi=80, squeeze=False
    )
    for q in range(len(chosen)):
        for offset, (space, idx) in enumerate(spaces.items()):
            row = 2 * q + offset
            images = [shown['image'][q]] + [pool['image'][j] for j in idx[q]]
            labels = [shown['label'][q]] + [pool['label'][j] for j in idx[q]]
            for col, (image, label) in enumerate(zip(images, labels, strict=True)):
                ax = axes[row, col]
                ax.set_xticks([])
                ax.set_yticks([])
                if col == 0 and offset:  # the test image once per pair of rows
                    ax.set_axis_off()
                    continue
                grey = image.shape[-1] == 1
                ax.imshow(
                    image[..., 0] if grey else image,
                    cmap='gray' if grey else None,
                    interpolation='nearest',  # sharper, and a smaller PNG
                )
                colour = 'black' if col == 0 or label == labels[0] else 'red'
                ax.set_title(names[int(label)][:12], fontsize=6, color=colour)
            axes[row, 1].set_ylabel(space, fontsize=7)
    fig.suptitle(
        f'The {k} nearest of {len(pool["label"])} training images by fc7 (upper rows) and by '
        f'pixels (lower rows); red: another class.\nSame class over 200 test images: fc7 '
        f'{agreement["fc7"]:.0%}, pixels {agreement["pixels"]:.0%}.'
        + (f'\n{caption}' if caption else ''),
        fontsize=7,
    )
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _class_names(config: ml_collections.ConfigDict) -> list[str]:
    from alexnet_jax import datasets

    return datasets.get(config).info().class_names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    commands = parser.add_subparsers(dest='figure', required=True)
    for name in ('filters', 'neighbours'):
        sub = commands.add_parser(name)
        sub.add_argument('--workdir', required=True, help='a training run directory')
        sub.add_argument('--out', required=True, help='the PNG to write')
        sub.add_argument('--step', type=int, default=None, help='checkpoint step (newest)')
        if name == 'neighbours':
            sub.add_argument('--queries', type=int, default=6, help='test images (rows)')
            sub.add_argument('--k', type=int, default=6, help='neighbours per test image')
            sub.add_argument('--train-subset', type=int, default=5000, help='training images')
    args = parser.parse_args(argv)
    from alexnet_jax import cli, runtime

    runtime.configure()
    cli.quiet_libraries()
    try:
        config, state = load_run(args.workdir, args.step)
        caption = f'run {args.workdir.rstrip("/")}, step {int(state.step)}'
        if args.figure == 'filters':
            path = plot_filters(config, state, args.out, caption)
        else:
            path = plot_neighbours(
                config, state, args.out, args.queries, args.k, args.train_subset, caption
            )
    except (FileNotFoundError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
