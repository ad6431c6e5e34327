"""On the device, inside the jitted step: uint8 crops -> float model input.

The host ships uint8 crops with where each was cut (`input_pipeline`); here they are cast, get
the PCA colour noise (Section 4.1, training only) and are normalised: per channel, or by the
mean image (Section 2) cropped and mirrored as each crop was. The statistics are arguments
(`dataset_stats.load_stats`); nothing here reads files or uses TensorFlow.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.data_types import Stats


def device_preprocess(
    batch: dict,
    rng: jax.Array | None,
    stats: Stats,
    config,
    *,
    train: bool,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """uint8 crops -> float model input: PCA colour noise (train) and normalisation. Pure jnp.

    `batch['image']` is one device's shard, [B, H, W, C] or [B, K, H, W, C] (ten crops), uint8;
    `batch['crop_yx']` [..., 2] and `batch['flip']` [...] locate each crop in the base image so
    that the mean image is cropped and mirrored with it.
    """
    image = batch['image'].astype(jnp.float32)
    lead, channels = image.shape[:-3], image.shape[-1]
    if train and rng is not None and config.pca_noise_std > 0:
        # Section 4.1: add sum_i alpha_i lambda_i p_i to every pixel, alpha_i ~ N(0, std), drawn
        # once per image; eigen-stats are for RGB in [0, 1], so scale to 0-255.
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
