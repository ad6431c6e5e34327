"""Section 4.1: random crops and horizontal flips on vs off, long enough to overfit.

    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/augmentation.py \
        --workdir /work/sweeps/augmentation
    python -m experiments.report /work/sweeps/augmentation

Protocol: the quick start trained for 15 epochs (dropout on), 2 settings x 5 seeds. On: pad by 2
to 32x32, a random 28x28 crop, half the images mirrored (the small-image form of the paper's
random 224 crops of 256 images). Off: the centre crop (the image itself), no mirroring. The on
arm is the dropout sweep's dropout arm (the same config), copied from there (sweep --reuse). The
paper: without augmentation the net "suffers from substantial overfitting". The PCA colour noise
(the paper's other augmentation, top-1 down over 1%) is not tested here: Fashion-MNIST has one
grey channel and no colour to perturb; cluster/augmentation_cifar10.py has it as a third arm.
"""

from experiments.sweeps import common

BASE = common.FASHION_MNIST
grid = [
    {'random_crop': True, 'random_flip': True},
    {'random_crop': False, 'random_flip': False},
]
seeds = common.SEEDS
budget = {**common.epochs(15), 'dropout_rate': 0.5}  # as the dropout sweep's arm sets it
report = {
    'target_train_error': [0.1, 0.05],
    'claims': [
        {
            'name': 'without crops and flips the net overfits more (validation - clean training)',
            'metric': 'gap',
            'baseline': {'random_crop': True, 'random_flip': True},
            'arm': {'random_crop': False, 'random_flip': False},
            'expect': 'higher',
        },
        {
            'name': 'crops and flips lower the test error',
            'metric': 'eval_top1_error',
            'baseline': {'random_crop': False, 'random_flip': False},
            'arm': {'random_crop': True, 'random_flip': True},
            'expect': 'lower',
        },
        {
            'name': 'PCA colour noise lowers the error (paper: over 1 pp top-1)',
            'not_tested': 'Fashion-MNIST is grey: no colour to perturb; see the CIFAR-10 sweep',
        },
    ],
}
