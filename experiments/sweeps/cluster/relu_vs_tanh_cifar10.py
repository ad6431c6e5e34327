"""Section 3.1 / Figure 1 on CIFAR-10, where the paper measured it (25% training error, 6x).

Figure 1's setting (no regularisation, constant rate); set LEARNING_RATES from a search like
relu_vs_tanh_lr.py's on CIFAR-10 first (seed 100), then run 5 seeds for 20 epochs.
"""

from experiments.sweeps import common, relu_vs_tanh

LEARNING_RATES = {'relu': 0.01, 'tanh': 0.01}  # replace with the search's choice

BASE = 'configs/cifar10.py'
grid = [{'activation': a, 'learning_rate': lr} for a, lr in LEARNING_RATES.items()]
seeds = common.SEEDS
budget = {**common.FIGURE_1, 'num_epochs': 20.0, 'eval_every_steps': 390}
report = {'target_train_error': [0.35, 0.3, 0.25], 'claims': relu_vs_tanh.report['claims']}
