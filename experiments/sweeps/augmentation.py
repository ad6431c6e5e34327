"""Section 4.1: random crops and horizontal flips on vs off.

    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/augmentation.py \
        --workdir /tmp/sweeps/augmentation
    python -m experiments.report /tmp/sweeps/augmentation

Budget: `small` on Fashion-MNIST, 2 settings x 2 seeds, 250 steps of 64 images (about 0.27 epoch),
cosine learning rate from 0.02. About 100 s a run here (nice -n 19 on 2 shared CPU cores; up to 6
minutes under heavy load). On: pad by 2 to 32x32 and take a random 28x28 crop, mirror half the
images (the small-image form of the paper's random 224 crops of 256 images). Off: the centre crop
(the image itself), no mirroring. The PCA colour noise (the paper's other augmentation) is moot on
one grey channel and stays off; it applies to CIFAR-10 (configs/cifar10.py, pca_noise_std).
"""

from experiments.sweeps import common

BASE = common.FASHION_MNIST
grid = [
    {'random_crop': True, 'random_flip': True},
    {'random_crop': False, 'random_flip': False},
]
seeds = common.SEEDS
budget = dict(common.BUDGET)
del budget['random_crop']  # the grid sets it
report = {'target_train_error': [0.35, 0.3]}
