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

BASE = 'configs/fashion_mnist.py'
grid = [
    {'random_crop': True, 'random_flip': True},
    {'random_crop': False, 'random_flip': False},
]
seeds = [0, 1]
budget = {
    'num_train_steps': 250,
    'batch_size': 64,
    'learning_rate': 0.02,  # pinned: the quick-start config has since moved to 0.05
    'lr_schedule': 'cosine',
    'warmup_epochs': 0.01,
    'log_every_steps': 10,
    'eval_every_steps': 10_000,  # evaluate once, at the end (the whole 10,000-image test split)
    'checkpoint_every_steps': 100,
}
report = {'target_train_error': [0.35, 0.3]}
