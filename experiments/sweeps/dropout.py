"""Section 4.2: dropout 0.5 in fc6 and fc7 vs none, long enough to overfit.

    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/dropout.py \
        --workdir /work/sweeps/dropout
    python -m experiments.report /work/sweeps/dropout

Protocol: the quick start with random crops added, so that both of the paper's regularisers are
on (crops and flips, dropout), trained for 15 epochs (cosine schedule over the 15); dropout 0.5
against none, 5 seeds each. The dropout arm is the augmentation sweep's crops-and-flips arm (the
same config): claims.sh trains it here and the augmentation sweep copies it (sweep --reuse).
Measured: the validation - clean training gap at the end, the lowest validation error and the
epoch it came at, and the steps to 10% and 5% clean training error (convergence). The paper:
without dropout the net "exhibits substantial overfitting"; dropout "roughly doubles the number
of iterations required to converge". Cluster version: cluster/dropout_cifar10.py.
"""

from experiments.sweeps import common

BASE = common.FASHION_MNIST
grid = {'dropout_rate': [0.5, 0.0]}
seeds = common.SEEDS
budget = {**common.epochs(15), 'random_crop': True}
report = {
    'target_train_error': [0.1, 0.05],
    'claims': [
        {
            'name': 'without dropout the net overfits more (validation - clean training error)',
            'metric': 'gap',
            'baseline': {'dropout_rate': 0.5},
            'arm': {'dropout_rate': 0.0},
            'expect': 'higher',
        },
        {
            'name': 'dropout lowers the best validation error',
            'metric': 'best_val_top1_error',
            'baseline': {'dropout_rate': 0.0},
            'arm': {'dropout_rate': 0.5},
            'expect': 'lower',
        },
        {
            'name': 'dropout takes more steps to converge (paper: about 2x)',
            'metric': 'steps_ratio',
            'thresholds': [0.1, 0.05],
            'baseline': {'dropout_rate': 0.0},
            'arm': {'dropout_rate': 0.5},
            'expect': 'higher',
        },
    ],
}
