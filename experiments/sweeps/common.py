"""What every Fashion-MNIST claim sweep shares (not a sweep itself).

Each sweep starts from the quick start (`configs/fashion_mnist.py`: the `small` net, batch 128,
cosine learning rate from 0.05, dropout 0.5, flips) and changes only what its claim names and
what its protocol says. Every run holds 5,000 training images out as the validation split and
evaluates them, and 5,000 training images in eval mode (the clean training error), every half
epoch; the test split is read once, at the end. Five seeds per arm, paired by seed in the report.
"""

FASHION_MNIST = 'configs/fashion_mnist.py'
SEEDS = [0, 1, 2, 3, 4]
EPOCH = 429  # steps of 128 images in one pass over the 55,000 training images
MEASURE = {
    'validation_examples': 5_000,
    'train_clean_examples': 5_000,
    'eval_every_steps': EPOCH // 2,
    'checkpoint_every_steps': EPOCH,
    'log_every_steps': 50,
}


def epochs(n: float) -> dict:
    """The budget of ``n`` epochs of the quick start's batch, measured as every sweep measures."""
    return {**MEASURE, 'num_train_steps': round(n * EPOCH)}


# Figure 1's setting: "no regularization of any kind was employed", a constant learning rate.
FIGURE_1 = {
    'dropout_rate': 0.0,
    'weight_decay': 0.0,
    'random_crop': False,
    'random_flip': False,
    'norm': 'none',
    'lr_schedule': 'constant',
}
