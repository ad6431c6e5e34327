"""Section 3.2: two towers (conv2, conv4, conv5 grouped: groups=2) vs one (groups=1).

    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/towers.py \
        --workdir /tmp/sweeps/towers
    python -m experiments.report /tmp/sweeps/towers

Budget: `small` on Fashion-MNIST, 2 settings x 2 seeds, 250 steps of 64 images (about 0.27 epoch),
cosine learning rate from 0.02. About 100 s a run here (nice -n 19 on 2 shared CPU cores; up to 6
minutes under heavy load). groups=1 keeps every kernel and connects it to all input channels of
conv2/4/5 (more weights and compute than the towers). The paper compared its two-GPU net against a
one-GPU net with HALF the kernels in each conv layer (1.7% lower top-1 for the towers); the config
has no width field, so that baseline is not in this sweep.
"""

from experiments.sweeps import common

BASE = common.FASHION_MNIST
grid = {'groups': [2, 1]}
seeds = common.SEEDS
budget = dict(common.BUDGET)
report = {'target_train_error': [0.35, 0.3]}
