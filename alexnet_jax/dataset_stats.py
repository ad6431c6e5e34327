"""A config's training-set statistics, and the command that computes them into a file.

    python -m alexnet_jax.dataset_stats --config configs/X.py --out FILE [--max_images N]

writes the mean image (Section 2), the per-channel mean/std and the eigen-decomposition of the
pixel covariance (Section 4.1) as .npz or .json (see `image_stats`); pass the file as
``config.pca_stats``. :func:`load_stats` is what training, evaluation and prediction read.
"""

from __future__ import annotations

import logging
import sys

import ml_collections

from alexnet_jax import datasets, image_stats
from alexnet_jax.data_types import Stats

log = logging.getLogger(__name__)


def load_stats(config: ml_collections.ConfigDict) -> Stats:
    """Statistics for `device_preprocessing.device_preprocess`.

    `config.pca_stats` (a file from this module's command) wins. Otherwise the dataset's own:
    ImageNet's published values for imagenet2012 (the mean image is then the channel mean
    everywhere, as no per-pixel mean is published); exact values for synthetic; for the other
    datasets computed once from the training split and cached as .npz in the tfds data dir.
    """
    dataset = datasets.get(config)
    stats = image_stats.read_stats(config.pca_stats) if config.pca_stats else dataset.stats()
    expected = dataset.base_shape()
    if expected is not None and tuple(stats.mean_image.shape) != expected:
        raise ValueError(
            f'Stats mean_image has shape {stats.mean_image.shape}, but this config crops from '
            f'{expected} base images. Recompute them for this config with `python -m '
            'alexnet_jax.dataset_stats --config ... --out FILE` and set config.pca_stats=FILE.'
        )
    return stats


def compute_stats(
    config: ml_collections.ConfigDict, max_images: int | None = None
) -> tuple[Stats, int]:
    """Statistics over the training split (or its first `max_images`), never cached;
    returns (stats, count)."""
    dataset = datasets.get(config)
    if config.dataset == 'prepared':  # no tf.data source: the set's own base images
        return dataset.compute_stats(max_images)
    if config.dataset == 'synthetic':  # exact statistics, nothing to compute
        return dataset.stats(), dataset.info().num_train
    return image_stats.compute_stats(dataset.source('train'), config, max_images)


def main(argv: list[str]) -> None:
    from absl import app, flags

    from alexnet_jax import cli, runtime

    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    runtime.configure()
    cli.quiet_libraries()
    flags_ = flags.FLAGS
    config = flags_.config
    try:
        stats, count = compute_stats(config, flags_.max_images or None)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f'error: {error}')
    image_stats.save_stats(stats, flags_.out, num_images=count, dataset=config.dataset)
    print(f'{config.dataset}: statistics of {count} training images written to {flags_.out}')
    print(f'channel mean {stats.channel_mean}, std {stats.channel_std}')
    print(f'PCA eigenvalues {stats.pca_eigval}')


def _define_flags() -> None:
    """The command's flags, defined when it runs (a library import must not claim `--config`)."""
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).')
    flags.DEFINE_string('out', None, 'Output file, .npz or .json.')
    flags.DEFINE_integer('max_images', 0, 'Use only the first N training images (0: all).')
    flags.mark_flags_as_required(['config', 'out'])


def run() -> None:
    """The console script's entry point."""
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == '__main__':
    run()
