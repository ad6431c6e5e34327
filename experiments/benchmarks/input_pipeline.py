"""Training input, images per CPU-second: today's tf.data path, PIL, and prepared sets.

Each row produces what the training step consumes, as uint8:

* ``pil``: plain PIL + numpy (what a torchvision DataLoader worker does): decode the JPEG,
  resize the shorter side to 256, centre 256x256, a random 227x227 crop and flip (Sections 2,
  4.1), one process.
* ``tfdata_jpeg``: ours from JPEG files through tf.data (windowed decode, resize, crop, flip) as
  the training pipeline runs it (AUTOTUNE); ``tfdata_jpeg_1thread`` the same on one thread.
* ``prepared_raw`` / ``prepared_jpeg``: batches from a set written once by
  ``alexnet_jax.prepare`` (raw uint8 256x256, or JPEG quality 90) through the same reader the
  training loop uses (``prepared_data.train_batches``: global shuffle, threads, a batch ahead).
  The crop and flip then happen inside the jitted step on the accelerator.

The JPEGs are ImageNet-sized (500x375, quality 90, smooth content plus noise), written into a
temporary folder first. Per core means images per CPU-second of this process (all its threads
counted), so a row using both cores is not flattered and other load matters less; wall-clock
images/s beside. Rows alternate within each pass; medians over the passes with their range.

    python experiments/benchmarks/input_pipeline.py                  # 512 images, 5 passes
    python experiments/benchmarks/input_pipeline.py --json rates.json  # {row: per CPU-second}
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))

RESIZE, CROP = 256, 227


def write_jpegs(folder: str, count: int, size=(500, 375)) -> list[str]:
    """Photo-like JPEGs: smooth colour gradients plus mild noise (pure noise decodes atypically)."""
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(count):
        a, b, c = rng.uniform(0.005, 0.05, 3)
        base = np.stack(
            [
                127 + 100 * np.sin(a * xx + b * yy + i),
                127 + 100 * np.cos(b * xx - c * yy),
                127 + 100 * np.sin(c * xx * yy / w),
            ],
            -1,
        )
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        if i % 2:  # half portrait, half landscape
            img = img.transpose(1, 0, 2)
        path = os.path.join(folder, f'{i:05d}.jpg')
        Image.fromarray(img).save(path, quality=90)
        paths.append(path)
    return paths


def pil_transform(path: str, rng: np.random.Generator) -> np.ndarray:
    """torchvision's Resize(256) + CenterCrop(256) + RandomCrop(227) + RandomHorizontalFlip."""
    with Image.open(path) as im:
        im = im.convert('RGB')
        w, h = im.size
        size = (RESIZE, int(RESIZE * h / w)) if w < h else (int(RESIZE * w / h), RESIZE)
        im = im.resize(size, Image.BILINEAR)
        left, top = (size[0] - RESIZE) // 2, (size[1] - RESIZE) // 2
        im = im.crop((left, top, left + RESIZE, top + RESIZE))
        y, x = rng.integers(0, RESIZE - CROP + 1, 2)
        im = im.crop((x, y, x + CROP, y + CROP))
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(im)


def pil_pass(paths: list[str], batch: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    n = 0
    for start in range(0, len(paths) - batch + 1, batch):
        out = np.stack([pil_transform(p, rng) for p in paths[start : start + batch]])
        n += out.shape[0]
    return n


def tf_dataset(paths: list[str], batch: int, parallel: bool):
    import ml_collections
    import tensorflow as tf

    from alexnet_jax import preprocessing

    config = ml_collections.ConfigDict(dict(image_size=CROP, resize_size=RESIZE, crop_padding=0))
    files = tf.constant(paths)
    base = (RESIZE, RESIZE)

    def fn(i):
        key = tf.stack([tf.constant(0, tf.int64), i])
        yx, flip = preprocessing.random_crop_params(
            key, base, CROP, random_crop=True, random_flip=True
        )
        crops = preprocessing.make_crops(
            tf.io.read_file(tf.gather(files, i)),
            yx[None],
            flip[None],
            config,
            channels=3,
            jpeg=True,
        )
        return crops[0]

    if parallel:  # as the training pipeline runs
        ds = tf.data.Dataset.range(len(paths)).map(fn, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    # One core: the map runs in the consuming thread, one op thread.
    ds = tf.data.Dataset.range(len(paths)).map(fn).batch(batch, drop_remainder=True)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False
    return ds.with_options(options)


def tf_pass(ds) -> int:
    return sum(b.shape[0] for b in ds.as_numpy_iterator())


def rates(runs: list, passes: int) -> list[tuple[list[float], list[float]]]:
    """Images per wall second and per CPU second of this process (all its threads) for each of
    `runs`, over `passes` rounds after one warm-up round; the runs alternate within each round so
    that drift in the machine's speed hits them alike. CPU seconds make "per core" independent
    of how many cores a row used and of other load on the machine."""
    for run in runs:
        run()
    out = [([], []) for _ in runs]
    for _ in range(passes):
        for run, (wall, cpu) in zip(runs, out, strict=True):
            start, start_cpu = time.perf_counter(), time.process_time()
            n = run()
            wall.append(n / (time.perf_counter() - start))
            cpu.append(n / (time.process_time() - start_cpu))
    return out


def folder_config(root: str, resize: int = RESIZE, crop: int = CROP):
    """An image-folder config for `root` (train/<class>/*.jpg), the paper's geometry."""
    from configs import default

    config = default.get_config()
    config.dataset, config.dataset_path, config.num_classes = 'imagefolder', root, 1
    config.resize_size, config.image_size, config.crop_padding = resize, crop, 0
    return config


PREPARE_RATES: dict[str, float] = {}  # images per CPU-second of `alexnet_jax.prepare`, once


def prepared_pass(root: str, image_format: str, out: str, batch: int):
    """A pass of the training loop's reader over a set prepared from the image folder `root`.

    Each pass opens a new stream at the next epoch and closes it after `steps` batches; the
    reader's batches in flight (``prefetch_batches``) finish before the pass ends and count.
    """
    from alexnet_jax import prepare, prepared_data

    config = folder_config(root)
    start = time.process_time()
    header = prepare.prepare(config, out, image_format=image_format, quality=90, progress=False)
    PREPARE_RATES[f'prepare_{image_format}'] = header.count('train') / (time.process_time() - start)
    config.dataset, config.dataset_path = 'prepared', out
    header = prepared_data.load_header(out)
    depth, start = max(config.prefetch_batches, 1), [0]

    def run(steps: int) -> int:
        stream = prepared_data.train_batches(config, header, 1, batch, start[0], 0, 1)
        for _ in range(steps):
            next(stream)
        stream.close()  # waits for the batches in flight
        start[0] += steps
        return (steps + depth) * batch

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=512)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--passes', type=int, default=5)
    parser.add_argument('--json', help='write {row: median images per CPU-second} here')
    args = parser.parse_args()

    from alexnet_jax import runtime

    runtime.configure()  # TensorFlow's log level; on an accelerator host, TensorFlow sees no GPU
    import simplejpeg
    import tensorflow as tf

    cores = len(os.sched_getaffinity(0))
    steps = args.images // args.batch
    with tempfile.TemporaryDirectory() as folder:
        images = os.path.join(folder, 'images', 'train', 'one_class')
        os.makedirs(images)
        paths = write_jpegs(images, args.images)
        one = tf_dataset(paths, args.batch, parallel=False)
        every = tf_dataset(paths, args.batch, parallel=True)
        root = os.path.join(folder, 'images')
        raw = prepared_pass(root, 'raw', os.path.join(folder, 'raw'), args.batch)
        jpeg = prepared_pass(root, 'jpeg', os.path.join(folder, 'jpeg'), args.batch)
        rows = {
            'pil': lambda: pil_pass(paths, args.batch, 0),
            'tfdata_jpeg_1thread': lambda: tf_pass(one),
            'tfdata_jpeg': lambda: tf_pass(every),
            'prepared_raw': lambda: raw(steps),
            'prepared_jpeg': lambda: jpeg(steps),
        }
        measured = dict(zip(rows, rates(list(rows.values()), args.passes), strict=True))
    print(
        f'Training input from {args.images} JPEGs 500x375 (q90), batch {args.batch}, median '
        f'(min-max) of {args.passes} alternating passes after one warm-up; tensorflow '
        f'{tf.__version__}, Pillow {Image.__version__}, simplejpeg {simplejpeg.__version__}, '
        f'numpy {np.__version__}, {cores} CPUs'
    )
    print('| row | output | images/s (wall) | images per CPU-second | / tfdata_jpeg |')
    print('|---|---|---:|---:|---:|')
    base = measured['tfdata_jpeg'][1]
    medians = {}
    for name, (wall, cpu) in measured.items():
        output = f'{RESIZE}x{RESIZE} base' if name.startswith('prepared') else f'{CROP} crop'
        ratio = [a / b for a, b in zip(cpu, base, strict=True)]
        medians[name] = statistics.median(cpu)
        print(
            f'| {name} | {output} | {statistics.median(wall):,.0f} '
            f'| {medians[name]:,.0f} ({min(cpu):,.0f}-{max(cpu):,.0f}) '
            f'| {statistics.median(ratio):.2f}x |'
        )
    print(
        'Preparing (once, all cores, counted per CPU-second): '
        + ', '.join(f'{k} {v:,.0f} images per CPU-second' for k, v in PREPARE_RATES.items())
    )
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({**medians, **PREPARE_RATES}, f, indent=1)


if __name__ == '__main__':
    main()
