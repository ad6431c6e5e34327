"""Dataset sources on disk: tfds builders (prepared offline where needed) and image folders.

Everything here answers one question: given a config, where are the examples of a split and how
are they read? The result is a :class:`Source`, which `input_pipeline.py` turns into `tf.data`
pipelines. Two kinds of source exist:

* random access (``Source.lookup`` set): in-memory decoded arrays (Fashion-MNIST, CIFAR-10) or a
  list of image files (imagefolder). The training stream then draws a true per-epoch permutation
  with ``tf.random.experimental.index_shuffle`` and resumes at any step in O(1).
* sequential records (``Source.records`` set): tfds TFRecord shards (ImageNet), read in their
  stored order (tfds already shuffled them at write time) through a seeded shuffle buffer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import importlib
import importlib.resources
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

# tfds 4.9.10 imports `importlib_resources` lazily (through etils) when it prepares a dataset, but
# does not declare it for Python >= 3.9. The stdlib module has the one attribute it uses.
try:
    importlib.import_module('importlib_resources')
except ImportError:  # pragma: no cover - depends on the environment
    sys.modules['importlib_resources'] = importlib.resources

import tensorflow_datasets as tfds  # noqa: E402

log = logging.getLogger(__name__)

DATASETS = ('imagenet2012', 'fashion_mnist', 'cifar10', 'imagefolder', 'synthetic')
IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
FASHION_MNIST_DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_APT = 'apt-get install dataset-fashion-mnist'
CIFAR10_ARCHIVE = 'cifar-10-binary.tar.gz'
CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'
IN_MEMORY = ('fashion_mnist', 'cifar10')  # small: decoded once and kept in host memory
EVAL_SPLITS = {'imagenet2012': 'validation', 'fashion_mnist': 'test', 'cifar10': 'test'}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


@dataclasses.dataclass(frozen=True)
class Source:
    """The examples of one split on one host.

    Exactly one of ``lookup`` (random access: index tensor -> {'image', 'label'}) and ``records``
    (a finite dataset of {'image', 'label'} in a fixed order) is set. ``encoded`` tells whether
    'image' holds encoded bytes (JPEG/PNG) or a decoded uint8 [H, W, C] tensor.
    """

    num_examples: int
    encoded: bool
    channels: int
    lookup: Callable[[tf.Tensor], dict[str, tf.Tensor]] | None = None
    records: tf.data.Dataset | None = None
    num_skipped: int = 0  # corrupt images skipped (imagefolder, skip_corrupt_images=True)
    jpeg: bool = False  # every encoded image is a JPEG (enables windowed decoding)
    image_hw: tuple[int, int] | None = None  # when every image has this size


def tfds_data_dir(config) -> str:
    """The tfds data dir: `config.data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    if config.data_dir:
        return os.path.expanduser(config.data_dir)
    return os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))


def check_dataset_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(
            f'Unknown dataset {name!r}: set config.dataset to one of {", ".join(DATASETS)}.'
        )


# --- Fashion-MNIST from the IDX files (Debian's dataset-fashion-mnist) ---


def read_idx(path: str | Path) -> np.ndarray:
    """Parses a (gzipped) IDX file: big-endian dims after a 4-byte magic, then uint8 data."""
    opener = gzip.open if str(path).endswith('.gz') else open
    with opener(path, 'rb') as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f'{path} is not an unsigned-byte IDX file.')
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype='>u4', count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _build_fashion_mnist_from_idx(data_dir: str, idx_dir: Path) -> None:
    """Writes tfds's `fashion_mnist` (same name, version, features, keys) from local IDX files.

    tfds's own builder rejects Debian's files: they were re-gzipped, so the archive checksums tfds
    registers do not match although the pixels do. The registered builder then reads what this
    writes as its own prepared dataset.
    """
    reference = tfds.builder('fashion_mnist', data_dir=data_dir)
    split_examples = {}
    for split, (images_name, labels_name) in FASHION_MNIST_FILES.items():
        images = read_idx(idx_dir / images_name)[..., None]  # [N, 28, 28, 1]
        labels = read_idx(idx_dir / labels_name).astype(np.int64)
        # Keys are the example indices, as in tfds's MNIST builder, so the on-disk order matches.
        split_examples[split] = [
            (i, {'image': images[i], 'label': labels[i]}) for i in range(len(labels))
        ]
    tfds.dataset_builders.store_as_tfds_dataset(
        name='fashion_mnist',
        version=str(reference.version),
        features=reference.info.features,
        split_datasets=split_examples,
        data_dir=data_dir,
        description=f'Fashion-MNIST built offline from the IDX files in {idx_dir}.',
        disable_shuffling=False,
    )


def prepare_fashion_mnist(data_dir: str, idx_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Returns tfds's `fashion_mnist` builder, preparing it in `data_dir` if needed.

    Order: already prepared -> nothing to do; IDX files in `idx_dir` (or Debian's folder) ->
    build from them offline; otherwise tfds's own download.
    """
    with quiet_tfds():  # also tfds's warnings about the variant folder it has not made yet
        builder = tfds.builder('fashion_mnist', data_dir=data_dir)
        if builder.is_prepared():
            return builder
        folder = Path(idx_dir or FASHION_MNIST_DEBIAN_DIR)
        names = [n for pair in FASHION_MNIST_FILES.values() for n in pair]
        if all((folder / n).exists() for n in names):
            log.info(
                'Preparing Fashion-MNIST once: tfds files in %s from %s (later runs reuse them).',
                data_dir,
                folder,
            )
            _build_fashion_mnist_from_idx(data_dir, folder)
        else:
            log.info('Preparing Fashion-MNIST once: downloading it with tfds into %s.', data_dir)
            try:
                builder.download_and_prepare()
            except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
                raise FileNotFoundError(
                    f'Fashion-MNIST: no IDX files ({", ".join(names)}) in {folder} and the '
                    f'download failed ({type(e).__name__}). Run `{FASHION_MNIST_APT}` or set '
                    'config.dataset_path to a folder with those files.'
                ) from None
        return tfds.builder('fashion_mnist', data_dir=data_dir)


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
    """While tfds prepares a dataset for us: no progress bars, no 'Downloading and preparing'
    prints on stdout, and absl's log lines (tfds's) at ERROR only. Restored afterwards."""
    from tensorflow_datasets.core.utils import tqdm_utils

    bars = getattr(tqdm_utils, '_active', True)
    absl_logger = logging.getLogger('absl')
    level = absl_logger.level
    tfds.display_progress_bar(False)
    absl_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl_logger.setLevel(level)
        tfds.display_progress_bar(bars)


# --- tfds builders per dataset ---


def prepare_cifar10(builder: tfds.core.DatasetBuilder, data_dir: str, folder: str | None) -> None:
    """Prepares tfds's `cifar10` from the binary archive in `folder` (default: tfds's manual dir).

    Never downloads: without the archive on disk it fails at once, naming the file, where to put
    it and where to get it (offline, tfds's download would retry its host for minutes).
    """
    manual = Path(folder or os.path.join(data_dir, 'downloads', 'manual'))
    if not (manual / CIFAR10_ARCHIVE).exists():
        where = 'config.dataset_path=' + str(folder) if folder else f'the tfds manual dir {manual}'
        raise FileNotFoundError(
            f'CIFAR-10: {CIFAR10_ARCHIVE} not found in {where}, and cifar10 is not prepared in '
            f'{data_dir}. Put the official binary archive ({CIFAR10_URL}) in a folder and pass it '
            'as --config.dataset_path=FOLDER.'
        )
    log.info('Preparing CIFAR-10 once: tfds files in %s from %s.', data_dir, manual)
    with quiet_tfds():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
        )


def get_builder(config) -> tfds.core.DatasetBuilder:
    """The prepared tfds builder for `config.dataset` (tfds datasets only)."""
    data_dir = tfds_data_dir(config)
    if config.dataset == 'fashion_mnist':
        return prepare_fashion_mnist(data_dir, config.dataset_path)
    if config.dataset == 'cifar10':
        builder = tfds.builder('cifar10', data_dir=data_dir)
        if not builder.is_prepared():
            prepare_cifar10(builder, data_dir, config.dataset_path)
        return builder
    if config.dataset == 'imagenet2012':
        builder = tfds.builder('imagenet2012', data_dir=data_dir, try_gcs=False)
        if not builder.is_prepared():
            manual = config.manual_dir or os.path.join(data_dir, 'downloads', 'manual')
            missing = [t for t in IMAGENET_TARS if not os.path.exists(os.path.join(manual, t))]
            if missing:
                raise FileNotFoundError(
                    f'ImageNet (imagenet2012) is not prepared in {data_dir} and '
                    f'{", ".join(missing)} not found in the manual dir {manual}. Download '
                    f'{" and ".join(IMAGENET_TARS)} from image-net.org into that folder (or set '
                    'config.manual_dir to where they are), then run again to prepare.'
                )
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=manual)
            )
        return builder
    raise ValueError(f'{config.dataset!r} is not a tfds dataset.')


@functools.lru_cache(maxsize=8)
def _load_split_arrays(
    data_dir: str, name: str, split: str
) -> tuple[np.ndarray, np.ndarray]:  # decoded small datasets, memoised per process
    builder = tfds.builder(name, data_dir=data_dir)
    ds = builder.as_dataset(split=split, batch_size=-1, shuffle_files=False)
    arrays = tfds.as_numpy(ds)
    return arrays['image'], arrays['label'].astype(np.int32)


def host_split(split: str, process_index: int, process_count: int, *, train: bool) -> str:
    """This host's slice of `split`: equal sizes for training, every example once for eval."""
    if process_count == 1:
        return split
    return tfds.even_splits(split, n=process_count, drop_remainder=train)[process_index]


def tfds_source(config, split: str, process_index: int, process_count: int, *, train: bool):
    builder = get_builder(config)
    sub = host_split(split, process_index, process_count, train=train)
    feature = builder.info.features['image']
    channels = int(feature.shape[-1])
    hw = tuple(feature.shape[:2]) if None not in feature.shape[:2] else None
    if config.dataset in IN_MEMORY:  # decode once, keep in memory, random access
        images, labels = _load_split_arrays(tfds_data_dir(config), config.dataset, sub)
        images_t, labels_t = tf.constant(images), tf.constant(labels)

        def lookup(i):
            return {'image': tf.gather(images_t, i), 'label': tf.gather(labels_t, i)}

        return Source(len(labels), False, channels, lookup=lookup, image_hw=hw)
    # Large: encoded JPEG bytes, never cached decoded (host memory).
    ds = builder.as_dataset(
        split=sub,
        shuffle_files=False,
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(try_autocache=False),
    )
    ds = ds.map(lambda ex: {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int32)})
    num = int(builder.info.splits[sub].num_examples)
    jpeg = feature.encoding_format == 'jpeg'  # tfds re-encodes imagenet2012 as JPEG throughout
    return Source(num, True, channels, records=ds, jpeg=jpeg, image_hw=hw)


# --- imagefolder: root/{train,val,test}/class_name/image.jpg ---


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


def scan_image_folder(root: str, split: str, skip_corrupt: bool) -> FolderSplit:
    """`root/split`'s images, each file's header checked; memoised on the files' fingerprint.

    The memo is keyed on :func:`image_folder_fingerprint`, so images added, removed or rewritten
    since are seen within the same process too.
    """
    return _scan(root, split, skip_corrupt, image_folder_fingerprint(root, split))


@functools.lru_cache(maxsize=16)
def _scan(root: str, split: str, skip_corrupt: bool, fingerprint: str) -> FolderSplit:
    del fingerprint  # the memo key only
    paths, labels, skipped, formats, sizes = [], [], 0, set(), set()
    kept_per_class: dict[int, int] = {}
    for label, f in _list_split(root, split):
        header = _image_header(f)
        kept_per_class.setdefault(label, 0)
        if header is None:
            if skip_corrupt:
                skipped += 1
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
        log.warning('imagefolder: skipped %d corrupt images under %s', skipped, folder)
    return FolderSplit(tuple(paths), tuple(labels), skipped, formats == {'JPEG'}, frozenset(sizes))


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


def image_folder_source(
    config, split: str, process_index: int, process_count: int, *, train: bool
) -> Source:
    skip = bool(config.skip_corrupt_images)
    scan = scan_image_folder(config.dataset_path, split, skip)
    n = len(scan.paths)
    if train:  # equal, disjoint shards (the tail that does not divide is dropped)
        per = n // process_count
        lo, hi = process_index * per, (process_index + 1) * per
    else:  # every example exactly once over all hosts
        lo, hi = n * process_index // process_count, n * (process_index + 1) // process_count
    paths_t = tf.constant(scan.paths[lo:hi])
    labels_t = tf.constant(scan.labels[lo:hi], tf.int32)

    def lookup(i):
        return {'image': tf.io.read_file(tf.gather(paths_t, i)), 'label': tf.gather(labels_t, i)}

    return Source(
        hi - lo,
        True,
        3,
        lookup=lookup,
        num_skipped=scan.num_skipped,
        jpeg=scan.jpeg,
        image_hw=image_folder_size(config.dataset_path, skip),
    )


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
    config, error: tf.errors.OpError, candidates: Sequence[str]
) -> ImageFolderError:
    """One error naming the file among `candidates` that `error` (a decode failure) came from."""
    bad = find_corrupt_image(candidates)
    first = (getattr(error, 'message', '') or str(error)).splitlines()[0]
    first = first.split(' [Op:')[0].strip()
    return ImageFolderError(
        f'imagefolder: cannot decode image {bad or "(unknown)"} under {config.dataset_path} '
        f'({first}). Remove it, or set config.skip_corrupt_images=True to skip such files.'
    )


# --- synthetic: uint8 noise made on the host, for throughput and loop tests without I/O ---

_SYNTHETIC_POOL = 4  # distinct host batches, cycled


def _synthetic_batch(config, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    s = config.image_size
    return {
        'image': rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
        'label': rng.integers(0, config.num_classes, (n,), dtype=np.int32),
        'crop_yx': np.zeros((n, 2), np.int32),
        'flip': np.zeros((n,), bool),
    }


def synthetic_train(config, devices: int, per_device: int, start_step: int, pi: int):
    """Infinite [devices, per_device, ...] batches cycling through a small pre-made pool."""
    rng = np.random.default_rng([config.seed, pi])
    pool = [
        {
            k: v.reshape((devices, per_device) + v.shape[1:])
            for k, v in _synthetic_batch(config, rng, devices * per_device).items()
        }
        for _ in range(_SYNTHETIC_POOL)
    ]
    step = start_step
    while True:
        yield pool[step % _SYNTHETIC_POOL]
        step += 1


def synthetic_eval_examples(config, pi: int, pc: int) -> Iterator[dict[str, np.ndarray]]:
    """This host's share of `synthetic_num_eval` examples, in small chunks."""
    n, chunk = config.synthetic_num_eval, 256 if config.eval_crops == 1 else 32
    lo, hi = n * pi // pc, n * (pi + 1) // pc
    rng = np.random.default_rng([config.seed, pi, 1])
    pool = _synthetic_batch(config, rng, min(chunk, max(hi - lo, 1)))
    for start in range(lo, hi, chunk):
        take = min(chunk, hi - start)
        batch = {k: v[:take] for k, v in pool.items()}
        if config.eval_crops == 10:
            batch['image'] = np.repeat(batch['image'][:, None], 10, axis=1)
            batch['crop_yx'] = np.zeros((take, 10, 2), np.int32)
            batch['flip'] = np.zeros((take, 10), bool)
        yield batch
