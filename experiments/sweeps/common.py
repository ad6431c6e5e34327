"""The budget every Fashion-MNIST sweep here shares (not a sweep itself).

250 steps of 64 images (about 0.27 epoch), a cosine learning rate from 0.02, training error
logged every 10 steps and the whole 10,000-image test split evaluated once at the end. The
learning rate and random crops are pinned to what the recorded results used, whatever the
quick-start config says now.
"""

FASHION_MNIST = 'configs/fashion_mnist.py'
SEEDS = [0, 1]
BUDGET = {
    'num_train_steps': 250,
    'batch_size': 64,
    'learning_rate': 0.02,
    'random_crop': True,
    'lr_schedule': 'cosine',
    'warmup_epochs': 0.01,
    'log_every_steps': 10,
    'eval_every_steps': 10_000,  # evaluate once, at the end
    'checkpoint_every_steps': 100,
}
