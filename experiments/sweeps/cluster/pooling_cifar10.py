"""Section 3.4 on CIFAR-10: overlapping vs non-overlapping pooling, configs/cifar10.py, 5 seeds."""

from experiments.sweeps import common, pooling

BASE = 'configs/cifar10.py'
grid = pooling.grid
seeds = common.SEEDS
budget = {'train_clean_examples': 5_000}
report = {'target_train_error': [0.3, 0.2], 'claims': pooling.report['claims']}
