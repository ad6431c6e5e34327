"""Pretrained weights in (torchvision, Caffe), fine-tuning out.

Every conversion is checked against an independent forward pass: torchvision's AlexNet and
Caffe's grouped LRN nets written plainly in numpy on the source's own layout (NCHW, OIHW, CHW
flattening, BGR, Caffe's LRN), and PyTorch itself when it is installed.
"""

import json
import logging
import math
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from alexnet_jax import checkpointing, convert, finetune, models, optim, steps, train, weight_files
from configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- numpy references, in the sources' own layouts (float64) ---


def np_conv(x, w, b, stride=1, pad=0, groups=1):
    """NCHW input, OIHW weights; Caffe's/PyTorch's grouped convolution (output groups in order)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out_per_group, in_per_group = w.shape[0] // groups, w.shape[1]
    windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]
    outs = []
    for g in range(groups):
        xs = windows[:, g * in_per_group : (g + 1) * in_per_group]
        ws = w[g * out_per_group : (g + 1) * out_per_group]
        outs.append(np.einsum('nchwij,ocij->nohw', xs, ws, optimize=True))
    return np.concatenate(outs, axis=1) + b[None, :, None, None]


def np_max_pool(x, window=3, stride=2):
    return sliding_window_view(x, (window, window), axis=(2, 3))[:, :, ::stride, ::stride].max(
        axis=(-2, -1)
    )


def np_adaptive_avg_pool(x, size=6):
    """PyTorch's AdaptiveAvgPool2d: bin i spans [floor(i H / size), ceil((i + 1) H / size))."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, size, size))
    for i in range(size):
        for j in range(size):
            y0, y1 = (i * h) // size, -((-(i + 1) * h) // size)
            x0, x1 = (j * w) // size, -((-(j + 1) * w) // size)
            out[:, :, i, j] = x[:, :, y0:y1, x0:x1].mean(axis=(2, 3))
    return out


def np_caffe_lrn(x, local_size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe's ACROSS_CHANNELS LRN: x / (k + alpha / n * sum of squares over n channels)^beta."""
    half = local_size // 2
    squares = np.pad(x * x, ((0, 0), (half, half), (0, 0), (0, 0)))
    window = sum(squares[:, i : i + x.shape[1]] for i in range(local_size))
    return x / (k + alpha / local_size * window) ** beta


relu = lambda x: np.maximum(x, 0.0)


def np_torchvision_alexnet(sd, x):
    """torchvision.models.AlexNet.forward (eval), NCHW."""
    p = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    x = relu(np_conv(x, p['features.0.weight'], p['features.0.bias'], 4, 2))
    x = np_max_pool(x)
    x = relu(np_conv(x, p['features.3.weight'], p['features.3.bias'], 1, 2))
    x = np_max_pool(x)
    x = relu(np_conv(x, p['features.6.weight'], p['features.6.bias'], 1, 1))
    x = relu(np_conv(x, p['features.8.weight'], p['features.8.bias'], 1, 1))
    x = relu(np_conv(x, p['features.10.weight'], p['features.10.bias'], 1, 1))
    x = np_adaptive_avg_pool(np_max_pool(x)).reshape(x.shape[0], -1)  # flattens C, H, W
    x = relu(x @ p['classifier.1.weight'].T + p['classifier.1.bias'])
    x = relu(x @ p['classifier.4.weight'].T + p['classifier.4.bias'])
    return x @ p['classifier.6.weight'].T + p['classifier.6.bias']


BVLC_LRN = {'local_size': 5, 'alpha': 1e-4, 'beta': 0.75, 'k': 1.0, 'norm_region': 0}


def np_caffe_alexnet(blobs, bgr, pool_first):
    """bvlc_alexnet (LRN then pool) or bvlc_reference_caffenet (pool then LRN), NCHW BGR."""
    p = {k: [np.asarray(b, np.float64) for b in v] for k, v in blobs.items()}
    x = relu(np_conv(bgr, *p['conv1'], 4, 0))
    for name in ('1', '2'):
        if name == '2':
            x = relu(np_conv(x, *p['conv2'], 1, 2, groups=2))
        if pool_first:
            x = np_caffe_lrn(np_max_pool(x), **{k: BVLC_LRN[k] for k in ('alpha', 'beta', 'k')})
        else:
            x = np_max_pool(np_caffe_lrn(x, **{k: BVLC_LRN[k] for k in ('alpha', 'beta', 'k')}))
    x = relu(np_conv(x, *p['conv3'], 1, 1))
    x = relu(np_conv(x, *p['conv4'], 1, 1, groups=2))
    x = relu(np_conv(x, *p['conv5'], 1, 1, groups=2))
    x = np_max_pool(x).reshape(x.shape[0], -1)
    x = relu(x @ p['fc6'][0].T + p['fc6'][1])
    x = relu(x @ p['fc7'][0].T + p['fc7'][1])
    return x @ p['fc8'][0].T + p['fc8'][1]


# --- random weights in the sources' layouts ---

TV_SHAPES = {
    'features.0': (64, 3, 11, 11),
    'features.3': (192, 64, 5, 5),
    'features.6': (384, 192, 3, 3),
    'features.8': (256, 384, 3, 3),
    'features.10': (256, 256, 3, 3),
    'classifier.1': (4096, 9216),
    'classifier.4': (4096, 4096),
    'classifier.6': (1000, 4096),
}
CAFFE_SHAPES = {
    'conv1': (96, 3, 11, 11),
    'conv2': (256, 48, 5, 5),  # two groups
    'conv3': (384, 256, 3, 3),
    'conv4': (384, 192, 3, 3),
    'conv5': (256, 192, 3, 3),
    'fc6': (4096, 9216),
    'fc7': (4096, 4096),
    'fc8': (1000, 4096),
}


def _random(shapes, seed, first_std=None):
    """He-scaled weights (activations stay O(1) through the net) and small random biases."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, (name, shape) in enumerate(shapes.items()):
        std = math.sqrt(2.0 / math.prod(shape[1:]))
        if i == 0 and first_std is not None:
            std = first_std
        w = (rng.standard_normal(shape) * std).astype(np.float32)
        b = (rng.standard_normal(shape[0]) * 0.1).astype(np.float32)
        out[name] = (w, b)
    return out


def tv_state_dict(seed=0):
    return {
        f'{name}.{kind}': array
        for name, (w, b) in _random(TV_SHAPES, seed).items()
        for kind, array in (('weight', w), ('bias', b))
    }


def write_safetensors(path, tensors, metadata=None):
    """The format's spec, written independently: u64 LE header size, JSON header, raw LE data."""
    codes = {np.dtype('<f4'): 'F32', np.dtype('<f2'): 'F16', np.dtype('<i8'): 'I64'}
    header, chunks, offset = {}, [], 0
    if metadata:
        header['__metadata__'] = metadata
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        code = codes.get(array.dtype, array.dtype.name)
        header[name] = {
            'dtype': code,
            'shape': list(array.shape),
            'data_offsets': [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b' ' * (-len(text) % 8)  # the spec allows trailing spaces for alignment
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(text)) + text + b''.join(chunks))


def rel_err(ours, ref):
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def owt_logits(params, images_nhwc):
    model = models.variant('owt', num_classes=params['fc8']['bias'].shape[0])
    return np.asarray(
        jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(params, images_nhwc)
    )


# --- safetensors ---


def test_safetensors_reader_reads_the_spec(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {
        'a': rng.standard_normal((3, 4)).astype(np.float32),
        'half': rng.standard_normal((5,)).astype(np.float16),
        'ints': np.arange(6, dtype=np.int64).reshape(2, 3),
        'scalar': np.array(2.5, np.float32),
    }
    path = str(tmp_path / 'x.safetensors')
    write_safetensors(path, tensors, metadata={'format': 'pt'})
    got = weight_files.read_safetensors(path)
    assert set(got) == set(tensors)
    for name, array in tensors.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape
        np.testing.assert_array_equal(got[name], array)


def test_safetensors_bfloat16_is_widened_exactly(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    upper = (values.view(np.uint32) >> 16).astype('<u2')  # bfloat16 = float32's upper 16 bits
    header = json.dumps({'b': {'dtype': 'BF16', 'shape': [4], 'data_offsets': [0, 8]}}).encode()
    path = tmp_path / 'b.safetensors'
    path.write_bytes(struct.pack('<Q', len(header)) + header + upper.tobytes())
    expected = (upper.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(weight_files.read_safetensors(str(path))['b'], expected)


@pytest.mark.parametrize('keep', [4, 40, -3])
def test_truncated_safetensors_is_one_error_naming_the_file(tmp_path, keep):
    path = tmp_path / 'cut.safetensors'
    write_safetensors(str(path), {'w': np.ones((8, 8), np.float32)})
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(weight_files.TruncatedFileError, match='cut.safetensors is truncated'):
        weight_files.read_safetensors(str(path))


# --- torchvision -> owt ---


@pytest.fixture(scope='module')
def tv_weights():
    return tv_state_dict(seed=0)


@pytest.fixture(scope='module')
def normalised_images():
    rng = np.random.default_rng(2)
    return rng.standard_normal((2, 3, 224, 224)).astype(np.float32)  # NCHW, as torchvision


def test_converted_owt_equals_a_numpy_torchvision_alexnet(tv_weights, normalised_images):
    params = convert.torchvision_to_params(tv_weights)
    ours = owt_logits(params, normalised_images.transpose(0, 2, 3, 1))
    ref = np_torchvision_alexnet(tv_weights, normalised_images.astype(np.float64))
    assert np.std(ref) > 0.1  # the comparison is not of two near-zero vectors
    assert rel_err(ours, ref) < 1e-4


def test_a_wrong_flatten_order_would_be_caught(tv_weights, normalised_images):
    """The test above can fail: fc6 taken without the CHW -> HWC permutation differs."""
    params = convert.torchvision_to_params(tv_weights)
    params['fc6']['kernel'] = np.ascontiguousarray(tv_weights['classifier.1.weight'].T)
    ours = owt_logits(params, normalised_images.transpose(0, 2, 3, 1))
    ref = np_torchvision_alexnet(tv_weights, normalised_images.astype(np.float64))
    assert rel_err(ours, ref) > 1e-2


def _torch_alexnet(torch):
    """torchvision's AlexNet (its module layout and key names), without needing torchvision."""
    nn = torch.nn
    try:
        import torchvision

        return torchvision.models.alexnet()
    except ImportError:
        pass

    class AlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, 4, 2),
                nn.ReLU(),
                nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2),
                nn.ReLU(),
                nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(384, 256, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(256, 256, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(3, 2),
            )
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(0.5),
                nn.Linear(9216, 4096),
                nn.ReLU(),
                nn.Dropout(0.5),
                nn.Linear(4096, 4096),
                nn.ReLU(),
                nn.Linear(4096, 1000),
            )

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return AlexNet()


def test_converted_owt_equals_pytorch_and_pth_equals_safetensors(
    tmp_path, tv_weights, normalised_images
):
    torch = pytest.importorskip('torch')
    net = _torch_alexnet(torch).eval()
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in tv_weights.items()})
    pth = str(tmp_path / 'alexnet.pth')
    torch.save(net.state_dict(), pth)
    st = str(tmp_path / 'alexnet.safetensors')
    write_safetensors(st, {k: v.detach().numpy() for k, v in net.state_dict().items()})
    from_pth, from_st = weight_files.read_state_dict(pth), weight_files.read_state_dict(st)
    assert set(from_pth) == set(from_st) == set(tv_weights)
    for k in tv_weights:
        np.testing.assert_array_equal(from_pth[k], from_st[k])
    with torch.no_grad():
        expected = net(torch.from_numpy(normalised_images)).numpy().astype(np.float64)
    ours = owt_logits(
        convert.torchvision_to_params(from_pth), normalised_images.transpose(0, 2, 3, 1)
    )
    assert rel_err(ours, expected) < 1e-4


def test_bad_state_dicts_are_one_error_naming_the_keys(tv_weights):
    sd = dict(tv_weights)
    del sd['features.3.bias']
    sd['features.99.weight'] = np.zeros(3, np.float32)
    sd['features.0.weight'] = np.zeros((64, 3, 3, 3), np.float32)
    with pytest.raises(weight_files.ConversionError) as info:
        convert.torchvision_to_params(sd, 'x.pth')
    message = str(info.value)
    assert 'x.pth' in message and 'missing features.3.bias' in message
    assert 'unexpected features.99.weight' in message
    assert 'features.0.weight (64, 3, 3, 3) (expected (64, 3, 11, 11))' in message


class _Evil:
    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_a_pickle_that_is_not_a_state_dict_is_refused_never_executed(tmp_path):
    marker = tmp_path / 'executed'
    evil = _Evil()
    _Evil.marker = str(marker)
    path = tmp_path / 'evil.pth'
    path.write_bytes(pickle.dumps({'features.0.weight': evil}))
    with pytest.raises(weight_files.ConversionError, match='evil.pth'):
        weight_files.read_state_dict(str(path))
    assert not marker.exists()


def test_a_truncated_pth_is_one_error_naming_it(tmp_path, tv_weights):
    torch = pytest.importorskip('torch')
    path = tmp_path / 'cut.pth'
    torch.save({k: torch.from_numpy(v) for k, v in list(tv_weights.items())[:2]}, str(path))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(weight_files.TruncatedFileError, match='cut.pth is truncated'):
        weight_files.read_state_dict(str(path))


# --- Caffe -> paper / caffenet ---


def _proto_classes():
    """caffe.proto's messages, only the fields the reader uses, built at run time."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name='caffe_subset.proto', package='caffe_subset')

    def message(name, fields):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name, packed in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f'.caffe_subset.{type_name}'
            if packed:
                f.options.packed = True

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message('BlobShape', [('dim', 1, F.TYPE_INT64, rep, None, True)])
    message(
        'BlobProto',
        [
            ('num', 1, F.TYPE_INT32, opt, None, False),
            ('channels', 2, F.TYPE_INT32, opt, None, False),
            ('height', 3, F.TYPE_INT32, opt, None, False),
            ('width', 4, F.TYPE_INT32, opt, None, False),
            ('data', 5, F.TYPE_FLOAT, rep, None, True),
            ('shape', 7, F.TYPE_MESSAGE, opt, 'BlobShape', False),
        ],
    )
    message(
        'LRNParameter',
        [
            ('local_size', 1, F.TYPE_UINT32, opt, None, False),
            ('alpha', 2, F.TYPE_FLOAT, opt, None, False),
            ('beta', 3, F.TYPE_FLOAT, opt, None, False),
            ('k', 5, F.TYPE_FLOAT, opt, None, False),
        ],
    )
    message(
        'LayerParameter',
        [
            ('name', 1, F.TYPE_STRING, opt, None, False),
            ('type', 2, F.TYPE_STRING, opt, None, False),
            ('blobs', 7, F.TYPE_MESSAGE, rep, 'BlobProto', False),
            ('lrn_param', 118, F.TYPE_MESSAGE, opt, 'LRNParameter', False),
        ],
    )
    message(
        'V1LayerParameter',
        [
            ('name', 4, F.TYPE_STRING, opt, None, False),
            ('type', 5, F.TYPE_INT32, opt, None, False),  # an enum on the wire: a varint
            ('blobs', 6, F.TYPE_MESSAGE, rep, 'BlobProto', False),
            ('lrn_param', 18, F.TYPE_MESSAGE, opt, 'LRNParameter', False),
        ],
    )
    message(
        'NetParameter',
        [
            ('name', 1, F.TYPE_STRING, opt, None, False),
            ('layers', 2, F.TYPE_MESSAGE, rep, 'V1LayerParameter', False),
            ('layer', 100, F.TYPE_MESSAGE, rep, 'LayerParameter', False),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    get = lambda name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f'caffe_subset.{name}')
    )
    return get('NetParameter')


V1_TYPES = {'Convolution': 4, 'InnerProduct': 14, 'LRN': 15, 'Pooling': 17, 'ReLU': 18}


def _caffe_net(blobs, v1, pool_first, lrn=BVLC_LRN):
    """A serialised NetParameter: conv/fc layers with blobs, relu/norm/pool layers between."""
    NetParameter = _proto_classes()
    net = NetParameter(name='fake_bvlc_alexnet')
    order = []
    for i in range(1, 6):
        order += [(f'conv{i}', 'Convolution'), (f'relu{i}', 'ReLU')]
        if i in (1, 2):
            norm_pool = [(f'norm{i}', 'LRN'), (f'pool{i}', 'Pooling')]
            order += norm_pool[::-1] if pool_first else norm_pool
    order += [('pool5', 'Pooling')]
    for name in ('fc6', 'fc7', 'fc8'):
        order += [(name, 'InnerProduct')]
    for name, kind in order:
        layer = net.layers.add() if v1 else net.layer.add()
        layer.name = name
        layer.type = V1_TYPES[kind] if v1 else kind
        if kind == 'LRN':
            layer.lrn_param.local_size = lrn['local_size']
            layer.lrn_param.alpha = lrn['alpha']
            layer.lrn_param.beta = lrn['beta']
            layer.lrn_param.k = lrn['k']
        for array in blobs.get(name, ()):
            blob = layer.blobs.add()
            if v1:  # old files: 4-D num/channels/height/width, FC weights as (1, 1, out, in)
                dims = (1,) * (4 - array.ndim) + array.shape
                blob.num, blob.channels, blob.height, blob.width = dims
            else:
                blob.shape.dim.extend(array.shape)
            blob.data.extend(array.ravel())
    return net.SerializeToString()


@pytest.mark.parametrize('v1', [False, True])
def test_caffemodel_reader_reads_a_protobuf_written_with_the_schema(tmp_path, v1):
    rng = np.random.default_rng(3)
    small = {
        'conv1': [rng.standard_normal((4, 3, 2, 2)).astype(np.float32), np.arange(4, dtype='f4')],
        'fc6': [rng.standard_normal((5, 7)).astype(np.float32), np.ones(5, np.float32)],
    }
    lrn = {'local_size': 3, 'alpha': 2e-4, 'beta': 0.5, 'k': 1.5, 'norm_region': 0}
    path = tmp_path / 'small.caffemodel'
    path.write_bytes(_caffe_net(small, v1=v1, pool_first=False, lrn=lrn))
    layers = weight_files.read_caffemodel(str(path))
    names = [layer['name'] for layer in layers]
    assert names[:4] == ['conv1', 'relu1', 'norm1', 'pool1'] and names[-1] == 'fc8'
    by_name = {layer['name']: layer for layer in layers}
    assert by_name['norm1']['type'] == 'LRN' and by_name['conv3']['type'] == 'Convolution'
    for key, expected in lrn.items():
        assert by_name['norm1']['lrn'][key] == pytest.approx(expected, rel=1e-6)
    assert by_name['relu1']['lrn'] is None and by_name['conv2']['blobs'] == []
    for name, arrays in small.items():
        got = by_name[name]['blobs']
        assert len(got) == len(arrays)
        for g, a in zip(got, arrays, strict=True):
            np.testing.assert_array_equal(g.reshape(a.shape), a)
            if not v1:
                assert g.shape == a.shape


def test_truncated_caffemodel_is_one_error_naming_it(tmp_path):
    blobs = {'conv1': [np.ones((4, 3, 2, 2), np.float32), np.ones(4, np.float32)]}
    data = _caffe_net(blobs, v1=False, pool_first=False)
    path = tmp_path / 'cut.caffemodel'
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(weight_files.TruncatedFileError, match='cut.caffemodel is truncated'):
        weight_files.read_caffemodel(str(path))


@pytest.fixture(scope='module')
def caffe_blobs():
    # conv1 std 0.05 on 0-255 inputs: conv1's outputs are ~100, where Caffe's LRN bites.
    return {k: list(v) for k, v in _random(CAFFE_SHAPES, seed=4, first_std=0.05).items()}


@pytest.mark.parametrize('variant', ['paper', 'caffenet'])
def test_converted_caffe_net_equals_a_numpy_caffe_forward(caffe_blobs, variant):
    pool_first = variant == 'caffenet'
    layers = [
        {'name': name, 'type': '', 'blobs': b, 'lrn': None} for name, b in caffe_blobs.items()
    ]
    norm = lambda i: {'name': f'norm{i}', 'type': 'LRN', 'blobs': [], 'lrn': dict(BVLC_LRN)}
    pool = lambda i: {'name': f'pool{i}', 'type': 'Pooling', 'blobs': [], 'lrn': None}
    pair = lambda i: [pool(i), norm(i)] if pool_first else [norm(i), pool(i)]
    layers = layers[:1] + pair(1) + layers[1:2] + pair(2) + layers[2:]
    params, found = convert.caffe_to_params(layers)
    assert found == variant  # told apart by the order of pool1 and norm1

    rng = np.random.default_rng(5)
    rgb = rng.uniform(0, 255, (2, 227, 227, 3)) - np.array([123.0, 117.0, 104.0])  # mean-free
    bgr_nchw = rgb[..., ::-1].transpose(0, 3, 1, 2)
    ref = np_caffe_alexnet(caffe_blobs, bgr_nchw, pool_first)
    # The LRN is not negligible here: without it the logits would differ grossly.
    model = models.variant(variant)
    ours = np.asarray(
        jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(
            params, rgb.astype(np.float32)
        )
    )
    assert np.std(ref) > 0.1
    assert rel_err(ours, ref) < 1e-4
    wrong_lrn = {**BVLC_LRN, 'k': 2.0}
    bad_layers = [dict(layer, lrn=wrong_lrn) if layer['lrn'] else layer for layer in layers]
    bad, _ = convert.caffe_to_params(bad_layers)
    wrong = np.asarray(jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(bad, rgb))
    assert rel_err(wrong, ref) > 1e-3  # a wrong LRN convention would be caught


def test_caffe_layers_with_wrong_shapes_are_named(caffe_blobs):
    layers = [{'name': n, 'type': '', 'blobs': b, 'lrn': None} for n, b in caffe_blobs.items()]
    layers[1] = dict(
        layers[1], blobs=[np.zeros((256, 96, 5, 5), np.float32), layers[1]['blobs'][1]]
    )
    layers = [layer for layer in layers if layer['name'] != 'fc7']
    with pytest.raises(weight_files.ConversionError) as info:
        convert.caffe_to_params(layers, path='m.caffemodel')
    assert 'missing fc7.bias, fc7.weight' in str(info.value)
    assert 'conv2.weight (256, 96, 5, 5) (expected (256, 48, 5, 5))' in str(info.value)


# --- the command, the run directory, fine-tuning ---


def _command(*args, cwd=ROOT):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    return subprocess.run(
        [sys.executable, '-m', 'alexnet_jax.convert', *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope='module')
def converted_dir(tmp_path_factory, tv_weights):
    root = tmp_path_factory.mktemp('tv')
    path = str(root / 'alexnet.safetensors')
    write_safetensors(path, tv_weights)
    workdir = str(root / 'run')
    result = _command('torchvision', path, '--workdir', workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_the_command_writes_a_run_directory_evaluate_can_restore(converted_dir, tv_weights):
    from alexnet_jax import trained

    config = trained.config_from_workdir(converted_dir)
    assert (config.model, config.image_size, config.resize_size) == ('owt', 224, 256)
    assert config.normalization == 'channel' and config.eval_crops == 1
    stats = np.load(config.pca_stats)
    np.testing.assert_allclose(stats['channel_mean'], [123.675, 116.28, 103.53], rtol=1e-6)
    np.testing.assert_allclose(stats['channel_std'], [58.395, 57.12, 57.375], rtol=1e-6)
    # load_trained_state's path, less the dataset lookup (ImageNet is not prepared here).
    state = steps.create_train_state(config, models.create_model(config), (224, 224, 3), 1)
    ckpt = checkpointing.Checkpointer(converted_dir, config, read_only=True)
    try:
        assert ckpt.steps() == [0]
        state = ckpt.restore(state)
    finally:
        ckpt.close()
    assert int(state.step) == 0
    expected = convert.torchvision_to_params(tv_weights)
    for layer, leaves in expected.items():
        for name, array in leaves.items():
            np.testing.assert_array_equal(np.asarray(state.params[layer][name]), array)
    names = os.path.join(converted_dir, 'class_names.txt')
    if os.path.exists(names):  # shipped by tensorflow_datasets
        with open(names) as f:
            lines = f.read().split()
        assert len(lines) == 1000 and lines[0] == 'n01440764'


def test_the_command_turns_bad_files_into_one_error_line(tmp_path):
    path = tmp_path / 'cut.safetensors'
    write_safetensors(str(path), {'w': np.ones((8, 8), np.float32)})
    path.write_bytes(path.read_bytes()[:40])
    for args, words in [
        (('torchvision', str(path)), 'cut.safetensors is truncated'),
        (('torchvision', str(tmp_path / 'absent.pth')), 'absent.pth does not exist'),
        (('caffe', str(path)), 'cut.safetensors'),
    ]:
        result = _command(*args, '--workdir', str(tmp_path / 'out'))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
        assert lines[0].startswith('error: ') and words in lines[0]
    assert not (tmp_path / 'out' / 'checkpoints').exists()


def test_freeze_mask_names_unknown_layers():
    config = default.get_config()
    config.freeze = 'conv1, fc9'
    with pytest.raises(ValueError, match='fc9'):
        finetune.freeze_mask(config, {'conv1': {'kernel': 0}, 'fc8': {'kernel': 0}})


def test_init_from_another_network_is_one_error(converted_dir):
    config = default.get_config()
    config.model, config.image_size, config.init_from = 'paper', 227, converted_dir
    state = steps.create_train_state(config, models.create_model(config), (227, 227, 3), 1)
    with pytest.raises(ValueError, match=r"another network.*\['conv1'\]\['kernel'\]"):
        finetune.load_initial_params(config, state)


@pytest.mark.slow  # 12 steps of the 61M-parameter owt net: ~100 s on 2 CPU cores
def test_fine_tuning_from_a_converted_checkpoint_learns_with_frozen_layers_fixed(
    tmp_path, converted_dir, tv_weights, caplog
):
    config = default.get_config()
    config.dataset, config.model, config.image_size = 'synthetic', 'owt', 224
    config.num_classes = 10  # the converted net has 1000: fc8 starts afresh
    config.synthetic_num_train, config.synthetic_num_eval = 64, 8
    config.batch_size, config.num_train_steps = 8, 12
    config.lr_schedule, config.learning_rate, config.weight_decay = 'constant', 0.003, 0.0005
    config.dropout_rate, config.pca_noise_std, config.random_flip = 0.0, 0.0, False
    config.normalization = 'channel'
    config.log_every_steps, config.eval_every_steps = 1, 1000
    config.checkpoint_every_steps, config.eval_num_examples = 12, 0
    config.init_from, config.freeze = converted_dir, 'conv1,conv2'
    workdir = str(tmp_path / 'finetune')
    with caplog.at_level(logging.INFO, logger='alexnet_jax.finetune'):
        train.train_and_evaluate(config, workdir)
    reinit = [r.getMessage() for r in caplog.records if 're-initialised' in r.getMessage()]
    assert reinit == [f'fc8 re-initialised: 10 classes here, 1000 in {converted_dir}.']

    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        losses = [row['train_loss'] for row in map(json.loads, f) if 'train_loss' in row]
    assert len(losses) >= 10
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses

    from alexnet_jax import trained

    final = trained.load_trained_state(config, workdir)
    source = convert.torchvision_to_params(tv_weights)  # what the converted checkpoint holds
    for layer in ('conv1', 'conv2'):  # frozen: bit for bit
        for name in ('kernel', 'bias'):
            assert np.asarray(final.params[layer][name]).tobytes() == source[layer][name].tobytes()
    assert not np.array_equal(final.params['conv3']['kernel'], source['conv3']['kernel'])
    assert final.params['fc8']['kernel'].shape == (4096, 10)


def test_frozen_layers_have_no_optimizer_state_and_decay_skips_them():
    config = default.get_config()
    config.freeze, config.weight_decay = 'conv1', 0.5
    params = {
        'conv1': {'kernel': np.ones(3, np.float32)},
        'fc8': {'kernel': np.ones(2, np.float32)},
    }
    tx = optim.make_optimizer(config, params, 10)
    state = tx.init(params)
    zeros = jax.tree.map(np.zeros_like, params)
    updates, state = tx.update(zeros, state, params)
    np.testing.assert_array_equal(updates['conv1']['kernel'], 0.0)
    # fc8 is decayed: -lr * wd * w
    np.testing.assert_allclose(updates['fc8']['kernel'], -0.01 * 0.5, rtol=1e-6)
    assert float(optim.current_learning_rate(state)) == pytest.approx(0.01)


def test_predict_on_a_converted_run_needs_no_prepared_imagenet(tmp_path, converted_dir):
    """`predict` takes the class names from the run directory, not from tfds's imagenet2012."""
    from PIL import Image

    image = tmp_path / 'photo.png'
    pixels = np.random.default_rng(3).integers(0, 255, (300, 260, 3), np.uint8)
    Image.fromarray(pixels).save(image)
    empty_tfds = tmp_path / 'tfds'  # no dataset prepared anywhere
    proc = subprocess.run(
        [sys.executable, '-m', 'alexnet_jax.predict', f'--workdir={converted_dir}', '--json']
        + [str(image)],
        cwd=ROOT,
        env=dict(os.environ, TFDS_DATA_DIR=str(empty_tfds)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    top = json.loads(proc.stdout.strip().splitlines()[0])['top']
    names = (Path(converted_dir) / 'class_names.txt').read_text().split()
    assert [entry['name'] for entry in top] == [names[entry['class']] for entry in top]
    assert all(name.startswith('n') for name in names[:5]) and len(names) == 1000
