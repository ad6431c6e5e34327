"""Issue 16: does training from a prepared set reach the tf.data path's test error?

    python -m alexnet_jax.prepare --config configs/fashion_mnist.py \
        --out /tmp/prepared/fashion_mnist
    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/prepared_fidelity.py \
        --workdir /tmp/sweeps/prepared_fidelity
    python -m experiments.report /tmp/sweeps/prepared_fidelity

The quick start's config unchanged (the `small` net, 6 epochs of Fashion-MNIST), 3 seeds, read
two ways: tfds through tf.data (crops and flips on the host), and the prepared raw set (crops
and flips on the device, keyed on each example's stream position). The two paths draw different
shuffles, flips and dropout masks, so they agree only up to seed noise. Set
ALEXNET_PREPARED_FASHION_MNIST to the prepared folder if it is not the one above.
"""

import os

BASE = 'configs/fashion_mnist.py'
PREPARED = os.environ.get('ALEXNET_PREPARED_FASHION_MNIST', '/tmp/prepared/fashion_mnist')
grid = [
    {'dataset': 'fashion_mnist'},
    {'dataset': 'prepared', 'dataset_path': PREPARED},
]
seeds = [0, 1, 2]
budget = {'eval_every_steps': 100_000}  # evaluate once, at the end
