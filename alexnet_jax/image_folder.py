"""An image folder, root/{train,val,test}/<class_name>/<image>, as a dataset object.

:class:`ImageFolder` offers the folder's info (classes are the sub-folders of train/, sorted),
its per-host sources (random access to the file list; files are decoded by the pipeline) and its
statistics, cached under a hash of the training files' names, sizes and modification times.
Every file's header is checked once (memoised on that hash); a corrupt file is an error naming
it, or skipped and counted with ``config.skip_corrupt_images``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np
import tensorflow as tf

from alexnet_jax import image_stats
from alexnet_jax.data_types import (
    DatasetInfo,
    Source,
    Stats,
    carve_validation,
    check_split,
    split_sizes,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


class ImageFolderError(ValueError):
    """An image folder that cannot be used as it is; the message names the path and the fix."""


def _visible_dirs(folder: Path) -> list[Path]:
    """Sub-folders, sorted, without hidden ones (.ipynb_checkpoints, .DS_Store folders, ...)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.'))


def _is_image_file(f: Path) -> bool:
    """An image by its extension, and not hidden (macOS's ._name.jpg companions are not)."""
    return f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith('.') and f.is_file()


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(f for f in class_dir.iterdir() if _is_image_file(f))


def _require_root(root: str | None) -> None:
    if not root:
        raise ImageFolderError(
            'dataset=imagefolder needs config.dataset_path (the folder root): '
            '--config.dataset_path=DIR with DIR/train/<class_name>/<image>.jpg.'
        )


def image_folder_classes(root: str) -> list[str]:
    """The class names: the sub-folders of `root/train`, sorted (hidden folders are not classes)."""
    _require_root(root)
    train = Path(root) / 'train'
    if not train.is_dir():
        raise FileNotFoundError(
            f'imagefolder: {train} does not exist. Lay the images out as '
            f'{root}/train/<class_name>/<image>.jpg (and optionally val/ or test/).'
        )
    folders = _visible_dirs(train)
    if not folders:
        raise ImageFolderError(
            f"imagefolder: no class folders in {train}. Put each class's images in a folder of "
            f'its own: {train}/<class_name>/<image>.jpg.'
        )
    for folder in folders:  # an empty one would be a class the model can never learn
        if not any(_is_image_file(f) for f in folder.iterdir()):
            raise ImageFolderError(
                f'imagefolder: class folder {folder} has no images ({"/".join(IMAGE_EXTENSIONS)}).'
                f' Every folder under {train} is a class: add its images, or remove the folder.'
            )
    return [folder.name for folder in folders]


def image_folder_eval_split(root: str) -> str | None:
    """The first of val/, validation/ and test/ that `root` has, or None."""
    _require_root(root)
    for name in ('val', 'validation', 'test'):
        if (Path(root) / name).is_dir():
            return name
    return None


def _list_split(root: str, split: str) -> list[tuple[int, Path]]:
    """(label, file) of every image file of `root/split` by extension, in sorted order."""
    index = {c: i for i, c in enumerate(image_folder_classes(root))}
    folder = Path(root) / split
    files = []
    for class_dir in _visible_dirs(folder):
        if class_dir.name not in index:
            raise ImageFolderError(
                f'imagefolder: class {class_dir.name!r} in {folder} has no folder in {root}/train.'
            )
        files += [(index[class_dir.name], f) for f in _image_files(class_dir)]
    return files


def image_folder_fingerprint(root: str, split: str) -> str:
    """A hash of `root/split`'s image files: class, name, size and modification time of each.

    Adding, removing, renaming or rewriting an image changes it; reading costs one stat a file.
    """
    digest = hashlib.sha1(os.path.abspath(root).encode())
    for label, f in _list_split(root, split):
        st = f.stat()
        digest.update(
            f'{label}\0{f.parent.name}/{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode()
        )
    return digest.hexdigest()


def _image_header(path: Path) -> tuple[str, tuple[int, int]] | None:
    """PIL's format name and the (height, width) of the file, or None if unreadable.

    Reads the header and checks the structure (`verify`) without decoding the pixels: cheap.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
            im.verify()
        return fmt, (h, w)
    except Exception:  # noqa: BLE001 - PIL raises many types for bad files
        return None


@dataclasses.dataclass(frozen=True)
class FolderSplit:
    """The readable images of one split of an image folder, sorted by class then name."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    num_skipped: int  # unreadable files skipped (skip_corrupt_images=True)
    jpeg: bool  # every image is a JPEG
    sizes: frozenset[tuple[int, int]]  # the (height, width) of the images
    skipped: tuple[str, ...] = ()  # the unreadable files skipped


def scan_image_folder(root: str, split: str, skip_corrupt: bool) -> FolderSplit:
    """`root/split`'s images, each file's header checked; memoised on the files' fingerprint.

    The memo is keyed on :func:`image_folder_fingerprint`, so images added, removed or rewritten
    since are seen within the same process too.
    """
    return _scan(root, split, skip_corrupt, image_folder_fingerprint(root, split))


@functools.lru_cache(maxsize=16)
def _scan(root: str, split: str, skip_corrupt: bool, fingerprint: str) -> FolderSplit:
    del fingerprint  # the memo key only
    paths, labels, skipped, formats, sizes = [], [], [], set(), set()
    kept_per_class: dict[int, int] = {}
    for label, f in _list_split(root, split):
        header = _image_header(f)
        kept_per_class.setdefault(label, 0)
        if header is None:
            if skip_corrupt:
                skipped.append(str(f))
                continue
            raise ImageFolderError(
                f'imagefolder: corrupt or unreadable image {f}. Remove it, or set '
                'config.skip_corrupt_images=True to skip (and count) such files.'
            )
        paths.append(str(f))
        labels.append(label)
        formats.add(header[0])
        sizes.add(header[1])
        kept_per_class[label] += 1
    folder = Path(root) / split
    if not paths:
        raise ImageFolderError(
            f'imagefolder: no images ({"/".join(IMAGE_EXTENSIONS)}) under {folder}/<class>/.'
        )
    if split == 'train':
        classes = image_folder_classes(root)
        for label, kept in kept_per_class.items():
            if not kept:
                raise ImageFolderError(
                    f'imagefolder: every image in {folder / classes[label]} is unreadable (all '
                    'skipped as corrupt). Replace them, or remove the folder.'
                )
    if skipped:
        log.warning('imagefolder: skipped %d corrupt images under %s', len(skipped), folder)
    return FolderSplit(
        tuple(paths),
        tuple(labels),
        len(skipped),
        formats == {'JPEG'},
        frozenset(sizes),
        tuple(skipped),
    )


def image_folder_size(root: str, skip_corrupt: bool) -> tuple[int, int] | None:
    """The (height, width) every image of the train and eval splits has, or None if they vary."""
    sizes = set(scan_image_folder(root, 'train', skip_corrupt).sizes)
    split = image_folder_eval_split(root)
    if split:
        sizes |= scan_image_folder(root, split, skip_corrupt).sizes
    return next(iter(sizes)) if len(sizes) == 1 else None


def image_folder_size_problem(root: str, skip_corrupt: bool) -> str:
    """Why the folder has no one image size, in words (for the crop_padding > 0 error)."""
    by_split = {}
    for split in ('train', image_folder_eval_split(root)):
        if split:
            by_split[split] = scan_image_folder(root, split, skip_corrupt).sizes
    sizes = sorted(set().union(*by_split.values()))
    shown = ', '.join(f'{h}x{w}' for h, w in sizes[:3]) + (', ...' if len(sizes) > 3 else '')
    where = ' and '.join(f'{s}/' for s in by_split)
    return f'the images under {root} ({where}) have {len(sizes)} sizes (HxW: {shown})'


def find_corrupt_image(paths: Sequence[str]) -> str | None:
    """The first file that cannot be decoded in full: by PIL, then by TensorFlow's decoder.

    For naming the culprit of a decode error the pipeline met (at error time only: it decodes
    every file).
    """
    from PIL import Image

    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
        except Exception:  # noqa: BLE001
            return p
    for p in paths:  # PIL read them all: the file TensorFlow rejects
        try:
            tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
        except tf.errors.OpError:
            return p
    return None


def corrupt_image_error(
    root: str, error: tf.errors.OpError, candidates: Sequence[str]
) -> ImageFolderError:
    """One error naming the file among `candidates` that `error` (a decode failure) came from."""
    bad = find_corrupt_image(candidates)
    first = (getattr(error, 'message', '') or str(error)).splitlines()[0]
    first = first.split(' [Op:')[0].strip()
    return ImageFolderError(
        f'imagefolder: cannot decode image {bad or "(unknown)"} under {root} '
        f'({first}). Remove it, or set config.skip_corrupt_images=True to skip such files.'
    )


class ImageFolder:
    """The image folder at ``config.dataset_path``."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.root = config.dataset_path
        self.skip = bool(config.skip_corrupt_images)

    def eval_split(self) -> str | None:
        return image_folder_eval_split(self.root)

    def info(self) -> DatasetInfo:
        names = image_folder_classes(self.root)
        train = scan_image_folder(self.root, 'train', self.skip)
        split = self.eval_split()
        n_eval = len(scan_image_folder(self.root, split, True).paths) if split else 0
        image_hw = image_folder_size(self.root, self.skip)
        if len(names) != self.config.num_classes:
            raise ValueError(
                f'imagefolder has {len(names)} classes but config.num_classes = '
                f'{self.config.num_classes}. Set config.num_classes = {len(names)}.'
            )
        size = self.config.image_size
        n_train, held_out, clean = split_sizes(self.config, len(train.paths))
        return DatasetInfo(
            n_train,
            n_eval,
            len(names),
            (size, size, 3),
            names,
            train.num_skipped,
            image_hw,
            held_out,
            clean,
        )

    def _indices(self, split: str, n: int) -> np.ndarray:
        """Indices into the scanned files of ``split``'s folder: the validation images are a
        fixed random subset of train/ (the folder is sorted by class), 'train' the rest and
        'train_clean' the first of those."""
        if split == 'test':
            return np.arange(n)
        _, held_out, clean = split_sizes(self.config, n)
        training, validation = carve_validation(n, held_out)
        return {'train': training, 'validation': validation, 'train_clean': training[:clean]}[split]

    def source(self, split: str, *, process_index: int = 0, process_count: int = 1) -> Source:
        check_split(split)
        folder = 'train' if split != 'test' else self.eval_split()
        if folder is None:
            raise ValueError(
                f'imagefolder: no val/, validation/ or test/ folder in {self.root} to evaluate on.'
            )
        scan = scan_image_folder(self.root, folder, self.skip)
        indices = self._indices(split, len(scan.paths))
        n = len(indices)
        if split == 'train':  # equal, disjoint shards (the tail that does not divide is dropped)
            per = n // process_count
            lo, hi = process_index * per, (process_index + 1) * per
        else:  # every example exactly once over all hosts
            lo = n * process_index // process_count
            hi = n * (process_index + 1) // process_count
        mine = indices[lo:hi]
        paths = tuple(scan.paths[i] for i in mine)
        paths_t = tf.constant(paths, tf.string)
        labels_t = tf.constant(np.asarray(scan.labels)[mine].astype(np.int32), tf.int32)

        def lookup(i):
            return {
                'image': tf.io.read_file(tf.gather(paths_t, i)),
                'label': tf.gather(labels_t, i),
            }

        return Source(
            hi - lo,
            True,
            3,
            lookup=lookup,
            num_skipped=scan.num_skipped,
            names=paths,
            skipped_names=scan.skipped,
            jpeg=scan.jpeg,
            image_hw=image_folder_size(self.root, self.skip),
            decode_error=self.decode_error,
            size_problem=lambda: image_folder_size_problem(self.root, self.skip),
        )

    def decode_error(self, error: Exception, candidates: slice | None = None) -> ImageFolderError:
        """The error naming the file that failed: among `candidates` of the training files (as
        `image_stats` reads them, in order), or among every file of the folder when None."""
        if candidates is None:
            paths: tuple[str, ...] = ()
            for split in ('train', self.eval_split()):
                if split:
                    paths += scan_image_folder(self.root, split, True).paths
        else:
            scan = scan_image_folder(self.root, 'train', self.skip)
            training = self._indices('train', len(scan.paths))[candidates]
            paths = tuple(scan.paths[i] for i in training)
        return corrupt_image_error(self.root, error, paths)

    def stats(self) -> Stats:
        config = self.config
        files = image_folder_fingerprint(self.root, 'train')
        digest = hashlib.sha1(f'{files}:{config.skip_corrupt_images}'.encode()).hexdigest()[:16]
        key = f'imagefolder-r{config.resize_size}-p{config.crop_padding}-{digest}'
        if config.validation_examples:  # over the images it trains on
            key += f'-v{config.validation_examples}'
        return image_stats.cached_stats(
            config, key, lambda: image_stats.compute_stats(self.source('train'), config)
        )

    def base_shape(self) -> tuple[int, int, int] | None:
        if self.config.crop_padding > 0:
            return None
        r = self.config.resize_size
        return (r, r, 3)

    def complete_config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """``num_classes`` is the number of class folders under ``dataset_path/train`` (logged
        when it changes the config's value)."""
        classes = image_folder_classes(self.root)
        if config.num_classes != len(classes):
            log.info(
                'imagefolder: %d class folders in %s: num_classes = %d.',
                len(classes),
                os.path.join(self.root, 'train'),
                len(classes),
            )
            config.num_classes = len(classes)
        return config
