"""Training input pipeline, images/s per CPU core: ours (tf.data) against plain PIL + numpy.

Both produce the same thing from JPEG files: the central square resized to 256x256, a random
227x227 crop, a random horizontal flip, as uint8 (Sections 2 and 4.1). The PIL row is what a
torchvision DataLoader with one worker does (open, convert to RGB, resize, crop, crop, flip,
to array). The benchmark writes ImageNet-sized JPEGs (500x375, quality 90, smooth content plus
noise) into a temporary folder first.

Per core: images per CPU-second of the process (all threads counted), so a row that uses both
cores is not flattered and other load on the machine matters less; wall-clock images/s beside.
Ours runs once on one thread and once as the training pipeline runs (AUTOTUNE); PIL in one
process.

    python experiments/benchmarks/input_pipeline.py             # 256 images, 3 passes
    python experiments/benchmarks/input_pipeline.py --images 512 --passes 7
"""

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=256)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--passes', type=int, default=3)
    args = parser.parse_args()

    from alexnet_jax import runtime

    runtime.configure()  # TensorFlow's log level; on an accelerator host, TensorFlow sees no GPU
    import tensorflow as tf

    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(folder, args.images)
        one = tf_dataset(paths, args.batch, parallel=False)
        every = tf_dataset(paths, args.batch, parallel=True)
        names = [
            'ours: tf.data, one thread',
            'PIL + numpy (torchvision transforms), one process',
            f'ours: tf.data, AUTOTUNE on {cores} cores',
        ]
        runs = [
            lambda: tf_pass(one),
            lambda: pil_pass(paths, args.batch, 0),
            lambda: tf_pass(every),
        ]
        measured = rates(runs, args.passes)
    print(
        f'Training transforms to {CROP}x{CROP} uint8 from {args.images} JPEGs 500x375 (q90), '
        f'batch {args.batch}, median of {args.passes} alternating passes after one warm-up; '
        f'tensorflow {tf.__version__}, Pillow {Image.__version__}, {cores} CPUs'
    )
    width = max(len(n) for n in names)
    print(f'| {"pipeline":<{width}} | images/s (wall) | images per CPU-second |')
    print(f'|{"-" * (width + 2)}|----------------:|----------------------:|')
    for name, (wall, cpu) in zip(names, measured, strict=True):
        wall, cpu = statistics.median(wall), statistics.median(cpu)
        print(f'| {name:<{width}} | {wall:15.1f} | {cpu:21.1f} |')
    pil = measured[1][1]

    def ratio(row: int) -> str:
        per_pass = [a / b for a, b in zip(measured[row][1], pil, strict=True)]
        return (
            f'{statistics.median(per_pass):.2f}x (passes {min(per_pass):.2f}-{max(per_pass):.2f})'
        )

    print(
        'per core (images per CPU-second), ours / PIL, median of the passes: '
        f'one thread {ratio(0)}, AUTOTUNE {ratio(2)}'
    )


if __name__ == '__main__':
    main()
