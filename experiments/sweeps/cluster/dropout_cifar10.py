"""Section 4.2 on CIFAR-10: dropout 0.5 vs none over configs/cifar10.py's 30 epochs, 5 seeds."""

from experiments.sweeps import common, dropout

BASE = 'configs/cifar10.py'
grid = dropout.grid
seeds = common.SEEDS
budget = {'train_clean_examples': 5_000}
report = {'target_train_error': [0.2, 0.1], 'claims': dropout.report['claims']}
