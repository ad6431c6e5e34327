"""The weight files pretrained AlexNets come in, read without their frameworks.

``read_state_dict`` reads a PyTorch state dict from ``.safetensors`` (parsed by hand) or a
``torch.save`` file (``torch.load(weights_only=True)``, which refuses anything but tensors and
plain containers); ``read_caffemodel`` reads a Caffe ``NetParameter`` from the protobuf wire format
by hand. Nothing is unpickled. ``convert.py`` maps what they return onto this project's network.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    'ConversionError',
    'TruncatedFileError',
    'check_exists',
    'read_caffemodel',
    'read_safetensors',
    'read_state_dict',
    'read_torch',
]


class ConversionError(ValueError):
    """A weights file that does not hold the network it should, or cannot be mapped exactly."""


class TruncatedFileError(ValueError):
    """A weights file that ends before the data its own header announces."""


# --- safetensors (https://github.com/huggingface/safetensors, "Format") ---

# dtype name -> numpy little-endian dtype; BF16 is widened to float32 by hand.
_SAFETENSORS_DTYPES = {
    'F64': '<f8',
    'F32': '<f4',
    'F16': '<f2',
    'BF16': '<u2',
    'I64': '<i8',
    'I32': '<i4',
    'I16': '<i2',
    'I8': 'i1',
    'U8': 'u1',
    'BOOL': '?',
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Tensors of a ``.safetensors`` file: an 8-byte little-endian header length, a JSON header
    (name -> dtype, shape, [begin, end) byte offsets into the data after it), raw data."""
    with open(path, 'rb') as f:
        data = f.read()
    if len(data) < 8:
        raise TruncatedFileError(f'{path} is truncated: {len(data)} bytes, no safetensors header.')
    (header_len,) = struct.unpack('<Q', data[:8])
    if 8 + header_len > len(data):
        raise TruncatedFileError(
            f'{path} is truncated (or not safetensors): its header announces {header_len} bytes, '
            f'the file has {len(data) - 8} after the length.'
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(
            f'{path} is not a safetensors file: its header is not JSON ({error}).'
        ) from None
    if not isinstance(header, dict):
        raise ConversionError(f'{path} is not a safetensors file: its header is not a JSON object.')
    header.pop('__metadata__', None)
    base = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        try:
            dtype, shape = _SAFETENSORS_DTYPES[entry['dtype']], tuple(entry['shape'])
            begin, end = entry['data_offsets']
        except (KeyError, TypeError, ValueError):
            raise ConversionError(
                f'{path}: tensor {name!r} has an unreadable entry {entry!r}.'
            ) from None
        count = math.prod(shape)
        if end - begin != count * np.dtype(dtype).itemsize or begin < 0:
            raise ConversionError(
                f'{path}: tensor {name!r} spans {end - begin} bytes, its {entry["dtype"]} shape '
                f'{list(shape)} needs {count * np.dtype(dtype).itemsize}.'
            )
        if base + end > len(data):
            raise TruncatedFileError(
                f'{path} is truncated: tensor {name!r} ends at byte {base + end}, the file has '
                f'{len(data)}.'
            )
        array = np.frombuffer(data, dtype, count, offset=base + begin).reshape(shape)
        if entry['dtype'] == 'BF16':  # bfloat16 is the upper half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = array
    return tensors


# --- PyTorch .pth ---


def read_torch(path: str) -> dict[str, np.ndarray]:
    """A ``torch.save``-d state dict, loaded with ``weights_only=True`` (never executes code)."""
    try:
        import torch
    except ImportError:
        raise ConversionError(
            f'{path}: reading a .pth file needs PyTorch (pip install torch), which this '
            f'environment lacks; or convert it elsewhere to .safetensors, which is read without it.'
        ) from None
    try:
        loaded = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(
            f"{path} is not a plain state dict: PyTorch's weights-only loader refused it "
            f'({first}). Nothing in it was executed.'
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TruncatedFileError(f'{path} is truncated or damaged ({first}).') from None
    if not isinstance(loaded, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        kind = type(loaded).__name__
        raise ConversionError(
            f'{path} holds a {kind}, not a state dict of tensors (name -> tensor); save '
            f'model.state_dict().'
        )
    return {str(k): v.detach().to(torch.float32).numpy() for k, v in loaded.items()}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A state dict from ``.safetensors`` (read by hand) or a ``torch.save`` file."""
    check_exists(path)
    if path.endswith('.safetensors'):
        return read_safetensors(path)
    return read_torch(path)


def check_exists(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} does not exist (or is not a file).')


# --- Caffe .caffemodel: a NetParameter protobuf, read from the wire format by hand ---

# Field numbers from BVLC Caffe's src/caffe/proto/caffe.proto.
_NET_LAYERS_V1, _NET_LAYER = 2, 100  # NetParameter: repeated V1LayerParameter / LayerParameter
_V2_NAME, _V2_TYPE, _V2_BLOBS, _V2_LRN = 1, 2, 7, 118  # LayerParameter
_V1_NAME, _V1_TYPE, _V1_BLOBS, _V1_LRN = 4, 5, 6, 18  # V1LayerParameter (type is an enum)
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4  # BlobProto, 4-D (old)
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8  # BlobProto
_SHAPE_DIM = 1  # BlobShape: repeated int64 dim (packed)
_LRN_SIZE, _LRN_ALPHA, _LRN_BETA, _LRN_REGION, _LRN_K = 1, 2, 3, 4, 5  # LRNParameter
_V1_TYPE_NAMES = {4: 'Convolution', 14: 'InnerProduct', 15: 'LRN', 17: 'Pooling', 18: 'ReLU'}
# LRNParameter's defaults (caffe.proto), for fields a file leaves out.
CAFFE_LRN_DEFAULTS = {'local_size': 5, 'alpha': 1.0, 'beta': 0.75, 'k': 1.0, 'norm_region': 0}


class _Truncated(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise _Truncated
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError('a varint longer than 10 bytes')


def _fields(buf: memoryview):
    """(field number, wire type, value) of a message: ints for varint/fixed, views for bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:  # varint
            value, pos = _varint(buf, pos)
        elif wire == 1:  # 64-bit
            if pos + 8 > len(buf):
                raise _Truncated
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:  # length-delimited: bytes, strings, messages, packed repeated
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise _Truncated
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:  # 32-bit
            if pos + 4 > len(buf):
                raise _Truncated
            value, pos = buf[pos : pos + 4], pos + 4
        else:  # groups (3, 4) are not used by caffe.proto
            raise ValueError(f'wire type {wire} (field {number})')
        if number == 0:
            raise ValueError('field number 0')
        yield number, wire, value


def _packed_varints(value: Any, wire: int) -> list[int]:
    if wire == 0:
        return [value]
    out, pos = [], 0
    while pos < len(value):
        number, pos = _varint(value, pos)
        out.append(number)
    return out


def _blob(buf: memoryview) -> np.ndarray:
    dims, old_dims, chunks = None, {}, []
    for number, wire, value in _fields(buf):
        if number == _BLOB_SHAPE and wire == 2:
            shape = [_packed_varints(v, w) for n, w, v in _fields(value) if n == _SHAPE_DIM]
            dims = [d for chunk in shape for d in chunk]
        elif number in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH) and wire == 0:
            old_dims[number] = value
        elif number == _BLOB_DATA:  # packed floats, or one unpacked float (wire type 5)
            chunks.append(np.frombuffer(value, '<f4'))
        elif number == _BLOB_DOUBLE_DATA:
            chunks.append(np.frombuffer(value, '<f8').astype(np.float32))
    if dims is None:  # pre-2015 files: num, channels, height, width (defaults 0)
        dims = [old_dims.get(n, 0) for n in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH)]
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if data.size != math.prod(dims):
        raise ValueError(f'a blob of shape {dims} holds {data.size} values')
    return data.reshape(dims)


def _lrn_param(buf: memoryview) -> dict[str, float]:
    names = {_LRN_SIZE: 'local_size', _LRN_REGION: 'norm_region'}
    floats = {_LRN_ALPHA: 'alpha', _LRN_BETA: 'beta', _LRN_K: 'k'}
    out = dict(CAFFE_LRN_DEFAULTS)
    for number, wire, value in _fields(buf):
        if number in names and wire == 0:
            out[names[number]] = value
        elif number in floats and wire == 5:
            out[floats[number]] = struct.unpack('<f', value)[0]
    return out


def _layer(buf: memoryview, v1: bool) -> dict[str, Any]:
    name_f, type_f, blobs_f, lrn_f = (
        (_V1_NAME, _V1_TYPE, _V1_BLOBS, _V1_LRN) if v1 else (_V2_NAME, _V2_TYPE, _V2_BLOBS, _V2_LRN)
    )
    layer = {'name': '', 'type': '', 'blobs': [], 'lrn': None}
    for number, wire, value in _fields(buf):
        if number == name_f and wire == 2:
            layer['name'] = bytes(value).decode('utf-8', 'replace')
        elif number == type_f:
            if v1 and wire == 0:
                layer['type'] = _V1_TYPE_NAMES.get(value, f'V1 type {value}')
            elif wire == 2:
                layer['type'] = bytes(value).decode('utf-8', 'replace')
        elif number == blobs_f and wire == 2:
            layer['blobs'].append(_blob(value))
        elif number == lrn_f and wire == 2:
            layer['lrn'] = _lrn_param(value)
    return layer


def read_caffemodel(path: str) -> list[dict[str, Any]]:
    """The layers of a ``.caffemodel`` (a binary ``NetParameter``), in file order.

    Each layer: ``name``, ``type`` (``'Convolution'``, ``'LRN'``, ...), ``blobs`` (float32
    arrays in Caffe's shapes) and ``lrn`` (an LRN layer's parameters with Caffe's defaults, else
    None). Reads both the current ``layer`` field and the deprecated V1 ``layers``.
    """
    check_exists(path)
    with open(path, 'rb') as f:
        buf = memoryview(f.read())
    layers = []
    try:
        for number, wire, value in _fields(buf):
            if number in (_NET_LAYER, _NET_LAYERS_V1) and wire == 2:
                layers.append(_layer(value, v1=number == _NET_LAYERS_V1))
    except _Truncated:
        raise TruncatedFileError(
            f'{path} is truncated: a protobuf field runs past the end of the file '
            f'({len(buf)} bytes).'
        ) from None
    except ValueError as error:
        raise ConversionError(f'{path} is not a readable Caffe NetParameter ({error}).') from None
    if not layers:
        raise ConversionError(f'{path} holds no Caffe layers: not a .caffemodel.')
    return layers
