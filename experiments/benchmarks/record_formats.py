"""Which store for prepared images: random reads of 256x256x3 uint8 images, per CPU-second.

The candidates for `alexnet_jax.prepare`'s raw format, each filling a batch of randomly chosen
images (a global shuffle reads in random order) into one uint8 array:

* ``pread``: one fixed-size file, one ``os.preadv`` per image straight into the batch (chosen).
* ``memmap_take``: the same file as ``np.memmap``, ``np.take`` of the batch's rows.
* ``array_record``: ArrayRecord (group size 1, for random access), ``__getitems__``, then a copy
  into the batch. Needs ``pip install array-record`` (not a dependency of the project).
* ``grain``: Grain's ``DataLoader`` over that ArrayRecord file with an ``IndexSampler`` (global
  shuffle) and no worker processes. Needs ``pip install grain``.

And for the JPEG format, the decoders: ``simplejpeg`` (libjpeg-turbo, chosen), and
``tf_decode_jpeg`` (TensorFlow's op, eagerly per image). The files live in the page cache (they
were just written): this measures the CPU cost of reading, not the disk.

    python experiments/benchmarks/record_formats.py --images 3000 --passes 5
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

SIDE = 256


def smooth_images(count: int, seed: int = 0) -> np.ndarray:
    """Photo-like content (blocks plus noise), so JPEG sizes are realistic."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (count, SIDE // 8, SIDE // 8, 3), dtype=np.uint8)
    images = np.repeat(np.repeat(blocks, 8, 1), 8, 2).astype(np.int16)
    return np.clip(images + rng.integers(-20, 20, images.shape, dtype=np.int16), 0, 255).astype(
        np.uint8
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=3000)
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--reads', type=int, default=2048, help='images read per pass')
    parser.add_argument('--passes', type=int, default=5)
    args = parser.parse_args()

    import simplejpeg

    images = smooth_images(args.images)
    size = SIDE * SIDE * 3
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'raw.images')
        images.tofile(path)
        fd = os.open(path, os.O_RDONLY)
        mapped = np.memmap(path, np.uint8, 'r', shape=images.shape)
        out = np.empty((args.batch, SIDE, SIDE, 3), np.uint8)

        def pread(batch):
            for j, i in enumerate(batch.tolist()):
                os.preadv(fd, [out[j].reshape(-1)], i * size)

        rows['pread'] = pread
        rows['memmap_take'] = lambda batch: np.take(mapped, batch, axis=0, out=out[: len(batch)])
        try:
            from array_record.python import array_record_module
            from array_record.python.array_record_data_source import ArrayRecordDataSource

            record_path = os.path.join(folder, 'images.array_record')
            writer = array_record_module.ArrayRecordWriter(record_path, 'group_size:1')
            for image in images:
                writer.write(image.tobytes())
            writer.close()
            source = ArrayRecordDataSource([record_path])

            def array_record(batch):
                for j, record in enumerate(source.__getitems__(batch.tolist())):
                    out[j] = np.frombuffer(record, np.uint8).reshape(SIDE, SIDE, 3)

            rows['array_record'] = array_record
            try:
                import grain.python as grain

                class Decode(grain.MapTransform):
                    def map(self, record):
                        return np.frombuffer(record, np.uint8).reshape(SIDE, SIDE, 3)

                sampler = grain.IndexSampler(
                    len(source), shard_options=grain.NoSharding(), shuffle=True, seed=0
                )
                loader = grain.DataLoader(
                    data_source=source,
                    sampler=sampler,
                    operations=[Decode(), grain.Batch(args.batch)],
                    worker_count=0,
                )
                grain_iter = iter(loader)

                def grain_read(batch):
                    batch_images = next(grain_iter)
                    out[: len(batch_images)] = batch_images

                rows['grain'] = grain_read
            except ImportError:
                print('grain not installed: no grain row')
        except ImportError:
            print('array-record not installed: no array_record or grain rows')
        jpegs = [simplejpeg.encode_jpeg(im, quality=90, colorsubsampling='420') for im in images]

        def simplejpeg_decode(batch):
            for j, i in enumerate(batch.tolist()):
                simplejpeg.decode_jpeg(jpegs[i], buffer=out[j])

        rows['simplejpeg'] = simplejpeg_decode
        import tensorflow as tf

        def tf_decode(batch):
            for j, i in enumerate(batch.tolist()):
                out[j] = tf.io.decode_jpeg(jpegs[i], channels=3).numpy()

        rows['tf_decode_jpeg'] = tf_decode

        rng = np.random.default_rng(1)
        rates = {name: [] for name in rows}
        for p in range(args.passes + 1):  # the first pass warms up
            order = rng.permutation(args.images)[: args.reads]
            for name, read in rows.items():
                start = time.process_time()
                for s in range(0, len(order), args.batch):
                    read(order[s : s + args.batch])
                if p:
                    rates[name].append(len(order) / (time.process_time() - start))
        os.close(fd)
    print(
        f'{args.reads} random reads of {SIDE}x{SIDE}x3 uint8 images from {args.images} per pass, '
        f'batches of {args.batch}, one thread, median (min-max) of {args.passes} alternating '
        f'passes; mean JPEG (q90, 4:2:0) {np.mean([len(j) for j in jpegs]) / 1024:.1f} KiB; '
        f'numpy {np.__version__}, simplejpeg {simplejpeg.__version__}, tensorflow {tf.__version__}'
    )
    print('| store / decoder | images per CPU-second |')
    print('|---|---:|')
    for name, values in rates.items():
        print(
            f'| {name} | {statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f}) |'
        )


if __name__ == '__main__':
    main()
