"""Section 3.3: local response normalisation lowers the error (vs none; BatchNorm for reference).

    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/lrn_vs_none_vs_bn.py \
        --workdir /work/sweeps/lrn_vs_none_vs_bn
    python -m experiments.report /work/sweeps/lrn_vs_none_vs_bn

Protocol: inputs at the paper's scale, 0-255 pixels minus the mean image (Section 2), where the
normaliser is active: at initialisation alpha * sum(a^2) / k averages 1.1 at norm1 and 0.17 at
norm2 (activations divided by 1.4 and 1.1 on average), against about 2e-4 with the quick start's
unit-scale inputs, where LRN divides by a near constant (experiments/results/lrn_activity.md).
He initialisation: Section 5's (N(0, 0.01), biases 1) left the small net at chance at every rate
tried. The quick start's 0.05 diverges at this scale; 0.001 and 0.003 trained in a 200-step check
of the LRN arm, so both rates are arms (pairs are formed within a rate), 3 norms x 2 rates x 5
seeds, 3 epochs. The norm sits after the ReLU of conv1 and conv2, as in the paper (BatchNorm at
the same two places). The paper: top-1 down 1.4 pp on ImageNet; on CIFAR-10 a four-layer net
from 13% to 11% test error. Cluster version: cluster/lrn_imagenet.py.
"""

from experiments.sweeps import common

BASE = common.FASHION_MNIST
grid = {'norm': ['lrn', 'none', 'bn'], 'learning_rate': [0.001, 0.003]}
seeds = common.SEEDS
budget = {**common.epochs(3), 'normalization': 'mean_image', 'init_scheme': 'modern'}
report = {
    'target_train_error': [0.2, 0.15],
    'claims': [
        {
            'name': 'LRN lowers the test error (paper: 1.4 pp top-1 on ImageNet)',
            'metric': 'eval_top1_error',
            'baseline': {'norm': 'none'},
            'arm': {'norm': 'lrn'},
            'expect': 'lower',
        },
    ],
}
