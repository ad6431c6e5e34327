"""The values the data code passes between its modules, and the shape of a dataset object.

A dataset object (`tfds_data.TfdsDataset`, `image_folder.ImageFolder`,
`synthetic_data.Synthetic`, `prepared_data.Prepared`; chosen by `datasets.get`) offers its
:class:`DatasetInfo`, the :class:`Source` (or :class:`HostArrays`) of a split on one host, and
its :class:`Stats`. `input_pipeline` streams any
source to host batches; `device_preprocessing` uses the statistics on the device. Nothing here
imports TensorFlow or JAX.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

if TYPE_CHECKING:
    import ml_collections
    import tensorflow as tf


TFDS_DATASETS = ('imagenet2012', 'fashion_mnist', 'cifar10')  # read through tfds_data

# The splits a dataset object serves. 'train' is what the run trains on: the dataset's training
# split less the held-out 'validation' images (config.validation_examples), which choose the
# learning rate and drive the plateau rule. 'train_clean' is a fixed subset of 'train'
# (config.train_clean_examples) evaluated like the others: eval mode, no augmentation. 'test' is
# the dataset's own evaluation split (ImageNet's validation set), evaluated once, at the end,
# when there is a validation split.
SPLITS = ('train', 'validation', 'train_clean', 'test')
# What each evaluated split's metrics are called: val_top1_error, train_clean_top1_error and
# eval_top1_error (the test split keeps the name runs have always written).
METRIC_PREFIX = {'validation': 'val', 'train_clean': 'train_clean', 'test': 'eval'}
# The held-out images are a fixed function of the dataset, not of config.seed: every seed and
# every host hold out the same ones.
VALIDATION_SEED = 0x0A1E


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    num_train: int  # the 'train' split: the training images less the validation ones
    num_eval: int  # the 'test' split
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C) of the model input
    class_names: list[str]
    num_skipped: int = 0  # corrupt images skipped (imagefolder with skip_corrupt_images)
    image_hw: tuple[int, int] | None = None  # the stored images' (H, W), when all have one size
    num_validation: int = 0
    num_train_clean: int = 0

    def count(self, split: str) -> int:
        """The number of images in ``split`` (one of `SPLITS`)."""
        check_split(split)
        return {
            'train': self.num_train,
            'validation': self.num_validation,
            'train_clean': self.num_train_clean,
            'test': self.num_eval,
        }[split]


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f'Unknown split {split!r}: one of {", ".join(SPLITS)}.')


def split_sizes(config: Any, full_train: int) -> tuple[int, int, int]:
    """(train, validation, train_clean) sizes of a training split of ``full_train`` images."""
    held_out = config.validation_examples
    if held_out >= full_train:
        raise ValueError(
            f'config.validation_examples = {held_out} leaves no training images: the training '
            f'split has {full_train}. Set it below that (0 evaluates on the test split instead).'
        )
    train = full_train - held_out
    return train, held_out, min(config.train_clean_examples, train)


def carve_validation(n: int, held_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices into a split of ``n`` examples stored in any order (an
    image folder is sorted by class): ``held_out`` of them drawn at random with the fixed
    `VALIDATION_SEED`, both index lists in ascending order."""
    chosen = np.zeros(n, bool)
    chosen[np.random.default_rng(VALIDATION_SEED).permutation(n)[:held_out]] = True
    return np.flatnonzero(~chosen), np.flatnonzero(chosen)


class Stats(NamedTuple):
    """Training-set statistics. Pixel units: 0-255, except the PCA ones (RGB in [0, 1]).

    mean_image is over *base* images (the 256x256 resized square, or the zero-padded small
    image), so that a crop's mean is the same crop of it (Caffe crops its mean image likewise).
    pca_eigvec holds eigenvectors as columns, pca_eigval is in descending order.
    """

    mean_image: np.ndarray  # [B_h, B_w, C]
    channel_mean: np.ndarray  # [C]
    channel_std: np.ndarray  # [C]
    pca_eigval: np.ndarray  # [C]
    pca_eigvec: np.ndarray  # [C, C]


@dataclasses.dataclass(frozen=True)
class Source:
    """The examples of one split on one host, read through `tf.data`.

    Exactly one of ``lookup`` (random access: index tensor -> {'image', 'label'}) and ``records``
    (a finite dataset of {'image', 'label'} in a fixed order) is set. ``encoded`` tells whether
    'image' holds encoded bytes (JPEG/PNG) or a decoded uint8 [H, W, C] tensor.
    ``decode_error(error, candidates)`` turns a decode failure into one error naming the file
    (among ``candidates``, a range of this split's files, or every file of the dataset when
    None); None where the source has no files to name.
    """

    num_examples: int
    encoded: bool
    channels: int
    lookup: Callable[[tf.Tensor], dict[str, tf.Tensor]] | None = None
    records: tf.data.Dataset | None = None
    num_skipped: int = 0  # corrupt images skipped (imagefolder, skip_corrupt_images=True)
    jpeg: bool = False  # every encoded image is a JPEG (enables windowed decoding)
    image_hw: tuple[int, int] | None = None  # when every image has this size
    decode_error: Callable[[Exception, slice | None], Exception] | None = None
    size_problem: Callable[[], str] | None = None  # why image_hw is None, in words
    names: tuple[str, ...] | None = None  # each example's file, where it has one
    skipped_names: tuple[str, ...] = ()  # files already left out as unreadable


@dataclasses.dataclass(frozen=True)
class HostArrays:
    """Examples as numpy arrays, not read through `tf.data` (synthetic data, prepared sets).

    ``train_batches(devices, per_device, start_step)`` yields [devices, per_device, ...]
    batches from `start_step` on; ``eval_chunks()`` yields this host's evaluation examples.
    """

    num_examples: int
    train_batches: Callable[[int, int, int], Iterator[dict[str, np.ndarray]]]
    eval_chunks: Callable[[], Iterator[dict[str, np.ndarray]]]


class Dataset(Protocol):
    """What every dataset object offers; built from a config by `datasets.get`."""

    config: ml_collections.ConfigDict

    def info(self) -> DatasetInfo:
        """Sizes, classes, the model input shape and the stored image size."""
        ...

    def source(
        self, split: str, *, process_index: int = 0, process_count: int = 1
    ) -> Source | HostArrays:
        """This host's share of ``split`` (`SPLITS`): equal shares of 'train', and every image
        of the other splits once over all hosts."""
        ...

    def stats(self) -> Stats:
        """The training set's statistics: published, exact, or computed once and cached."""
        ...

    def base_shape(self) -> tuple[int, int, int] | None:
        """The shape `Stats.mean_image` must have (None: it depends on the stored size)."""
        ...

    def complete_config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """`config` with the fields the dataset decides filled in (in place; returned)."""
        ...


def eval_offsets(base_hw: tuple[int, int], crop: int, num_crops: int) -> tuple[list, list]:
    """Offsets and flips of the centre crop, or of the paper's ten crops (Section 4.1).

    Ten crops: top-left, top-right, bottom-left, bottom-right, centre, then their mirrors.
    """
    dy, dx = base_hw[0] - crop, base_hw[1] - crop
    centre = [dy // 2, dx // 2]
    if num_crops == 1:
        return [centre], [False]
    if num_crops != 10:
        raise ValueError(f'config.eval_crops must be 1 or 10, got {num_crops}.')
    five = [[0, 0], [0, dx], [dy, 0], [dy, dx], centre]
    return five + five, [False] * 5 + [True] * 5


def tfds_data_dir(config: Any) -> str:
    """The tfds data dir (also where statistics are cached): `config.data_dir`, else
    $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    if config.data_dir:
        return os.path.expanduser(config.data_dir)
    return os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))
