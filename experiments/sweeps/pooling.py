"""Section 3.4: overlapping max-pooling (3x3, stride 2) vs non-overlapping (2x2, stride 2).

    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/pooling.py \
        --workdir /tmp/sweeps/pooling
    python -m experiments.report /tmp/sweeps/pooling

Budget: `small` on Fashion-MNIST, 2 poolings x 2 seeds, 250 steps of 64 images (about 0.27 epoch),
cosine learning rate from 0.02. About 100 s a run here (nice -n 19 on 2 shared CPU cores; up to 6
minutes under heavy load). Both poolings give the same output sizes. The paper: top-1 down 0.4%
with overlapping pools, and such nets "slightly more difficult to overfit" (compare the train-test
gaps).
"""

BASE = 'configs/fashion_mnist.py'
grid = {'pooling': ['overlapping', 'non_overlapping']}
seeds = [0, 1]
budget = {
    'num_train_steps': 250,
    'batch_size': 64,
    'learning_rate': 0.02,  # pinned: the quick-start config has since moved to 0.05
    'random_crop': True,  # pinned likewise (the quick start now crops at the centre)
    'lr_schedule': 'cosine',
    'warmup_epochs': 0.01,
    'log_every_steps': 10,
    'eval_every_steps': 10_000,  # evaluate once, at the end (the whole 10,000-image test split)
    'checkpoint_every_steps': 100,
}
report = {'target_train_error': [0.35, 0.3]}
