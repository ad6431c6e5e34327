"""On the device, inside the jitted step: uint8 images -> float model input.

The tf.data path ships uint8 crops with where each was cut (`input_pipeline`). A prepared set
(`prepared_data`) ships whole base images with their stream positions: here they are cropped and
mirrored (Section 4.1; a random crop and flip per training example, the centre or the ten
crops for evaluation). Then the images are cast, get the PCA colour noise (Section 4.1,
training only) and are normalised: per channel, or by the mean image (Section 2) cropped and
mirrored as each crop was. A training example's crop, flip and noise come from a key folded
from its global stream position (``batch['position']``), so they do not depend on which device
or host it lands on. The statistics are arguments (`dataset_stats.load_stats`); nothing here
reads files or uses TensorFlow.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.data_types import Stats, eval_offsets

_AUGMENT = 0xC409  # folded into the seed: the augmentation keys' own stream


def device_preprocess(
    batch: dict,
    rng: jax.Array | None,
    stats: Stats,
    config,
    *,
    train: bool,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """uint8 images -> float model input: crops of whole base images (a batch with 'position'),
    PCA colour noise (train) and normalisation. Pure jnp.

    `batch['image']` is one device's shard, [B, H, W, C] or [B, K, H, W, C] (ten crops), uint8;
    `batch['crop_yx']` [..., 2] and `batch['flip']` [...] locate each crop in the base image so
    that the mean image is cropped and mirrored with it.
    """
    keys = None
    if 'position' in batch:  # whole base images (a prepared set): crop here
        if train:
            keys = example_keys(batch['position'], config.seed)
        batch = device_crops(batch, config, keys=keys)
    image = batch['image'].astype(jnp.float32)
    lead, channels = image.shape[:-3], image.shape[-1]
    if train and (rng is not None or keys is not None) and config.pca_noise_std > 0:
        # Section 4.1: add sum_i alpha_i lambda_i p_i to every pixel, alpha_i ~ N(0, std), drawn
        # once per image; eigen-stats are for RGB in [0, 1], so scale to 0-255.
        if keys is not None:
            noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), (channels,)))
            alpha = noise(keys) * config.pca_noise_std
        else:
            alpha = jax.random.normal(rng, lead + (channels,)) * config.pca_noise_std
        shift = (alpha * jnp.asarray(stats.pca_eigval)) @ jnp.asarray(stats.pca_eigvec).T
        image = image + 255.0 * shift[..., None, None, :]
    if config.normalization == 'channel':
        image = (image - jnp.asarray(stats.channel_mean)) / jnp.asarray(stats.channel_std)
    elif config.normalization == 'mean_image':
        image = image - _mean_crops(batch, stats.mean_image, image.shape)
    elif config.normalization != 'none':
        raise ValueError(
            f'Unknown config.normalization {config.normalization!r}: mean_image | channel | none.'
        )
    return image.astype(dtype)


def _mean_crops(batch: dict, mean_image: np.ndarray, shape) -> jax.Array:
    """The mean image cropped at each crop's offset and mirrored with it ([..., H, W, C])."""
    h, w, c = shape[-3:]
    mean = jnp.asarray(mean_image, jnp.float32)
    if 'crop_yx' not in batch:  # no crop metadata: centre crop
        y, x = (mean.shape[0] - h) // 2, (mean.shape[1] - w) // 2
        return mean[y : y + h, x : x + w]
    yx = jnp.reshape(batch['crop_yx'], (-1, 2))
    flip = jnp.reshape(batch['flip'], (-1,))

    def one(offset, mirrored):
        m = jax.lax.dynamic_slice(mean, (offset[0], offset[1], 0), (h, w, c))
        return jnp.where(mirrored, m[:, ::-1], m)

    return jax.vmap(one)(yx, flip).reshape(shape)


def example_keys(position: jax.Array, seed: int) -> jax.Array:
    """One key per example from its global stream position (uint32 [B])."""
    root = jax.random.fold_in(jax.random.key(seed), _AUGMENT)
    return jax.vmap(lambda p: jax.random.fold_in(root, p))(position.astype(jnp.uint32))


def device_crops(batch: dict, config, *, keys: jax.Array | None) -> dict:
    """Crops whole base images [B, H, W, C]: at random with a flip per example (`keys`, [B];
    Section 4.1's training crops), else the centre crop or the ten crops (``eval_crops``).

    Small images (``crop_padding = p > 0``) are zero-padded by p first. Returns the batch with
    'image' cropped ([B, S, S, C] or [B, 10, S, S, C]) and the 'crop_yx' and 'flip' of each crop.
    """
    image, p, s = batch['image'], config.crop_padding, config.image_size
    if p:
        image = jnp.pad(image, ((0, 0), (p, p), (p, p), (0, 0)))
    base_h, base_w, channels = image.shape[1:]

    def cut(img, yx, mirrored):
        crop = jax.lax.dynamic_slice(img, (yx[0], yx[1], 0), (s, s, channels))
        return jnp.where(mirrored, crop[:, ::-1], crop)

    if keys is not None:

        def params(key):
            k_crop, k_flip = jax.random.split(jax.random.fold_in(key, 0))
            high = jnp.array([base_h - s + 1, base_w - s + 1])
            if config.random_crop:
                yx = jax.random.randint(k_crop, (2,), 0, high)
            else:
                yx = (high - 1) // 2
            flip = jax.random.bernoulli(k_flip) if config.random_flip else jnp.array(False)
            return yx.astype(jnp.int32), flip

        yx, flip = jax.vmap(params)(keys)
        crops = jax.vmap(cut)(image, yx, flip)
    else:
        offsets, flips = eval_offsets((base_h, base_w), s, config.eval_crops)
        yx = jnp.broadcast_to(jnp.asarray(offsets, jnp.int32), (image.shape[0], len(offsets), 2))
        flip = jnp.broadcast_to(jnp.asarray(flips), (image.shape[0], len(flips)))
        crops = jax.vmap(lambda img, o, f: jax.vmap(cut, (None, 0, 0))(img, o, f))(image, yx, flip)
        if config.eval_crops == 1:
            crops, yx, flip = crops[:, 0], yx[:, 0], flip[:, 0]
    return {**batch, 'image': crops, 'crop_yx': yx, 'flip': flip}
