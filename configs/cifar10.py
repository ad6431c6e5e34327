"""The `small` AlexNet on CIFAR-10 (32x32 colour), the paper's Section 3.3 test bed.

python -m alexnet_jax.main --config configs/cifar10.py --workdir runs/cifar10
# offline: --config.dataset_path=DIR holding cifar-10-binary.tar.gz
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.dataset = 'cifar10'
    c.model = 'small'
    c.num_classes = 10
    c.image_size = 32
    c.crop_padding = 4
    c.random_flip = True
    c.pca_noise_std = 0.1
    c.normalization = 'channel'  # mean/std: the modern init wants unit-scale inputs
    c.batch_size = 128
    c.num_epochs = 30.0
    c.learning_rate = 0.02
    c.lr_schedule = 'cosine'
    c.warmup_epochs = 1.0
    c.eval_every_steps = 1_000
    c.checkpoint_every_steps = 1_000
    c.log_every_steps = 100
    c.eval_crops = 1
    c.shuffle_buffer = 50_000
    c.validation_examples = 5_000  # of the 50,000 training images
    return c
