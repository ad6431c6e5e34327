"""Fine-tune converted torchvision AlexNet weights on your own image folder.

    python -m alexnet_jax.convert torchvision alexnet-owt-7be5be79.pth --workdir runs/tv_alexnet
    python -m alexnet_jax.main --config configs/finetune_imagefolder.py --workdir runs/flowers \
        --config.dataset_path=/data/flowers --config.num_classes=5 \
        --config.init_from=runs/tv_alexnet --config.pca_stats=runs/tv_alexnet/stats.npz

``DIR/train/<class>/*.jpg`` (and ``DIR/val/...``) as for any image folder. ``pca_stats`` gives the
input the normalisation the weights were trained with (ImageNet's mean and std); without it the
folder's own statistics are used. fc8 starts afresh when ``num_classes`` is not 1000; add
``--config.freeze=conv1,conv2,conv3,conv4,conv5`` to train only the classifier. For Caffe's
weights use ``--config.model=paper`` (or ``caffenet``), ``--config.image_size=227`` and
``--config.normalization=mean_image``.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.dataset = 'imagefolder'
    c.model = 'owt'
    c.image_size = 224  # torchvision's crop
    c.resize_size = 256
    c.normalization = 'channel'  # torchvision's (x/255 - mean) / std
    c.num_classes = 1000  # set to the folder's number of classes
    c.batch_size = 64
    c.num_epochs = 10.0  # a few passes: the features are already trained
    c.learning_rate = 0.001  # a tenth of the paper's initial rate
    c.lr_schedule = 'cosine'
    c.warmup_epochs = 0.5
    c.weight_decay = 0.0005
    c.pca_noise_std = 0.0  # torchvision's training used no colour noise
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.log_every_steps = 20
    c.eval_crops = 1
    return c
