"""Section 3.2: two towers (groups=2) against the paper's one-GPU net (half the kernels in conv1-4).

    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/towers.py \
        --workdir /work/sweeps/towers
    python -m experiments.report /work/sweeps/towers

Protocol: the quick start as it is (6 epochs, every regulariser on), 3 arms x 5 seeds, measured
as every claim sweep (experiments/sweeps/common.py). The arms:

- ``groups=2``: the towers (conv2, conv4, conv5 grouped).
- ``groups=1, half_kernels=True``: the baseline the paper measured the towers against (1.7% lower
  top-1 for the towers): one tower with half the kernels of conv1-conv4, conv5 and the FC layers
  at full size (``config.half_kernels``; the footnote of Section 3.2).
- ``groups=1`` (``half_kernels`` blank in the report: the default, False): a reference, not the
  paper's comparison. It keeps every kernel and connects each to all input channels of
  conv2/4/5, so it has more weights and compute than the towers.

Cluster version: cluster/towers_imagenet.py.
"""

from experiments.sweeps import common

BASE = common.FASHION_MNIST
grid = [
    {'groups': 2},  # the towers
    {'groups': 1, 'half_kernels': True},  # the paper's one-GPU baseline
    {'groups': 1},  # reference: one full-width tower
]
seeds = common.SEEDS
budget = common.epochs(6)
report = {
    'target_train_error': [0.15, 0.1],
    'claims': [
        {
            'name': "the towers beat the paper's one-GPU net (paper: 1.7 pp top-1)",
            'metric': 'eval_top1_error',
            'baseline': {'groups': 1, 'half_kernels': True},
            'arm': {'groups': 2},
            'expect': 'lower',
        },
    ],
}
