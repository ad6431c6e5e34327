"""Pretrained AlexNet weights from torchvision and Caffe, written as an ordinary run directory.

    python -m alexnet_jax.convert torchvision alexnet-owt-7be5be79.pth --workdir runs/tv_alexnet
    python -m alexnet_jax.convert torchvision alexnet.safetensors --workdir runs/tv_alexnet
    python -m alexnet_jax.convert caffe bvlc_alexnet.caffemodel --workdir runs/bvlc_alexnet

The directory gets ``config.json`` (``configs/imagenet.py`` with the source's model and
preprocessing), an orbax checkpoint at step 0, ``stats.npz`` (the source's input normalisation,
named by ``config.pca_stats``), ``class_names.txt`` (ImageNet's synset ids in class order, when
TensorFlow Datasets is installed) and ``converted_from.json``; ``evaluate``, ``predict`` and
``experiments/figures.py`` read it like any run, and ``--config.init_from=DIR`` fine-tunes from it.

Layouts: PyTorch and Caffe store convolutions OIHW and fully connected layers (out, in), and both
flatten pool5 channel-major (CHW); this model is NHWC, so its kernels are HWIO, its dense kernels
(in, out), and fc6's input rows are permuted from CHW to HWC order.

The files are read by ``weight_files.py``: nothing is unpickled, and no PyTorch, safetensors or
Caffe is needed except for ``.pth`` files (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from alexnet_jax.weight_files import (
    CAFFE_LRN_DEFAULTS,
    ConversionError,
    check_exists,
    read_caffemodel,
    read_state_dict,
)

__all__ = [
    'caffe_to_params',
    'convert',
    'torchvision_to_params',
    'write_run',
]

LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')


# --- torchvision's alexnet (one weird trick: 64-192-384-256-256, no LRN) ---

# Our layer -> torchvision's module (torchvision.models.alexnet: features / classifier indices).
TORCHVISION_NAMES = {
    'conv1': 'features.0',
    'conv2': 'features.3',
    'conv3': 'features.6',
    'conv4': 'features.8',
    'conv5': 'features.10',
    'fc6': 'classifier.1',
    'fc7': 'classifier.4',
    'fc8': 'classifier.6',
}


def _expected_shapes(variant: str, num_classes: int) -> dict[str, dict[str, tuple[int, ...]]]:
    """Our model's parameter shapes (HWIO / (in, out)) for ``variant``, without computing."""
    import jax

    from alexnet_jax import models

    model = models.variant(variant, num_classes=num_classes)
    size = model.input_sizes[0]
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32), train=False)
    )['params']
    return {layer: {k: tuple(v.shape) for k, v in p.items()} for layer, p in shapes.items()}


def _source_shape(layer: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch/Caffe shape of one of our kernels: OIHW for convolutions, (out, in) for FCs."""
    if len(ours) == 4:
        kh, kw, cin, cout = ours
        return (cout, cin, kh, kw)
    return (ours[1], ours[0])


def _check_keys(path: str, got: Mapping[str, tuple], wanted: Mapping[str, tuple]) -> None:
    """One error listing every missing, unexpected and misshapen tensor."""
    missing = sorted(k for k in wanted if k not in got)
    extra = sorted(k for k in got if k not in wanted)
    wrong = sorted(k for k in wanted if k in got and tuple(got[k]) != tuple(wanted[k]))
    problems = []
    if missing:
        problems.append(f'missing {", ".join(missing)}')
    if extra:
        problems.append(f'unexpected {", ".join(extra)}')
    if wrong:
        shapes = (f'{k} {tuple(got[k])} (expected {tuple(wanted[k])})' for k in wrong)
        problems.append(f'wrong shape: {", ".join(shapes)}')
    if problems:
        raise ConversionError(f'{path} is not an AlexNet of this layout: {"; ".join(problems)}.')


def _fc6_from_chw(weight: np.ndarray, channels: int, size: int) -> np.ndarray:
    """(out, C*H*W) flattened channel-major (PyTorch, Caffe) -> (H*W*C, out) for NHWC."""
    out = weight.shape[0]
    hwc = weight.reshape(out, channels, size, size).transpose(2, 3, 1, 0)
    return np.ascontiguousarray(hwc.reshape(size * size * channels, out))


def _conv(weight: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(weight, np.float32).transpose(2, 3, 1, 0))  # OIHW->HWIO


def _layout(layer: str, weight: np.ndarray, ours: dict[str, tuple]) -> np.ndarray:
    weight = np.asarray(weight, np.float32)
    if layer.startswith('conv'):
        return _conv(weight)
    if layer == 'fc6':  # pool5 is size x size x C in our NHWC model
        channels = ours['conv5']['kernel'][-1]
        size = math.isqrt(ours['fc6']['kernel'][0] // channels)
        return _fc6_from_chw(weight, channels, size)
    return np.ascontiguousarray(weight.T)


def torchvision_to_params(
    state_dict: Mapping[str, np.ndarray], path: str = 'the state dict'
) -> dict[str, dict[str, np.ndarray]]:
    """torchvision ``alexnet`` state dict -> our ``owt`` params (any number of classes)."""
    head = state_dict.get('classifier.6.weight')
    num_classes = int(np.shape(head)[0]) if head is not None and np.ndim(head) == 2 else 1000
    ours = _expected_shapes('owt', num_classes)
    wanted = {}
    for layer, module in TORCHVISION_NAMES.items():
        wanted[f'{module}.weight'] = _source_shape(layer, ours[layer]['kernel'])
        wanted[f'{module}.bias'] = ours[layer]['bias']
    _check_keys(path, {k: np.shape(v) for k, v in state_dict.items()}, wanted)
    return {
        layer: {
            'kernel': _layout(layer, state_dict[f'{module}.weight'], ours),
            'bias': np.asarray(state_dict[f'{module}.bias'], np.float32).copy(),
        }
        for layer, module in TORCHVISION_NAMES.items()
    }


# Our LRN (layers.local_response_norm): Section 3.3's k = 2, n = 5, alpha = 1e-4, beta = 0.75,
# alpha not divided by n.
MODEL_LRN = {'size': 5, 'k': 2.0, 'alpha': 1e-4, 'beta': 0.75}


def _lrn_rescaling(caffe_lrn: dict[str, float], name: str, path: str) -> tuple[float, float]:
    """(c, s): feeding c * a into our LRN gives s * (Caffe's LRN of a), exactly.

    Caffe's ACROSS_CHANNELS LRN is b = a / (k + alpha/n * S(a^2))^beta (lrn.from_pytorch maps
    it), ours b = a / (k' + alpha' S(a^2))^beta with the paper's k' = 2, alpha' = 1e-4. With
    c^2 = (alpha/n) k' / (alpha' k): k' + alpha' c^2 S = (k'/k)(k + alpha/n S), so our output on
    c * a is c (k'/k)^-beta times Caffe's. ReLU and max-pooling commute with a positive scale, so
    c goes into conv1/conv2's weights and biases and 1/s into the next layer's weights.
    """
    if caffe_lrn['norm_region'] != 0:
        raise ConversionError(f'{path}: {name} normalises WITHIN_CHANNEL; AlexNet is ACROSS.')
    theirs = _lrn_from_caffe(caffe_lrn)
    if theirs['size'] != MODEL_LRN['size'] or not math.isclose(theirs['beta'], MODEL_LRN['beta']):
        raise ConversionError(
            f'{path}: {name} has local_size {caffe_lrn["local_size"]}, beta {caffe_lrn["beta"]}; '
            f"this model's LRN has size {MODEL_LRN['size']}, beta {MODEL_LRN['beta']}, so the "
            f'net cannot be converted exactly.'
        )
    ratio = MODEL_LRN['k'] / theirs['k']
    c = math.sqrt(theirs['alpha'] * ratio / MODEL_LRN['alpha'])
    return c, c * ratio ** -MODEL_LRN['beta']


def _lrn_from_caffe(caffe_lrn: dict[str, float]) -> dict[str, float]:
    from alexnet_jax.lrn import from_pytorch  # Caffe's convention is PyTorch's: alpha / n

    size = int(caffe_lrn['local_size'])
    return from_pytorch(size, caffe_lrn['alpha'], caffe_lrn['beta'], caffe_lrn['k'])


def caffe_variant(layers: list[dict[str, Any]]) -> str:
    """``paper`` (LRN before pooling, bvlc_alexnet) or ``caffenet`` (pooling first)."""
    order = [layer['name'] for layer in layers]
    if 'norm1' in order and 'pool1' in order and order.index('pool1') < order.index('norm1'):
        return 'caffenet'
    return 'paper'


def caffe_to_params(
    layers: list[dict[str, Any]], variant: str | None = None, path: str = 'the caffemodel'
) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """bvlc_alexnet / bvlc_reference_caffenet layers -> our (params, variant).

    Caffe's conventions made ours: conv1 reads BGR (its input channels are reversed to RGB);
    grouped conv2/4/5 are stored (out, in / groups, kh, kw), which is already our grouped HWIO
    once transposed; fc6 flattens pool5 CHW; LRN divides alpha by n with k = 1 (folded into the
    weights, see :func:`_lrn_rescaling`).
    """
    variant = variant or caffe_variant(layers)
    if variant not in ('paper', 'caffenet'):
        raise ConversionError(f'Caffe weights convert to paper or caffenet, not {variant!r}.')
    by_name = {layer['name']: layer for layer in layers}
    head = by_name.get('fc8', {}).get('blobs') or [np.zeros((1000, 1))]
    num_classes = int(np.squeeze(head[0]).shape[0]) if np.ndim(np.squeeze(head[0])) == 2 else 1000
    ours = _expected_shapes(variant, num_classes)
    got, wanted, blobs = {}, {}, {}
    for layer in LAYERS:
        wanted[f'{layer}.weight'] = _source_shape(layer, ours[layer]['kernel'])
        wanted[f'{layer}.bias'] = ours[layer]['bias']
        found = by_name.get(layer, {}).get('blobs', [])
        for key, blob in zip(('weight', 'bias'), found, strict=False):
            blob = np.asarray(blob, np.float32)
            # Old files store FC weights (1, 1, out, in) and biases (1, 1, 1, out).
            want = wanted[f'{layer}.{key}']
            if blob.shape != want and blob.size == math.prod(want):
                blob = blob.reshape(want)
            got[f'{layer}.{key}'], blobs[f'{layer}.{key}'] = blob.shape, blob
        for extra in range(2, len(found)):
            got[f'{layer}.blob{extra}'] = np.shape(found[extra])
    _check_keys(path, got, wanted)

    params = {
        layer: {
            'kernel': _layout(layer, blobs[f'{layer}.weight'], ours),
            'bias': blobs[f'{layer}.bias'].copy(),
        }
        for layer in LAYERS
    }
    params['conv1']['kernel'] = np.ascontiguousarray(params['conv1']['kernel'][:, :, ::-1, :])
    lrns = [by_name.get(f'norm{i}', {}).get('lrn') or dict(CAFFE_LRN_DEFAULTS) for i in (1, 2)]
    c1, s1 = _lrn_rescaling(lrns[0], 'norm1', path)
    c2, s2 = _lrn_rescaling(lrns[1], 'norm2', path)
    for name, kernel_scale, bias_scale in (
        ('conv1', c1, c1),
        ('conv2', c2 / s1, c2),
        ('conv3', 1.0 / s2, 1.0),
    ):
        params[name]['kernel'] = (params[name]['kernel'] * np.float32(kernel_scale)).astype(
            np.float32
        )
        params[name]['bias'] = (params[name]['bias'] * np.float32(bias_scale)).astype(np.float32)
    return params, variant


# --- the run directory ---

# Caffe's ImageNet models subtract this per-channel mean (B, G, R), in 0-255 (models/bvlc_*).
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)


def imagenet_class_names() -> list[str] | None:
    """ImageNet's 1000 synset ids in class order (as torchvision and Caffe number them), from
    the labels file TensorFlow Datasets ships; None without it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    root = os.path.dirname(tfds.__file__)
    for relative in (
        'datasets/imagenet2012/labels.txt',
        'image_classification/imagenet2012_labels.txt',
    ):
        path = os.path.join(root, relative)
        if os.path.exists(path):
            with open(path) as f:
                names = [line.strip() for line in f if line.strip()]
            if len(names) == 1000:
                return names
    return None


def run_config(source: str, variant: str, num_classes: int, stats_path: str):
    """configs/imagenet.py set up as the source evaluates: model, input size, normalisation."""
    from configs import imagenet

    config = imagenet.get_config()
    config.model = variant
    config.num_classes = num_classes
    config.resize_size = 256
    config.eval_crops = 1  # both published figures are single centre crops
    config.pca_stats = stats_path
    if source == 'torchvision':
        # torchvision's ImageNet transform: resize 256, centre crop 224, (x/255 - mean) / std.
        config.image_size = 224
        config.normalization = 'channel'
    else:
        # Caffe: 256x256 images, 227 crops, the per-channel mean subtracted, no scaling.
        config.image_size = 227
        config.normalization = 'mean_image'
    return config


def _stats(source: str, resize: int):
    from alexnet_jax import image_stats

    if source == 'torchvision':
        mean, std = image_stats.IMAGENET_MEAN, image_stats.IMAGENET_STD
    else:
        mean = np.asarray(CAFFE_MEAN_BGR[::-1], np.float32)  # RGB
        std = np.ones(3, np.float32)
    return image_stats.Stats(
        np.broadcast_to(mean, (resize, resize, 3)).astype(np.float32),
        np.asarray(mean, np.float32),
        np.asarray(std, np.float32),
        image_stats.IMAGENET_PCA_EIGVAL,
        image_stats.IMAGENET_PCA_EIGVEC,
    )


def write_run(
    params: dict[str, dict[str, np.ndarray]],
    workdir: str,
    *,
    source: str,
    variant: str,
    provenance: dict[str, Any] | None = None,
) -> str:
    """Writes ``workdir`` as a run directory holding ``params`` at step 0; returns its path."""
    from alexnet_jax import checkpointing, image_stats, metrics, models, steps

    workdir = os.path.abspath(workdir)
    checkpoints = os.path.join(workdir, 'checkpoints')
    if os.path.isdir(checkpoints) and os.listdir(checkpoints):
        raise ConversionError(f'{workdir} already holds checkpoints; use another --workdir.')
    num_classes = params['fc8']['bias'].shape[0]
    os.makedirs(workdir, exist_ok=True)
    stats_path = os.path.join(workdir, 'stats.npz')
    config = run_config(source, variant, num_classes, stats_path)
    image_stats.save_stats(_stats(source, config.resize_size), stats_path)
    model = models.create_model(config)
    state = steps.create_train_state(config, model, (config.image_size,) * 2 + (3,), 1)
    fresh = {k: {n: tuple(a.shape) for n, a in v.items()} for k, v in state.params.items()}
    given = {k: {n: tuple(a.shape) for n, a in v.items()} for k, v in params.items()}
    if fresh != given:
        raise ConversionError(f'The converted parameters do not fit the {variant} model.')
    state = state.replace(params=params)
    writer = metrics.Writer(workdir)
    try:
        writer.write_config(config)
    finally:
        writer.close()
    ckpt = checkpointing.Checkpointer(workdir, config)
    try:
        ckpt.save(0, state, force=True)
    finally:
        ckpt.close()
    names = imagenet_class_names() if num_classes == 1000 else None
    if names:
        with open(os.path.join(workdir, 'class_names.txt'), 'w') as f:
            f.write('\n'.join(names) + '\n')
    with open(os.path.join(workdir, 'converted_from.json'), 'w') as f:
        json.dump({'source': source, 'model': variant, **(provenance or {})}, f, indent=2)
    return workdir


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _check_hash_in_name(path: str, sha256: str) -> None:
    """torchvision names its files <name>-<first 8 hex digits of the SHA-256>.pth."""
    match = re.search(r'-([0-9a-f]{8,})\.pth$', os.path.basename(path))
    if match and not sha256.startswith(match.group(1)):
        raise ConversionError(
            f'{path} is damaged: its SHA-256 starts {sha256[:8]}, its name says '
            f'{match.group(1)}. Download it again.'
        )


def convert(source: str, path: str, workdir: str, variant: str | None = None) -> str:
    """Reads ``path`` (torchvision or caffe), checks it, writes the run; returns the workdir."""
    check_exists(path)
    sha256 = _sha256(path)
    if source == 'torchvision':
        if variant not in (None, 'owt'):
            raise ConversionError('torchvision weights convert to the owt model only.')
        _check_hash_in_name(path, sha256)
        params, variant = torchvision_to_params(read_state_dict(path), path), 'owt'
    elif source == 'caffe':
        params, variant = caffe_to_params(read_caffemodel(path), variant, path)
    else:
        raise ConversionError(f'Unknown source {source!r}: torchvision | caffe.')
    provenance = {'file': os.path.abspath(path), 'sha256': sha256}
    return write_run(params, workdir, source=source, variant=variant, provenance=provenance)


def main(argv: list[str]) -> None:
    from absl import flags

    from alexnet_jax import runtime

    flags_ = flags.FLAGS
    if len(argv) != 3:
        sys.exit('usage: python -m alexnet_jax.convert torchvision|caffe FILE --workdir DIR')
    runtime.configure()
    try:
        workdir = convert(argv[1], argv[2], flags_.workdir, flags_.model)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f'error: {error}')
    print(f'Wrote {workdir} (step 0). Evaluate: python -m alexnet_jax.evaluate --workdir {workdir}')


if __name__ == '__main__':
    from absl import app, flags

    flags.DEFINE_string('workdir', None, 'The run directory to write.', required=True)
    flags.DEFINE_enum(
        'model', None, ['paper', 'caffenet', 'owt'], 'Override the model (caffe: from layer order).'
    )
    app.run(main)
