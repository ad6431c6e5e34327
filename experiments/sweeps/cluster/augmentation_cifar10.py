"""Section 4.1 on CIFAR-10: crops and flips, and the PCA colour noise, over 30 epochs, 5 seeds."""

from experiments.sweeps import common

BASE = 'configs/cifar10.py'
grid = [
    {'random_crop': True, 'random_flip': True, 'pca_noise_std': 0.1},
    {'random_crop': True, 'random_flip': True, 'pca_noise_std': 0.0},
    {'random_crop': False, 'random_flip': False, 'pca_noise_std': 0.0},
]
seeds = common.SEEDS
budget = {'train_clean_examples': 5_000}
report = {
    'target_train_error': [0.2, 0.1],
    'claims': [
        {
            'name': 'without crops and flips the net overfits more (validation - clean training)',
            'metric': 'gap',
            'baseline': {'random_crop': True, 'pca_noise_std': 0.0},
            'arm': {'random_crop': False},
            'expect': 'higher',
        },
        {
            'name': 'PCA colour noise lowers the test error (paper: over 1 pp top-1)',
            'metric': 'eval_top1_error',
            'baseline': {'pca_noise_std': 0.0, 'random_crop': True},
            'arm': {'pca_noise_std': 0.1},
            'expect': 'lower',
        },
    ],
}
