"""End to end: `alexnet_jax.main`'s training images/s from a prepared set against synthetic data.

Synthetic batches are made once and cycled, so that row is the step alone; the input is the
bottleneck exactly when a real source falls short of it. Cases:

* ``paper``: configs/imagenet.py (the paper's net, batch 128, 227 crops of 256x256 images).
  The prepared set is written here from 1,000 ImageNet-sized JPEGs (500x375, one per class, so
  fc8 has ImageNet's 1,000 outputs on both sides). (Its tf.data path is not run: at ~60 images/s
  on this CPU any source keeps up, and `input_pipeline.py` measures it alone.)
* ``generated`` (for a GPU host, where no ImageNet and no TensorFlow may be): configs/imagenet.py
  at batch 256 in bfloat16 for 200 steps, from a raw prepared set of 10,000 256x256 images
  generated on the spot (no decoding: written with `prepared_files` directly), against
  synthetic data; ``input_threads`` 8. Also the host cores each run used (its CPU seconds over
  its wall seconds, start-up and compilation included).
* ``quickstart``: configs/fashion_mnist.py (the `small` net on 28x28 Fashion-MNIST, batch 128):
  the prepared set against tfds through tf.data and against synthetic data. Synthetic images
  have 3 channels, Fashion-MNIST 1, so the synthetic step's conv1 does 3x the (tiny) work.

Each run is a fresh ``python -m alexnet_jax.main`` for ``--steps`` steps; its rate is the median
of the logged windows after the first (which holds the compilation). The sources alternate
within each round; the table gives medians over rounds with their range, and each round's
ratio to synthetic.

    python experiments/benchmarks/end_to_end.py --json e2e.json      # both cases, 3 rounds
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)


CORES_USED: dict[str, list[float]] = {}  # source -> host cores each run used


def train_rate(config: str, overrides: dict, steps: int, log_every: int, workdir: str) -> float:
    """Median images/s of the logged windows after the first, of one fresh training run."""
    flags = {
        'num_train_steps': steps,
        'log_every_steps': log_every,
        'eval_every_steps': 10 * steps,
        'checkpoint_every_steps': 10 * steps,
        'eval_num_examples': 128,
        **overrides,
    }
    cmd = [sys.executable, '-m', 'alexnet_jax.main', '--config', config, '--workdir', workdir]
    cmd += [f'--config.{k}={v}' for k, v in flags.items()]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - start
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    CORES_USED.setdefault(os.path.basename(workdir).rsplit('-', 1)[0], []).append(cpu / wall)
    if done.returncode:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{done.stderr[-3000:]}')
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    rates = [r['train_images_per_sec'] for r in rows if 'train_images_per_sec' in r]
    if len(rates) < 2:
        raise RuntimeError(f'{workdir}: fewer than two logged windows; raise --steps.')
    return statistics.median(rates[1:])


def _sources(prepared: str, common: dict, **more: dict) -> dict:
    """The rows of a case: synthetic data, the prepared set, and `more` (name -> overrides)."""
    return {
        'synthetic': {**common, 'dataset': 'synthetic'},
        'prepared_raw': {**common, 'dataset': 'prepared', 'dataset_path': prepared},
        **more,
    }


def paper_sources(folder: str, data_dir: str) -> tuple[str, dict]:
    from alexnet_jax import prepare
    from experiments.benchmarks import input_pipeline

    root = os.path.join(folder, 'jpegs')
    for split, count in (('train', 1000), ('val', 1000)):
        for k in range(count):
            class_dir = os.path.join(root, split, f'c{k:04d}')
            os.makedirs(class_dir)
        paths = input_pipeline.write_jpegs(os.path.join(root, split), count)
        for k, path in enumerate(paths):
            os.replace(path, os.path.join(root, split, f'c{k:04d}', os.path.basename(path)))
    config = input_pipeline.folder_config(root)
    config.num_classes, config.data_dir = 1000, data_dir
    prepared = os.path.join(folder, 'paper-prepared')
    prepare.prepare(config, prepared, progress=False)
    return 'configs/imagenet.py', _sources(prepared, {'data_dir': data_dir})


def quickstart_sources(folder: str, data_dir: str) -> tuple[str, dict]:
    from alexnet_jax import prepare
    from configs import fashion_mnist

    config = fashion_mnist.get_config()
    config.data_dir = data_dir
    prepared = os.path.join(folder, 'fashion-prepared')
    prepare.prepare(config, prepared, progress=False)
    return 'configs/fashion_mnist.py', _sources(
        prepared, {'data_dir': data_dir}, tfdata={'data_dir': data_dir, 'dataset': 'fashion_mnist'}
    )


def write_generated(out: str, count: int, classes: int, per_shard: int = 2000) -> None:
    """A raw prepared set of `count` generated 256x256 images (train and a small eval split),
    written with the format's own writer: no source dataset, no decoding, no TensorFlow."""

    from alexnet_jax import prepared_files
    from experiments.benchmarks import record_formats

    os.makedirs(out)
    splits = {}
    for split, n in (('train', count), ('eval', max(count // 20, 256))):
        records = []
        for k in range(-(-n // per_shard)):
            writer = prepared_files.ShardWriter(out, split, k, 'raw')
            size = min(per_shard, n - k * per_shard)
            images = record_formats.smooth_images(size, seed=k + (split == 'eval') * 1000)
            for i, image in enumerate(images):
                writer.add(image.tobytes(), (k * per_shard + i) % classes)
            records.append(writer.finish())
        splits[split] = {'count': n, 'skipped': [], 'shards': records}
    params = {
        'format_version': prepared_files.FORMAT_VERSION,
        'dataset': 'generated',
        'format': 'raw',
        'image_shape': [256, 256, 3],
        'crop_padding': 0,
        'resize_size': 256,
        'examples_per_shard': per_shard,
    }
    prepared_files.write_header(out, params, [f'class_{c}' for c in range(classes)], splits)


def generated_sources(folder: str, data_dir: str) -> tuple[str, dict]:
    prepared = os.path.join(folder, 'generated')
    write_generated(prepared, 10_000, 1000)
    common = {'data_dir': data_dir, 'batch_size': 256, 'half_precision': True, 'input_threads': 8}
    return 'configs/imagenet.py', _sources(prepared, common)


CASES = {
    # name: (sources, steps, log every)
    'paper': (paper_sources, 24, 6),
    'quickstart': (quickstart_sources, 400, 50),
    'generated': (generated_sources, 200, 20),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cases', default='paper,quickstart', help=', '.join(CASES))
    parser.add_argument('--steps', type=int, help="each case's own number when not given")
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--json', help='write {case: {source: [rate per round]}} here')
    parser.add_argument('--data_dir', default=os.environ.get('TFDS_DATA_DIR'))
    args = parser.parse_args()

    from alexnet_jax import runtime

    runtime.configure()
    data_dir = args.data_dir or os.path.expanduser('~/tensorflow_datasets')
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for case in args.cases.split(','):
            make, steps, log_every = CASES[case]
            if args.steps:
                steps, log_every = args.steps, max(args.steps // 5, 1)
            config, sources = make(folder, data_dir)
            rates: dict[str, list[float]] = {name: [] for name in sources}
            for r in range(args.rounds):
                for name, overrides in sources.items():
                    workdir = os.path.join(folder, f'{case}-{name}-{r}')
                    rate = train_rate(config, overrides, steps, log_every, workdir)
                    rates[name].append(rate)
                    print(f'{case} round {r} {name}: {rate:,.1f} images/s', flush=True)
            results[case] = rates
    print(
        f'\nEnd to end, alexnet_jax.main, median (min-max) of {args.rounds} alternating rounds; '
        f'{os.cpu_count()} CPUs'
    )
    print('| case | source | images/s | / synthetic (per round) | host cores used |')
    print('|---|---|---:|---:|---:|')
    for case, rates in results.items():
        for name, values in rates.items():
            ratios = [a / b for a, b in zip(values, rates['synthetic'], strict=True)]
            print(
                f'| {case} | {name} | {statistics.median(values):,.1f} '
                f'({min(values):,.1f}-{max(values):,.1f}) | {statistics.median(ratios):.3f} '
                f'({min(ratios):.3f}-{max(ratios):.3f}) '
                f'| {statistics.median(CORES_USED[f"{case}-{name}"]):.2f} |'
            )
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'images_per_sec': results, 'cores_used': CORES_USED}, f, indent=1)


if __name__ == '__main__':
    main()
