"""Convolutions on CPU through oneDNN (what PyTorch's CPU convolutions use), as XLA FFI calls.

XLA:CPU in JAX 0.10.2 runs convolutions with Eigen (or YNNPACK), 1.2-2.3x slower than oneDNN's
on AlexNet's layers (``experiments/logs/2026-12-03-vm-issue19/layers.log``); XLA's own oneDNN
switch no longer reaches convolutions. :func:`conv` has ``lax.conv_general_dilated``'s signature,
so it drops into ``nn.Conv``; its forward pass, input gradient and kernel gradient are three
oneDNN primitives in ``onednn_conv.cc``, compiled here on first use against the system's oneDNN
(Debian/Ubuntu: ``apt-get install g++ libdnnl-dev``) and cached by source and jaxlib version.
float32, NHWC/HWIO, no dilation; anything else goes to ``lax.conv_general_dilated``. The 3x3
stride-1 convolutions (conv3-5) run Winograd's algorithm where oneDNN has it (AVX-512) and its
scratchpad is small enough (``onednn_conv.cc``): the training step 1.06-1.11x faster than with
oneDNN's direct kernels alone, which PyTorch runs (``ALEXNET_JAX_WINOGRAD=0`` turns it off;
``experiments/logs/2026-12-04-vm-issue19-wino/``). Below AVX-512 (no Winograd there) the 3x3
convolutions go to XLA, whose kernels beat oneDNN's direct ones there (:func:`conv`).
"""

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'onednn_conv.cc')
ENABLE_ENV = 'ALEXNET_JAX_ONEDNN'  # '0': XLA's convolutions even where oneDNN's build
CACHE_ENV = 'ALEXNET_JAX_CACHE'  # where the compiled library goes (default ~/.cache/alexnet_jax)
WINOGRAD_ENV = 'ALEXNET_JAX_WINOGRAD'  # '0': direct kernels for 3x3 too (read in onednn_conv.cc)
_TARGETS = {  # FFI target name -> symbol in the library
    'alexnet_onednn_conv_forward': 'OnednnConvForward',
    'alexnet_onednn_conv_input_grad': 'OnednnConvInputGrad',
    'alexnet_onednn_conv_kernel_grad': 'OnednnConvKernelGrad',
}
_NHWC = ('NHWC', 'HWIO', 'NHWC')
_AVX512_CORE = 0x27  # dnnl_cpu_isa_avx512_core: every instruction set above it has its bits
log = logging.getLogger(__name__)


class Unavailable(RuntimeError):
    """oneDNN's convolutions cannot be built or loaded here."""


def _cache_dir() -> str:
    default = os.path.join(os.path.expanduser('~'), '.cache', 'alexnet_jax')
    return os.environ.get(CACHE_ENV, default)


def build() -> str:
    """Compiles ``onednn_conv.cc`` once per source and jaxlib version; returns the library."""
    with open(SOURCE, 'rb') as f:
        digest = hashlib.sha256(f.read() + jaxlib.__version__.encode()).hexdigest()[:16]
    path = os.path.join(_cache_dir(), f'onednn_conv-{digest}.so')
    if os.path.exists(path):
        return path
    compiler = os.environ.get('CXX', 'g++')
    if shutil.which(compiler) is None:
        raise Unavailable(f'no C++ compiler ({compiler}): apt-get install g++ libdnnl-dev')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
    os.close(fd)
    command = [compiler, '-O2', '-std=c++17', '-shared', '-fPIC', '-w']
    command += [f'-I{jax.ffi.include_dir()}', SOURCE, '-ldnnl', '-o', tmp]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        os.remove(tmp)
        last = result.stderr.strip().splitlines()[-1:] or ['']
        raise Unavailable(f'building {SOURCE} failed ({last[0]}): apt-get install libdnnl-dev')
    os.replace(tmp, path)  # whole or not at all, also with several processes building at once
    return path


@functools.cache
def _library() -> ctypes.CDLL:
    """The compiled library, built if needed and loaded once per process."""
    try:
        return ctypes.cdll.LoadLibrary(build())
    except OSError as error:
        raise Unavailable(f'loading the oneDNN convolutions failed: {error}') from error


@functools.cache
def load() -> None:
    """Builds the library if needed and registers its handlers with XLA (once per process)."""
    library = _library()
    for target, symbol in _TARGETS.items():
        capsule = jax.ffi.pycapsule(getattr(library, symbol))
        jax.ffi.register_ffi_target(target, capsule, platform='cpu')


class Implementations(NamedTuple):
    """What oneDNN runs for each part of one convolution: its kernel's name and the images each
    call takes (``'jit_wino_4x3:avx512_core x8'``: Winograd's, 8 images a call)."""

    forward: str
    input_grad: str
    kernel_grad: str


def implementations(
    x_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
) -> Implementations:
    """What runs the convolution of these shapes (``x_shape`` NHWC, ``kernel_shape`` HWIO,
    ``padding`` ((top, bottom), (left, right))): for logs and tests."""
    (top, bottom), (left, right) = padding
    n, h, w, c = x_shape
    kh, kw, _, o = kernel_shape
    oh = (h + top + bottom - kh) // strides[0] + 1
    ow = (w + left + right - kw) // strides[1] + 1
    geometry = (n, h, w, c, kh, kw, o, oh, ow, *strides, top, bottom, left, right)
    values = (ctypes.c_int64 * len(geometry))(*geometry)
    out = ctypes.create_string_buffer(512)
    if _library().OnednnConvImplementations(values, out, ctypes.c_int64(len(out))) != 0:
        raise Unavailable(out.value.decode())
    return Implementations(*out.value.decode().split(' | '))


@functools.cache
def runs_avx512() -> bool:
    """Whether oneDNN runs its AVX-512 kernels here (read once: ``ONEDNN_MAX_CPU_ISA`` caps it)."""
    return _library().dnnl_get_effective_cpu_isa() & _AVX512_CORE == _AVX512_CORE


def enabled() -> bool:
    """Whether the model's CPU convolutions run here: they build and load, and are not turned off.

    ``ALEXNET_JAX_ONEDNN=0`` keeps XLA's convolutions. Where they cannot be built, XLA's are used
    and a warning says why and how to install what is missing.
    """
    if os.environ.get(ENABLE_ENV, '1') == '0':
        return False
    try:
        load()
    except Unavailable as error:
        _warn_once(str(error))
        return False
    return True


@functools.cache
def _warn_once(reason: str) -> None:
    log.warning("oneDNN's convolutions are off (%s); XLA's run instead, slower on CPU.", reason)


def conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    **kwargs: Any,
) -> jax.Array:
    """``lax.conv_general_dilated`` with float32 NHWC/HWIO 2-D convolutions run by oneDNN.

    Grouped convolutions run each group as its own convolution (``ops.split_grouped_conv``).
    Call :func:`load` once before tracing.
    """
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers)
    plain = (
        lhs.ndim == 4
        and tuple(dimension_numbers or ()) == _NHWC
        and lhs.dtype == rhs.dtype == jnp.float32
        and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
        and not kwargs.get('preferred_element_type')
    )
    if not plain:
        return jax.lax.conv_general_dilated(
            *args, feature_group_count=feature_group_count, **kwargs
        )
    if feature_group_count > 1:
        xs = jnp.split(lhs, feature_group_count, axis=-1)
        ws = jnp.split(rhs, feature_group_count, axis=-1)
        outs = [conv(x, w, *args[2:]) for x, w in zip(xs, ws, strict=True)]
        return jnp.concatenate(outs, axis=-1)
    if rhs.shape[:2] == (3, 3) and tuple(window_strides) == (1, 1) and not runs_avx512():
        # Below AVX-512 oneDNN 2.6 has no float32 Winograd, and XLA's 3x3 convolutions beat its
        # direct kernels: oneDNN took 1.03-1.46x XLA's time in every part of conv3-5 with its
        # instruction set capped at AVX2; conv1 and conv2 stay in oneDNN, 0.57-1.05x XLA's time
        # (experiments/benchmarks/conv_choice.py; RESULTS.md, issue 19).
        return jax.lax.conv_general_dilated(*args, **kwargs)
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    (top, bottom), (left, right) = padding
    geometry = (*window_strides, top, bottom, left, right)
    return _conv(lhs, rhs, tuple(int(v) for v in geometry))


def _attributes(geometry: tuple[int, ...]) -> dict[str, np.int64]:
    names = ('stride_h', 'stride_w', 'pad_top', 'pad_bottom', 'pad_left', 'pad_right')
    return {name: np.int64(v) for name, v in zip(names, geometry, strict=True)}


def _call(target: str, shape: tuple[int, ...], a: jax.Array, b: jax.Array, geometry) -> jax.Array:
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    call = jax.ffi.ffi_call(target, out, vmap_method='sequential')
    return call(a, b, **_attributes(geometry))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: jax.Array, kernel: jax.Array, geometry: tuple[int, ...]) -> jax.Array:
    sh, sw, top, bottom, left, right = geometry
    kh, kw, _, out = kernel.shape
    oh = (x.shape[1] + top + bottom - kh) // sh + 1
    ow = (x.shape[2] + left + right - kw) // sw + 1
    shape = (x.shape[0], oh, ow, out)
    return _call('alexnet_onednn_conv_forward', shape, x, kernel, geometry)


def _conv_fwd(x, kernel, geometry):
    return _conv(x, kernel, geometry), (x, kernel)


def _conv_bwd(geometry, residuals, g):
    x, kernel = residuals
    sh, sw, top, bottom, left, right = geometry
    kh, kw = kernel.shape[:2]
    if sh == sw == 1 and max(top, bottom) < kh and max(left, right) < kw:
        # A stride-1 input gradient is a forward convolution of g with the kernel flipped in
        # space and its channels swapped, padded by the rest of the window; oneDNN's forward
        # kernels run it faster than its input-gradient kernels (oneDNN 2.6, AVX-512).
        flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
        padding = (1, 1, kh - 1 - top, kh - 1 - bottom, kw - 1 - left, kw - 1 - right)
        dx = _conv(g, flipped, padding)
    else:
        dx = _call('alexnet_onednn_conv_input_grad', x.shape, g, kernel, geometry)
    dkernel = _call('alexnet_onednn_conv_kernel_grad', kernel.shape, x, g, geometry)
    return dx, dkernel


_conv.defvjp(_conv_fwd, _conv_bwd)
