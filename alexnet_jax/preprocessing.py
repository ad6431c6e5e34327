"""Host-side geometry in TensorFlow: decode, resize, crop, flip, all ending in uint8.

Colour work (PCA noise, normalisation) happens on the device
(`device_preprocessing.device_preprocess`) so that images cross to the accelerator as uint8.

Geometry, in "base" coordinates (the image crops are taken from):

* large images (``crop_padding == 0``), Section 2: the central square of the image, resized to
  ``resize_size`` x ``resize_size`` (bilinear, half-pixel centres, no antialiasing, as Caffe's
  OpenCV resize). Taking the square first keeps the exact aspect ratio; resizing the shorter side
  first and then cropping differs only by the rounding of the longer side.
* small images (``crop_padding = p > 0``): the image zero-padded by p on every side.

A crop is an offset (y, x) in base coordinates and a flip flag. For large JPEGs only the rows
and columns the crop's bilinear samples touch are decoded (`tf.image.decode_and_crop_jpeg`); the
rest of the square is zero-filled, since no sample reads it, and the resize is TensorFlow's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import tensorflow as tf

from alexnet_jax.data_types import eval_offsets as eval_offsets  # the device crops share it

if TYPE_CHECKING:
    from alexnet_jax.data_types import Source

_JPEG_MARGIN = 4
# libjpeg's fast integer IDCT (as TensorFlow's own ImageNet benchmarks decode): ~10% faster,
# differences of a grey level or two from the slow exact IDCT.
_DCT = 'INTEGER_FAST'


def base_size(config, image_hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """Height and width of the base image crops are taken from."""
    if config.crop_padding > 0:
        if image_hw is None:
            raise ValueError('crop_padding > 0 needs the stored image size.')
        return image_hw[0] + 2 * config.crop_padding, image_hw[1] + 2 * config.crop_padding
    return config.resize_size, config.resize_size


def source_base_size(config, source: Source) -> tuple[int, int]:
    """The base size for `source`'s images; crop_padding > 0 needs them all of one size."""
    if config.crop_padding > 0:
        if source.image_hw is None:
            problem = 'needs images of one size'
            if source.size_problem is not None:
                problem += ', but ' + source.size_problem()
            raise ValueError(
                f'{config.dataset}: crop_padding > 0 (the small-image path) {problem}. Resize '
                'them to one size, or set config.crop_padding = 0 to resize and crop instead.'
            )
        return base_size(config, source.image_hw)
    return base_size(config)


def random_crop_params(
    key: tf.Tensor, base_hw: tuple[int, int], crop: int, *, random_crop: bool, random_flip: bool
) -> tuple[tf.Tensor, tf.Tensor]:
    """A crop offset [2] int32 and a flip flag from a stateless seed `key` ([2] int64)."""
    u = tf.random.stateless_uniform([3], seed=key)
    ranges = tf.constant([base_hw[0] - crop + 1, base_hw[1] - crop + 1], tf.float32)
    if random_crop:
        yx = tf.minimum(tf.cast(tf.floor(u[:2] * ranges), tf.int32), tf.cast(ranges, tf.int32) - 1)
    else:
        yx = tf.constant([(base_hw[0] - crop) // 2, (base_hw[1] - crop) // 2], tf.int32)
    flip = u[2] < 0.5 if random_flip else tf.constant(False)
    return yx, flip


def _mirror(image: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """`image` [H, W, C] mirrored left-right where the scalar `flip` is true.

    A reverse over an axis list of length 0 or 1: inside tf.data, `tf.cond` costs about a
    millisecond an image and `tf.where(flip, mirrored, image)` (a broadcast select) half of one.
    """
    return tf.reverse(image, tf.boolean_mask(tf.constant([1]), flip[None]))


def _plan(shape_hw: tf.Tensor, offsets: tf.Tensor, config):
    """Which part of the image K crops need (all [2] vectors are (y, x)).

    Returns the central square's origin and side, and the rows/columns [lo, hi) of the square
    that the bilinear samples of the crops at `offsets` ([K, 2], base coordinates) touch.
    """
    s = tf.reduce_min(shape_hw)
    origin = (shape_hw - s) // 2
    scale = tf.cast(s, tf.float32) / float(config.resize_size)  # square pixels per base pixel
    first = (tf.cast(tf.reduce_min(offsets, 0), tf.float32) + 0.5) * scale - 0.5
    last = (tf.cast(tf.reduce_max(offsets, 0) + config.image_size, tf.float32) - 0.5) * scale - 0.5
    lo = tf.maximum(tf.cast(tf.floor(first), tf.int32), 0)
    hi = tf.minimum(tf.cast(tf.floor(last), tf.int32) + 2, s)  # bilinear reads floor and floor + 1
    return origin, s, lo, hi


def _resize_and_slice(part, lo, hi, s, offsets, flips, config) -> tf.Tensor:
    """Crops from rows/columns [lo, hi) of the s x s square (`part`, uint8): the rest of the
    square is zero-filled (no sample reads it), the square resized to resize_size as
    `tf.image.resize` does (half-pixel centres, edge clamping), and the crops sliced out.

    Resizing the whole square, not only the crop, is the faster formulation on CPU: the resize
    op's separable weights make 256x256 outputs cheaper than `tf.image.crop_and_resize`'s
    227x227 (~0.5 against ~0.65 ms, one thread).
    """
    square = tf.pad(
        part, tf.stack([tf.stack([lo[0], s - hi[0]]), tf.stack([lo[1], s - hi[1]]), [0, 0]])
    )
    r = config.resize_size
    base = tf.raw_ops.ResizeBilinear(images=square[None], size=[r, r], half_pixel_centers=True)[0]
    crop = config.image_size
    crops = []
    for k in range(offsets.shape[0]):  # static: 1 (train / centre) or 10
        c = tf.slice(base, tf.concat([offsets[k], [0]], 0), [crop, crop, -1])
        # Interpolated uint8 values stay in [0, 255]: adding 0.5 and truncating rounds.
        crops.append(_mirror(tf.cast(c + 0.5, tf.uint8), flips[k]))
    return tf.stack(crops)


def resized_crops(
    image: tf.Tensor, offsets: tf.Tensor, flips: tf.Tensor, config, *, channels: int, jpeg: bool
) -> tf.Tensor:
    """Crops [K, S, S, C] uint8 from a decoded image (uint8 [H, W, C]) or encoded bytes.

    Large-image path: centre square -> resize_size -> crop at `offsets` [K, 2], mirrored where
    `flips` [K]. With `jpeg` (all sources JPEG; decided per dataset, as a per-image tf.cond costs
    about as much as the decode), only the window the samples need is decoded.
    """
    if image.dtype != tf.uint8 and not jpeg:
        image = tf.io.decode_image(image, channels=channels, expand_animations=False)
    if image.dtype == tf.uint8:
        origin, s, lo, hi = _plan(tf.shape(image)[:2], offsets, config)
        part = tf.slice(image, tf.concat([origin + lo, [0]], 0), tf.concat([hi - lo, [-1]], 0))
        return _resize_and_slice(part, lo, hi, s, offsets, flips, config)
    shape = tf.image.extract_jpeg_shape(image)[:2]
    origin, s, lo, hi = _plan(shape, offsets, config)
    # Decode a margin of a few pixels more: libjpeg's chroma upsampling at a crop edge differs
    # from a full decode, so the pixels used must lie inside the decoded window.
    top = tf.maximum(origin + lo - _JPEG_MARGIN, 0)
    bottom = tf.minimum(origin + hi + _JPEG_MARGIN, shape)
    window = tf.image.decode_and_crop_jpeg(
        image, tf.concat([top, bottom - top], axis=0), channels=channels, dct_method=_DCT
    )
    begin = tf.concat([origin + lo - top, [0]], 0)
    part = tf.slice(window, begin, tf.concat([hi - lo, [-1]], 0))
    return _resize_and_slice(part, lo, hi, s, offsets, flips, config)


def padded_crops(image: tf.Tensor, offsets: tf.Tensor, flips: tf.Tensor, config) -> tf.Tensor:
    """Small-image path: zero-pad by crop_padding, crop at `offsets` [K, 2], mirror if `flips`."""
    p = config.crop_padding
    padded = tf.pad(image, [[p, p], [p, p], [0, 0]])
    crop = config.image_size
    crops = []
    for k in range(offsets.shape[0]):  # K is static: 1 (train / centre) or 10
        c = tf.slice(padded, tf.stack([offsets[k, 0], offsets[k, 1], 0]), [crop, crop, -1])
        crops.append(_mirror(c, flips[k]))
    return tf.stack(crops)


def make_crops(
    image: tf.Tensor, offsets, flips, config, *, channels: int, jpeg: bool = False
) -> tf.Tensor:
    """Dispatches to the small- or large-image path; returns uint8 [K, S, S, C].

    `image`: decoded uint8 [H, W, C], or encoded bytes (JPEG only if `jpeg`, else any format
    `tf.io.decode_image` reads).
    """
    offsets = tf.convert_to_tensor(offsets, tf.int32)
    flips = tf.convert_to_tensor(flips, tf.bool)
    if config.crop_padding > 0:
        if image.dtype != tf.uint8:
            image = tf.io.decode_image(image, channels=channels, expand_animations=False)
        return padded_crops(image, offsets, flips, config)
    return resized_crops(image, offsets, flips, config, channels=channels, jpeg=jpeg)


def base_image(image: tf.Tensor, config, *, channels: int) -> tf.Tensor:
    """The whole base image (uint8 [B_h, B_w, C]) crops are taken from; for dataset statistics."""
    if image.dtype != tf.uint8:
        image = tf.io.decode_image(image, channels=channels, expand_animations=False)
    if config.crop_padding > 0:
        p = config.crop_padding
        return tf.pad(image, [[p, p], [p, p], [0, 0]])
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    s = tf.minimum(h, w)
    square = image[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    r = config.resize_size
    out = tf.image.resize(square, [r, r], method='bilinear', antialias=False)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)
