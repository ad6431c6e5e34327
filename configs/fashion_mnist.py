"""Quick start: the `small` AlexNet on real Fashion-MNIST (offline through Debian's package).

    sudo apt-get install dataset-fashion-mnist
    python -m alexnet_jax.main --config configs/fashion_mnist.py --workdir runs/fashion_mnist

Expected: about 91% test accuracy (top-1 error ~0.09) after 6 epochs, about 6 minutes on 2 CPU
cores. The dataset's own benchmark lists 2-5 layer convnets at 0.876-0.947.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.dataset = 'fashion_mnist'
    c.model = 'small'
    c.num_classes = 10
    c.image_size = 28
    c.crop_padding = 2  # the small-image form of Section 4.1: pad to 32, crop 28x28 ...
    c.random_crop = False  # ... at the centre: random crops only pay off after many epochs
    c.random_flip = True
    c.pca_noise_std = 0.0  # one grey channel: no colour to perturb
    c.normalization = 'channel'  # mean/std: the modern init wants unit-scale inputs
    c.batch_size = 128
    c.num_epochs = 6.0
    c.learning_rate = 0.05
    c.lr_schedule = 'cosine'
    c.warmup_epochs = 0.25
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.log_every_steps = 100
    c.cpu_dispatch_ahead = True  # the small net's scratch is small; ahead is ~5% faster here
    c.eval_crops = 1
    c.shuffle_buffer = 60_000
    c.validation_examples = 5_000  # of the 60,000 training images
    return c
