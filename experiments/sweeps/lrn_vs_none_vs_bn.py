"""Section 3.3: local response normalisation lowers the error (vs none; BatchNorm for reference).

    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/lrn_vs_none_vs_bn.py \
        --workdir /tmp/sweeps/lrn_vs_none_vs_bn
    python -m experiments.report /tmp/sweeps/lrn_vs_none_vs_bn

Budget: `small` on Fashion-MNIST, 3 norms x 2 seeds, 250 steps of 64 images (about 0.27 epoch),
cosine learning rate from 0.02. About 100 s a run here (nice -n 19 on 2 shared CPU cores; up to 6
minutes under heavy load). The norm sits after the ReLU of conv1 and conv2 as in the paper
(BatchNorm at the same two places). The paper: top-1 down 1.4% on ImageNet; on CIFAR-10 a four-
layer net from 13% to 11% test error.
"""

from experiments.sweeps import common

BASE = common.FASHION_MNIST
grid = {'norm': ['lrn', 'none', 'bn']}
seeds = common.SEEDS
budget = dict(common.BUDGET)
report = {'target_train_error': [0.35, 0.3]}
