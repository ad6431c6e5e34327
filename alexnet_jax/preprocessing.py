"""Host-side geometry in TensorFlow: decode, resize, crop, flip, all ending in uint8.

Colour work (PCA noise, normalisation) happens on the device (`input_pipeline.device_preprocess`)
so that images cross to the accelerator as uint8.

Geometry, in "base" coordinates (the image crops are taken from):

* large images (``crop_padding == 0``), Section 2: the central square of the image, resized to
  ``resize_size`` x ``resize_size`` (bilinear, half-pixel centres, no antialiasing, as Caffe's
  OpenCV resize). Taking the square first keeps the exact aspect ratio; resizing the shorter side
  first and then cropping differs only by the rounding of the longer side.
* small images (``crop_padding = p > 0``): the image zero-padded by p on every side.

A crop is an offset (y, x) in base coordinates and a flip flag. For large images the crop is
computed straight from the JPEG: only the rows and columns the bilinear samples touch are decoded
(`tf.image.decode_and_crop_jpeg`) and `tf.image.crop_and_resize` samples exactly the points the
256x256 resize would, then slices the crop (and mirrors it when the box is given right to left).
"""

from __future__ import annotations

import tensorflow as tf

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


def eval_offsets(base_hw: tuple[int, int], crop: int, num_crops: int) -> tuple[list, list]:
    """Offsets and flips of the centre crop, or of the paper's ten crops (Section 4.1).

    Ten crops: top-left, top-right, bottom-left, bottom-right, centre, then their mirrors.
    """
    dy, dx = base_hw[0] - crop, base_hw[1] - crop
    centre = [dy // 2, dx // 2]
    if num_crops == 1:
        return [centre], [False]
    if num_crops != 10:
        raise ValueError(f'config.eval_crops must be 1 or 10, got {num_crops}.')
    five = [[0, 0], [0, dx], [dy, 0], [dy, dx], centre]
    return five + five, [False] * 5 + [True] * 5


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


def _plan(shape_hw: tf.Tensor, offsets: tf.Tensor, config):
    """Where the samples of K crops fall in the image (all [2] vectors are (y, x)).

    Returns the square's origin, the scale (source pixels per base pixel), the source
    coordinates of the first and last sample of each crop ([K, 2], half-pixel convention, square
    coordinates) and the rows/columns [lo, hi) of the square that the samples touch.
    """
    s = tf.reduce_min(shape_hw)
    origin = (shape_hw - s) // 2
    scale = tf.cast(s, tf.float32) / float(config.resize_size)
    first = (tf.cast(offsets, tf.float32) + 0.5) * scale - 0.5
    last = first + (config.image_size - 1) * scale
    lo = tf.maximum(tf.cast(tf.floor(tf.reduce_min(first, axis=0)), tf.int32), 0)
    hi = tf.minimum(tf.cast(tf.floor(tf.reduce_max(last, axis=0)), tf.int32) + 2, s)
    return origin, scale, first, last, lo, hi


def _sample(window, first, last, flips, start, size, scale, crop: int) -> tf.Tensor:
    """Bilinear samples of K crops from `window`: `size` rows/columns of the square from `start`
    (both [2]; `start` may be negative where the window reaches past the square)."""
    # Upsampling (square smaller than resize_size) puts the outermost samples up to half a
    # pixel outside the image, where resize clamps: replicate the edge pixels to match. The pad
    # is 0 when downsampling, which MirrorPad forwards for free (a tf.cond would cost ~1 ms per
    # image inside tf.data). Written with few ops: each costs microseconds per image.
    u = tf.cast(scale < 1.0, tf.int32)
    window = tf.pad(window, u * tf.constant([[1, 1], [1, 1], [0, 0]]), mode='SYMMETRIC')
    shift = tf.cast(start - u, tf.float32)
    extent = tf.cast(size + 2 * u - 1, tf.float32)
    b1, b2 = (first - shift) / extent, (last - shift) / extent  # [K, 2] normalised (y, x)
    # A box given right to left samples the mirror image.
    x1 = tf.where(flips, b2[:, 1], b1[:, 1])
    x2 = tf.where(flips, b1[:, 1], b2[:, 1])
    boxes = tf.stack([b1[:, 0], x1, b2[:, 0], x2], axis=1)
    k = boxes.shape[0]  # static: 1 or 10
    out = tf.image.crop_and_resize(window[None], boxes, tf.zeros([k], tf.int32), [crop, crop])
    # Interpolated uint8 values stay in [0, 255]: adding 0.5 and truncating rounds (one pass).
    return tf.cast(out + 0.5, tf.uint8)


def resized_crops(
    image: tf.Tensor, offsets: tf.Tensor, flips: tf.Tensor, config, *, channels: int, jpeg: bool
) -> tf.Tensor:
    """Crops [K, S, S, C] uint8 from a decoded image (uint8 [H, W, C]) or encoded bytes.

    Large-image path: centre square -> resize_size -> crop at `offsets` [K, 2], mirrored where
    `flips` [K]. With `jpeg` (all sources JPEG; decided per dataset, as a per-image tf.cond costs
    about as much as the decode), only the window the samples need is decoded.
    """
    crop = config.image_size
    if image.dtype != tf.uint8 and not jpeg:
        image = tf.io.decode_image(image, channels=channels, expand_animations=False)
    if image.dtype == tf.uint8:
        origin, scale, first, last, lo, hi = _plan(tf.shape(image)[:2], offsets, config)
        window = tf.slice(image, tf.concat([origin + lo, [0]], 0), tf.concat([hi - lo, [-1]], 0))
        return _sample(window, first, last, flips, lo, hi - lo, scale, crop)
    shape = tf.image.extract_jpeg_shape(image)[:2]
    origin, scale, first, last, lo, hi = _plan(shape, offsets, config)
    # Decode a margin of a few pixels more: libjpeg's chroma upsampling at a crop edge differs
    # from a full decode, so the pixels used must lie inside the decoded window.
    top = tf.maximum(origin + lo - _JPEG_MARGIN, 0)
    bottom = tf.minimum(origin + hi + _JPEG_MARGIN, shape)
    window = tf.image.decode_and_crop_jpeg(
        image, tf.concat([top, bottom - top], axis=0), channels=channels, dct_method=_DCT
    )
    # Downsampling samples the decoded window as it is (a whole-tensor slice is free). Upsampling
    # cuts it back to the square's [lo, hi), so that the edge replication copies the square's
    # edge pixels, as resizing the square alone would.
    u = tf.cast(scale < 1.0, tf.int32)
    begin = u * (origin + lo - top)
    size = u * (hi - lo) + (1 - u) * (bottom - top)
    window = tf.slice(window, tf.concat([begin, [0]], 0), tf.concat([size, [-1]], 0))
    return _sample(window, first, last, flips, top - origin + begin, size, scale, crop)


def padded_crops(image: tf.Tensor, offsets: tf.Tensor, flips: tf.Tensor, config) -> tf.Tensor:
    """Small-image path: zero-pad by crop_padding, crop at `offsets` [K, 2], mirror if `flips`."""
    p = config.crop_padding
    padded = tf.pad(image, [[p, p], [p, p], [0, 0]])
    crop = config.image_size
    crops = []
    for k in range(offsets.shape[0]):  # K is static: 1 (train / centre) or 10
        c = tf.slice(padded, tf.stack([offsets[k, 0], offsets[k, 1], 0]), [crop, crop, -1])
        crops.append(tf.where(flips[k], c[:, ::-1], c))  # no tf.cond: slow inside tf.data
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
