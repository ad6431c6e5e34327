"""Section 3.4: overlapping max-pooling (3x3, stride 2) vs non-overlapping (2x2, stride 2).

    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/pooling.py \
        --workdir /tmp/sweeps/pooling
    python -m experiments.report /tmp/sweeps/pooling

Budget: `small` on Fashion-MNIST, 2 poolings x 2 seeds, 250 steps of 64 images (about 0.27 epoch),
cosine learning rate from 0.02. About 100 s a run here (nice -n 19 on 2 shared CPU cores; up to 6
minutes under heavy load). Both poolings give the same output sizes. The paper: top-1 down 0.4%
with overlapping pools, and such nets "slightly more difficult to overfit" (compare the train-test
gaps).
"""

from experiments.sweeps import common

BASE = common.FASHION_MNIST
grid = {'pooling': ['overlapping', 'non_overlapping']}
seeds = common.SEEDS
budget = dict(common.BUDGET)
report = {'target_train_error': [0.35, 0.3]}
