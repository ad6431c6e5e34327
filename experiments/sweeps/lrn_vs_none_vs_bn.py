"""Section 3.3: local response normalisation lowers the error (vs none; BatchNorm for reference).

    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/lrn_vs_none_vs_bn.py \
        --workdir /tmp/sweeps/lrn_vs_none_vs_bn
    python -m experiments.report /tmp/sweeps/lrn_vs_none_vs_bn

Budget: `small` on Fashion-MNIST, 3 norms x 2 seeds, 250 steps of 64 images (about 0.27 epoch),
cosine learning rate from 0.02, at the paper's scale: pixels minus the mean image (0-255, Section
2) and Section 5's initialisation (weights N(0, 0.01), biases 1 in conv2/4/5 and fc6/7). At the
quick start's unit-scale inputs and He initialisation, alpha * sum(a^2) is about 1e-4 of k and
LRN divides by a near constant (experiments/results/lrn_activity.md). The norm sits after the
ReLU of conv1 and conv2 as in the paper (BatchNorm at the same two places). The paper: top-1 down
1.4% on ImageNet; on CIFAR-10 a four-layer net from 13% to 11% test error.

Caution (measured 2026-12-03, see experiments/results/lrn_activity.md): at this scale the small
net did not leave chance in 250 steps with LRN at learning rates 0.005, 0.01, 0.02, 0.05 and 0.1
(loss flat at ln 10 = 2.303), nor without a norm or with BatchNorm at 0.02; the same inputs with
the modern initialisation diverged at 0.02. Run it only with a budget that has been seen to train.
"""

from experiments.sweeps import common

BASE = common.FASHION_MNIST
grid = {'norm': ['lrn', 'none', 'bn']}
seeds = common.SEEDS
budget = {**common.BUDGET, 'normalization': 'mean_image', 'init_scheme': 'paper'}
report = {'target_train_error': [0.35, 0.3]}
