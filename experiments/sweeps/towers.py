"""Section 3.2: two towers (groups=2) against the paper's one-GPU net (half the kernels in conv1-4).

    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/towers.py \
        --workdir /tmp/sweeps/towers
    python -m experiments.report /tmp/sweeps/towers

Budget: `small` on Fashion-MNIST, 3 settings x 2 seeds, 250 steps of 64 images (about 0.27 epoch),
cosine learning rate from 0.02. About 100 s a run here (nice -n 19 on 2 shared CPU cores; up to 6
minutes under heavy load). The arms:

- ``groups=2``: the towers (conv2, conv4, conv5 grouped).
- ``groups=1, half_kernels=True``: the baseline the paper measured the towers against (1.7% lower
  top-1 for the towers): one tower with half the kernels of conv1-conv4, conv5 and the FC layers
  at full size (``config.half_kernels``; the footnote of Section 3.2).
- ``groups=1`` (``half_kernels`` blank in the report: the default, False): a reference, not the
  paper's comparison. It keeps every kernel and connects each to all input channels of
  conv2/4/5, so it has more weights and compute than the towers.

The first and last arms' run names are those of the earlier two-arm sweep, so their finished runs
in an existing sweep directory are kept.
"""

from experiments.sweeps import common

BASE = common.FASHION_MNIST
grid = [
    {'groups': 2},  # the towers
    {'groups': 1, 'half_kernels': True},  # the paper's one-GPU baseline
    {'groups': 1},  # reference: one full-width tower
]
seeds = common.SEEDS
budget = dict(common.BUDGET)
report = {'target_train_error': [0.35, 0.3]}
