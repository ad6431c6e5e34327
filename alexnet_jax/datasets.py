"""The one place that maps ``config.dataset`` to its dataset object.

    dataset = datasets.get(config)
    dataset.info()                      # sizes, classes, input shape, stored image size
    dataset.source('train', process_index=i, process_count=n)   # this host's examples
    dataset.stats()                     # training-set statistics (published, exact or cached)

The objects (see `data_types.Dataset`) are `tfds_data.TfdsDataset` (imagenet2012,
fashion_mnist, cifar10), `image_folder.ImageFolder`, `synthetic_data.Synthetic` and
`prepared_data.Prepared` (a set written once by ``alexnet_jax.prepare``). A new format is
one more entry in :func:`get`. Importing this module is cheap: the dataset modules
(and with them TensorFlow) load when a dataset is first asked for.
"""

from __future__ import annotations

import os

import ml_collections

from alexnet_jax.data_types import Dataset, DatasetInfo

DATASETS = ('imagenet2012', 'fashion_mnist', 'cifar10', 'imagefolder', 'synthetic', 'prepared')


def check_dataset_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(
            f'Unknown dataset {name!r}: set config.dataset to one of {", ".join(DATASETS)}.'
        )


def get(config: ml_collections.ConfigDict) -> Dataset:
    """The dataset object for ``config.dataset``."""
    check_dataset_name(config.dataset)
    # Imported here, not at the top: config checks import DATASETS without TensorFlow.
    if config.dataset == 'synthetic':
        from alexnet_jax.synthetic_data import Synthetic

        return Synthetic(config)
    if config.dataset == 'imagefolder':
        from alexnet_jax.image_folder import ImageFolder

        return ImageFolder(config)
    if config.dataset == 'prepared':
        from alexnet_jax.prepared_data import Prepared

        return Prepared(config)
    from alexnet_jax.tfds_data import TfdsDataset

    return TfdsDataset(config)


def complete_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` with the fields the dataset decides filled in.

    imagefolder: ``num_classes`` is the number of class folders under ``dataset_path/train``
    (logged when it changes the config's value). Other datasets: an unchanged copy.
    """
    config = config.copy_and_resolve_references()
    return get(config).complete_config(config)


def run_dataset_info(config: ml_collections.ConfigDict, workdir: str) -> DatasetInfo:
    """What applying a trained run needs of its dataset: the input shape and the class names.

    A run directory written by ``alexnet_jax.convert`` carries its class names
    (``class_names.txt``) and takes RGB images, so ``predict`` and the figures work on it where
    the dataset itself (ImageNet) is not prepared. Any other run asks the dataset.
    """
    names_path = os.path.join(workdir, 'class_names.txt')
    if not os.path.isfile(names_path):
        return get(config).info()
    with open(names_path) as f:
        names = [line.strip() for line in f if line.strip()]
    size = config.image_size
    return DatasetInfo(0, 0, len(names), (size, size, 3), names)
