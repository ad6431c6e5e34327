"""The AlexNet family as one Flax module: the 2012 paper by default, its shortcuts as variants.

Layer names follow Caffe's (``conv1`` ... ``conv5``, ``fc6``, ``fc7``, ``fc8``) so checkpoints
read like the paper and convert to other frameworks. Kernels are HWIO, as Flax stores them.

Variants are presets of the switches on :class:`AlexNet`; any switch left ``None`` takes the
variant's value. Every variant, its input size and its parameter count (1000 classes):

  paper         227  60,965,224  the two-GPU net of Figure 2: conv2/4/5 in two towers (groups=2)
  single_tower  227  62,378,344  the same without towers (the two tutorials' net)
  caffenet      227  60,965,224  Caffe's reference: max-pool before LRN instead of after
  owt           224  61,100,840  "one weird trick" (torchvision): 64-192-384-256-256, no LRN
  bn            227  62,381,096  the tf.keras tutorial: BatchNorm after every conv, no towers
  small       28/32              five convs and three FCs scaled down for Fashion-MNIST/CIFAR-10
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexnet_jax.lrn import LRN
from alexnet_jax.ops import add_bias, dense, max_pool, split_grouped_conv

NORMS = ('lrn', 'bn', 'none')
POOLINGS = ('overlapping', 'non_overlapping')
ACTIVATIONS = ('relu', 'tanh')
INITS = ('paper', 'modern')


@dataclasses.dataclass(frozen=True)
class Conv:
    features: int
    kernel: int
    stride: int = 1
    padding: int | str = 'SAME'  # an int pads that many pixels on every side


@dataclasses.dataclass(frozen=True)
class Spec:
    """One variant: the fixed geometry plus the default of every switch."""

    convs: tuple[Conv, Conv, Conv, Conv, Conv]
    hidden: int  # width of fc6 and fc7
    input_sizes: tuple[int, ...]  # the square input sizes the FC layers accept
    pool_padding: tuple[str, str, str] = ('VALID', 'VALID', 'VALID')
    norm: str = 'lrn'
    norm_layers: tuple[int, ...] = (1, 2)  # Section 3.3: after conv1 and conv2
    norm_after_pool: bool = False  # caffenet pools first
    pooling: str = 'overlapping'
    activation: str = 'relu'
    dropout_rate: float = 0.5
    dropout_before_fc: bool = False  # torchvision drops fc6/fc7's *inputs*; the paper their outputs
    groups: int = 2
    init_scheme: str = 'paper'


# Section 3.5 / Figure 2. conv1 has no padding: 11x11 at stride 4 gives 55x55 only from a 227
# input ((227 - 11) / 4 + 1 = 55); the paper's "224" gives 54.25. torchvision instead pads 2.
_PAPER_CONVS = (
    Conv(96, 11, 4, 'VALID'),
    Conv(256, 5, 1, 2),
    Conv(384, 3, 1, 1),
    Conv(384, 3, 1, 1),
    Conv(256, 3, 1, 1),
)

VARIANTS: dict[str, Spec] = {
    'paper': Spec(_PAPER_CONVS, 4096, (227,)),
    'single_tower': Spec(_PAPER_CONVS, 4096, (227,), groups=1),
    'caffenet': Spec(_PAPER_CONVS, 4096, (227,), norm_after_pool=True),
    'owt': Spec(
        (Conv(64, 11, 4, 2), Conv(192, 5, 1, 2), Conv(384, 3), Conv(256, 3), Conv(256, 3)),
        4096,
        (224,),
        norm='none',
        groups=1,
        dropout_before_fc=True,
    ),
    'bn': Spec(_PAPER_CONVS, 4096, (227,), norm='bn', norm_layers=(1, 2, 3, 4, 5), groups=1),
    # 28x28 (Fashion-MNIST) or 32x32 (CIFAR-10): conv1 shrinks from 11x11/4 to 5x5/1 because the
    # image is 8x smaller than the paper's; widths are a third of the paper's so that an epoch of
    # Fashion-MNIST takes minutes on two CPU cores. Pools 1 and 2 pad (28 -> 14 -> 7), pool5 does
    # not (7 -> 3), so the towers, LRN placement and three pools stay where the paper has them.
    'small': Spec(
        (Conv(32, 5), Conv(64, 5), Conv(96, 3), Conv(96, 3), Conv(64, 3)),
        512,
        (28, 32),
        pool_padding=('SAME', 'SAME', 'VALID'),
        init_scheme='modern',
    ),
}


def _check_choice(name: str, value: Any, accepted: Sequence[Any]) -> None:
    if value not in accepted:
        raise ValueError(f'Unknown {name} {value!r}; accepted: {", ".join(map(repr, accepted))}.')


def resolve_spec(variant: str, **switches: Any) -> Spec:
    """The variant's preset with every switch that is not None applied, checked."""
    _check_choice('model variant', variant, tuple(VARIANTS))
    overrides = {k: v for k, v in switches.items() if v is not None}
    spec = dataclasses.replace(VARIANTS[variant], **overrides)
    _check_choice('norm', spec.norm, NORMS)
    _check_choice('pooling', spec.pooling, POOLINGS)
    _check_choice('activation', spec.activation, ACTIVATIONS)
    _check_choice('init_scheme', spec.init_scheme, INITS)
    _check_choice('groups', spec.groups, (1, 2))
    if not 0.0 <= spec.dropout_rate < 1.0:
        raise ValueError(f'dropout_rate must be in [0, 1), got {spec.dropout_rate}.')
    return spec


# Section 5: "We initialized the weights in each layer from a zero-mean Gaussian distribution
# with standard deviation 0.01. We initialized the neuron biases in the second, fourth, and fifth
# convolutional layers, as well as in the fully-connected hidden layers, with the constant 1."
_PAPER_BIAS_ONE = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')


def _initializers(init: str, name: str) -> tuple[Any, Any]:
    if init == 'paper':
        bias = 1.0 if name in _PAPER_BIAS_ONE else 0.0
        return nn.initializers.normal(0.01), nn.initializers.constant(bias)
    # 'modern': He et al. (2015) for layers followed by a ReLU, LeCun for the logits.
    kernel = nn.initializers.lecun_normal() if name == 'fc8' else nn.initializers.he_normal()
    return kernel, nn.initializers.zeros


class Conv2D(nn.Module):
    """``nn.Conv``'s parameters (``kernel`` HWIO, ``bias``) and result, built from ``ops``.

    The same names, shapes and initial values as ``nn.Conv``, so checkpoints are unchanged; the
    convolution and the bias add are the CPU-friendly ones in ``ops.py``.
    """

    features: int
    kernel_size: int
    strides: int = 1
    padding: str | Sequence[tuple[int, int]] = 'SAME'
    feature_group_count: int = 1
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    dtype: Any = jnp.float32
    split_groups: bool = True  # run groups as separate convolutions (see split_grouped_conv)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, groups = self.kernel_size, self.feature_group_count
        shape = (k, k, x.shape[-1] // groups, self.features)
        kernel = self.param('kernel', self.kernel_init, shape, jnp.float32)
        bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        conv = split_grouped_conv if self.split_groups else jax.lax.conv_general_dilated
        y = conv(
            x,
            kernel,
            (self.strides, self.strides),
            self.padding,
            feature_group_count=groups,
            dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        )
        return add_bias(y, bias)


class Dense(nn.Module):
    """``nn.Dense``'s parameters (``kernel`` [in, out], ``bias``) and result, built from ``ops``.

    Same names, shapes and initial values as ``nn.Dense``; the product and the bias add are the
    CPU-friendly ones in ``ops.py``.
    """

    features: int
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return add_bias(dense(x, kernel), bias)


class AlexNet(nn.Module):
    """AlexNet on NHWC images; ``apply(variables, images, train=...)`` returns float32 logits.

    Named activations (``conv1`` ... ``conv5`` after their ReLU, ``pool1``, ``pool2``, ``pool5``,
    ``fc6``, ``fc7``) are sown as one dict, ``intermediates/stages``:
    ``apply(..., mutable=['intermediates'])`` returns them.
    """

    variant: str = 'paper'
    num_classes: int = 1000
    norm: str | None = None
    pooling: str | None = None
    activation: str | None = None
    dropout_rate: float | None = None
    groups: int | None = None
    init_scheme: str | None = None
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32
    split_groups: bool = True  # run towers as separate convolutions (see split_grouped_conv)
    bn_axis_name: str | None = None  # set by the pmapped step so BatchNorm averages over devices

    @property
    def spec(self) -> Spec:
        return resolve_spec(
            self.variant,
            norm=self.norm,
            pooling=self.pooling,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            groups=self.groups,
            init_scheme=self.init_scheme,
        )

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        spec = self.spec
        if images.ndim != 4 or images.shape[1] != images.shape[2]:
            raise ValueError(f'AlexNet takes square NHWC images, got shape {images.shape}.')
        if images.shape[1] not in spec.input_sizes:
            raise ValueError(
                f'Variant {self.variant!r} takes {" or ".join(map(str, spec.input_sizes))}-pixel '
                f'inputs (so that pool5 matches fc6), got {images.shape[1]}x{images.shape[2]}; '
                f'set config.image_size accordingly.'
            )
        act = nn.relu if spec.activation == 'relu' else jnp.tanh
        window, stride = (3, 2) if spec.pooling == 'overlapping' else (2, 2)  # Section 3.4
        pools = dict(zip((1, 2, 5), spec.pool_padding, strict=True))

        stages = {}  # named activations, sown at the end for probes and figures
        x = images.astype(self.dtype)
        for i, conv in enumerate(spec.convs, start=1):
            name = f'conv{i}'
            kernel_init, bias_init = _initializers(spec.init_scheme, name)
            padding = conv.padding
            if isinstance(padding, int):
                padding = [(padding, padding), (padding, padding)]
            # Section 3.2: conv2, conv4 and conv5 see only their own tower's half of the input.
            x = Conv2D(
                conv.features,
                conv.kernel,
                strides=conv.stride,
                padding=padding,
                feature_group_count=spec.groups if i in (2, 4, 5) else 1,
                kernel_init=kernel_init,
                bias_init=bias_init,
                dtype=self.dtype,
                split_groups=self.split_groups,
                name=name,
            )(x)
            x = act(x)
            stages[name] = x
            normalize = spec.norm != 'none' and i in spec.norm_layers
            if normalize and not spec.norm_after_pool:
                x = self._normalize(spec.norm, i, x, train)
            if i in pools:
                if spec.pooling == 'non_overlapping' and pools[i] == 'VALID':
                    # Section 3.4 compares pools of equal output size: keep as many 2x2/2
                    # windows as 3x3/2 ones would have (only matters for even sizes: 8 -> 3).
                    n = 2 * ((x.shape[1] - 1) // 2)
                    x = x[:, :n, :n]
                x = max_pool(x, window, stride, padding=pools[i])
                stages[f'pool{i}'] = x
            if normalize and spec.norm_after_pool:
                x = self._normalize(spec.norm, i, x, train)

        x = x.reshape(x.shape[0], -1)
        for name in ('fc6', 'fc7'):
            kernel_init, bias_init = _initializers(spec.init_scheme, name)
            if spec.dropout_before_fc:
                x = nn.Dropout(spec.dropout_rate, deterministic=not train)(x)
            x = Dense(
                spec.hidden,
                kernel_init=kernel_init,
                bias_init=bias_init,
                dtype=self.dtype,
                name=name,
            )(x)
            x = act(x)
            stages[name] = x
            if not spec.dropout_before_fc:  # Section 4.2: drop the hidden neurons' outputs
                x = nn.Dropout(spec.dropout_rate, deterministic=not train)(x)
        kernel_init, bias_init = _initializers(spec.init_scheme, 'fc8')
        x = Dense(
            self.num_classes,
            kernel_init=kernel_init,
            bias_init=bias_init,
            dtype=self.dtype,
            name='fc8',
        )(x)
        self.sow('intermediates', 'stages', stages)
        return x.astype(jnp.float32)

    def _normalize(self, norm: str, layer: int, x: jax.Array, train: bool) -> jax.Array:
        if norm == 'lrn':  # Section 3.3's constants
            return LRN(size=5, k=2.0, alpha=1e-4, beta=0.75, name=f'norm{layer}')(x)
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            axis_name=self.bn_axis_name if train else None,
            dtype=self.dtype,
            name=f'bn{layer}',
        )(x)


def create_model(config: Any, *, dtype: Any = jnp.float32) -> AlexNet:
    """The model a config names (``config.model`` and the switch fields)."""
    return AlexNet(
        variant=config.model,
        num_classes=config.num_classes,
        norm=config.norm,
        pooling=config.pooling,
        activation=config.activation,
        dropout_rate=config.dropout_rate,
        groups=config.groups,
        init_scheme=config.init_scheme,
        dtype=dtype,
    )


def param_count(params: Any) -> int:
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
