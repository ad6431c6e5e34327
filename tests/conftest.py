"""Shared fixtures, and four fake CPU devices so every multi-device code path runs in tests."""

import fcntl
import os

# pytest-xdist runs one worker per core: oneDNN's convolutions (OpenMP) use one thread each.
os.environ.setdefault('OMP_NUM_THREADS', '1')
# Before anything imports jax: the pmapped step, towers and multi-host tests need devices.
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4'
).strip()

# XLA programs compiled once are kept on disk and reused by every test and every CLI run a
# test starts (they inherit the variables): most tests build the same small nets, and a CLI
# run's compiles were half its 12 s here. The key is the program, the flags and the versions.
# A size limit turns on JAX's file lock, so the xdist workers and the processes they start
# never read an entry another is still writing.
os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR',
    os.path.join(os.path.dirname(os.path.dirname(__file__)), '.pytest_cache', 'jax'),
)
os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(4 * 2**30))

import pytest

from alexnet_jax import runtime

runtime.configure()  # XLA:CPU's flags, as the commands set them, before any test starts JAX

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_APT = 'apt-get install dataset-fashion-mnist'


@pytest.fixture(scope='session')
def fashion_mnist_data_dir() -> str:
    """A tfds data_dir in which tfds's `fashion_mnist` is prepared (real data, offline).

    Built once from Debian's IDX files into $TFDS_DATA_DIR or ~/tensorflow_datasets, which
    persists between runs (the first build takes about 15 s); skipped when the files are absent.
    """
    from alexnet_jax import tfds_data

    names = [n for pair in tfds_data.FASHION_MNIST_FILES.values() for n in pair]
    data_dir = os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets')
    prepared = os.path.exists(os.path.join(data_dir, 'fashion_mnist'))
    if not prepared and not all(os.path.exists(os.path.join(FASHION_MNIST_DIR, n)) for n in names):
        pytest.skip(f'Fashion-MNIST IDX files not in {FASHION_MNIST_DIR}: {FASHION_MNIST_APT}')
    os.makedirs(data_dir, exist_ok=True)
    # pytest -n N: one worker prepares, the others wait for it and then find it prepared.
    with open(os.path.join(data_dir, '.fashion_mnist.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tfds_data.prepare_fashion_mnist(data_dir)
    return data_dir
