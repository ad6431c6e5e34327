"""Section 3.4: overlapping max-pooling (3x3, stride 2) vs non-overlapping (2x2, stride 2).

    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/pooling.py \
        --workdir /work/sweeps/pooling
    python -m experiments.report /work/sweeps/pooling

Protocol: the quick start as it is (6 epochs, every regulariser on), 2 poolings x 5 seeds; both
poolings give the same output sizes. The paper: top-1 down 0.4 pp (top-5 0.3 pp) with
overlapping pools on ImageNet, and such nets "slightly more difficult to overfit" (the
validation - clean training gap). Cluster versions: cluster/pooling_cifar10.py, _imagenet.py.
"""

from experiments.sweeps import common

BASE = common.FASHION_MNIST
grid = {'pooling': ['overlapping', 'non_overlapping']}
seeds = common.SEEDS
budget = common.epochs(6)
report = {
    'target_train_error': [0.15, 0.1],
    'claims': [
        {
            'name': 'overlapping pooling lowers the test error (paper: 0.4 pp top-1)',
            'metric': 'eval_top1_error',
            'baseline': {'pooling': 'non_overlapping'},
            'arm': {'pooling': 'overlapping'},
            'expect': 'lower',
        },
        {
            'name': 'overlapping pooling overfits less (validation - clean training error)',
            'metric': 'gap',
            'baseline': {'pooling': 'non_overlapping'},
            'arm': {'pooling': 'overlapping'},
            'expect': 'lower',
        },
    ],
}
