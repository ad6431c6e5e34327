"""The AlexNet family as one Flax module: the 2012 paper by default, its shortcuts as variants.

Layer names follow Caffe's (``conv1`` ... ``conv5``, ``fc6``, ``fc7``, ``fc8``) so checkpoints
read like the paper and convert to other frameworks. Kernels are HWIO, as Flax stores them.

:class:`AlexNet` holds the geometry as plain attributes and takes its layers injected (conv,
dense, pooling, normalisation, activation, dropout, initialisers, the exchange between towers;
see ``layers.py``); it never interprets a config string. :func:`from_spec` turns a resolved
:class:`~alexnet_jax.specs.ModelSpec` into the module, once. The variants (their table is in
``specs.py``) are module-level presets: ``models.paper(num_classes=10)``, ``models.small(norm=
'bn')``, ... each a partial of :func:`variant`. Parameter counts (1000 classes):

  paper         227  60,965,224  the two-GPU net of Figure 2: conv2/4/5 in two towers (groups=2)
  single_tower  227  62,378,344  the same without towers (the two tutorials' net)
  caffenet      227  60,965,224  Caffe's reference: max-pool before LRN instead of after
  owt           224  61,100,840  "one weird trick" (torchvision): 64-192-384-256-256, no LRN
  bn            227  62,381,096  the tf.keras tutorial: BatchNorm after every conv, no towers
  small       28/32              five convs and three FCs scaled down for Fashion-MNIST/CIFAR-10

``half_kernels=True`` (with ``groups=1``) is Section 3.2's one-GPU baseline: conv1-conv4 with half
their kernels, conv5 and the FC layers full (paper geometry: 59,798,312 parameters).

The two-device towers of Section 3.2 (``towers.py``) run this same module inside
``jax.shard_map``, given the tower versions of conv, dense, dropout and the exchange.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from alexnet_jax import layers, specs
from alexnet_jax.specs import Conv

GROUPED_LAYERS = (2, 4, 5)  # Section 3.2: these see only their own tower's half of the input
POOLED_LAYERS = (1, 2, 5)  # Section 3.4 / Figure 2: max-pooling after conv1, conv2 and conv5


class AlexNet(nn.Module):
    """AlexNet on NHWC images; ``apply(variables, images, train=...)`` returns float32 logits.

    The defaults are the paper's net with lax's own kernels. Named activations (``conv1`` ...
    ``conv5`` after their activation, ``pool1``, ``pool2``, ``pool5``, ``fc6``, ``fc7``) are
    sown as one dict, ``intermediates/stages``: ``apply(..., mutable=['intermediates'])``
    returns them.
    """

    # Geometry.
    convs: tuple[Conv, ...] = specs.VARIANTS['paper'].convs
    hidden: int = 4096  # width of fc6 and fc7
    num_classes: int = 1000
    input_sizes: tuple[int, ...] = (227,)  # the square input sizes the FC layers accept
    pool_padding: tuple[str, str, str] = ('VALID', 'VALID', 'VALID')
    groups: int = 2  # of conv2, conv4 and conv5
    norm_layers: tuple[int, ...] = (1, 2)  # Section 3.3: after conv1 and conv2
    norm_after_pool: bool = False  # caffenet pools first
    dropout_rate: float = 0.5
    dropout_before_fc: bool = False  # torchvision drops fc6/fc7's *inputs*; the paper their outputs
    # Injected layers (layers.py).
    conv: Callable[..., nn.Module] = layers.Conv2D
    dense: Callable[..., nn.Module] = layers.Dense
    pool: Callable[[jax.Array, str], jax.Array] = layers.overlapping_pool
    norm: Callable[..., nn.Module] | None = layers.local_response_norm
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    dropout: Callable[..., nn.Module] = nn.Dropout
    initializers: Callable[[str], tuple[Any, Any]] = layers.paper_init
    exchange: Callable[..., jax.Array] = layers.no_exchange
    # Precision, placement, and the name used in error messages.
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32
    bn_axis_name: str | None = None  # set by the pmapped step so BatchNorm averages over devices
    variant: str = 'paper'

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        if images.ndim != 4 or images.shape[1] != images.shape[2]:
            raise ValueError(f'AlexNet takes square NHWC images, got shape {images.shape}.')
        if images.shape[1] not in self.input_sizes:
            raise ValueError(
                f'Variant {self.variant!r} takes {" or ".join(map(str, self.input_sizes))}-pixel '
                f'inputs (so that pool5 matches fc6), got {images.shape[1]}x{images.shape[2]}; '
                f'set config.image_size accordingly.'
            )
        pools = dict(zip(POOLED_LAYERS, self.pool_padding, strict=True))

        stages = {}  # named activations, sown at the end for probes and figures
        x = images.astype(self.dtype)
        for i, conv in enumerate(self.convs, start=1):
            name = f'conv{i}'
            groups = self.groups if i in GROUPED_LAYERS else 1
            if i > 1 and groups == 1:  # Section 3.2: "take input from all kernel maps"
                x = self.exchange(x)
            kernel_init, bias_init = self.initializers(name)
            padding = conv.padding
            if isinstance(padding, int):
                padding = [(padding, padding), (padding, padding)]
            x = self.conv(
                conv.features,
                conv.kernel,
                strides=conv.stride,
                padding=padding,
                feature_group_count=groups,
                kernel_init=kernel_init,
                bias_init=bias_init,
                dtype=self.dtype,
                name=name,
            )(x)
            x = self.activation(x)
            stages[name] = x
            normalize = self.norm is not None and i in self.norm_layers
            if normalize and not self.norm_after_pool:
                x = self._normalize(i, x, train)
            if i in pools:
                x = self.pool(x, pools[i])
                stages[f'pool{i}'] = x
            if normalize and self.norm_after_pool:
                x = self._normalize(i, x, train)

        # Gathering channels last and then flattening gives the HWC layout in which each pixel
        # holds tower 0's channels and then tower 1's.
        x = self.exchange(x)
        x = x.reshape(x.shape[0], -1)
        for name in ('fc6', 'fc7'):
            kernel_init, bias_init = self.initializers(name)
            if self.dropout_before_fc:
                x = self.dropout(rate=self.dropout_rate, deterministic=not train)(x)
            x = self.dense(
                self.hidden,
                kernel_init=kernel_init,
                bias_init=bias_init,
                dtype=self.dtype,
                name=name,
            )(x)
            x = self.activation(x)
            stages[name] = x
            if not self.dropout_before_fc:  # Section 4.2: drop the hidden neurons' outputs
                x = self.dropout(rate=self.dropout_rate, deterministic=not train)(x)
            x = self.exchange(x)  # into fc7, into fc8
        kernel_init, bias_init = self.initializers('fc8')
        x = self.dense(
            self.num_classes,
            kernel_init=kernel_init,
            bias_init=bias_init,
            dtype=self.dtype,
            name='fc8',
        )(x)
        self.sow('intermediates', 'stages', stages)
        # Towers: both then hold the same logits and compute the same loss.
        return self.exchange(x, to='invarying').astype(jnp.float32)

    def _normalize(self, layer: int, x: jax.Array, train: bool) -> jax.Array:
        norm = self.norm(layer, train=train, axis_name=self.bn_axis_name, dtype=self.dtype)
        return norm(x)


_ACTIVATIONS = {'relu': nn.relu, 'tanh': jnp.tanh}
_POOLS = {'overlapping': layers.overlapping_pool, 'non_overlapping': layers.non_overlapping_pool}
_INITS = {'paper': layers.paper_init, 'modern': layers.modern_init}


@functools.cache
def _shared(fn: Callable, **kwargs: Any) -> functools.partial:
    """``functools.partial(fn, **kwargs)``, one object per arguments: equal models compare equal
    (a partial compares by identity), so a step compiled for one is reused for the other."""
    return functools.partial(fn, **kwargs)


def _layers(
    kernels: layers.Kernels, tower_axis: str | None, spec: specs.ModelSpec
) -> dict[str, Any]:
    """The injected layers for ``spec`` with ``kernels``, as one tower's share if ``tower_axis``."""
    towers = 1 if tower_axis is None else specs.TOWERS
    lrn_groups = specs.TOWERS if spec.tower_local_lrn and tower_axis is None else 1
    norms = {
        'lrn': _shared(layers.local_response_norm, groups=lrn_groups),
        'bn': layers.batch_norm,
        'none': None,
    }
    built = {
        'conv': _shared(
            layers.Conv2D,
            conv_general_dilated=kernels.conv,
            add_bias=kernels.add_bias,
            towers=towers,
        ),
        'dense': _shared(
            layers.Dense, dense=kernels.dense, add_bias=kernels.add_bias, towers=towers
        ),
        'pool': _shared(_POOLS[spec.pooling], max_pool=kernels.max_pool),
        'norm': norms[spec.norm],
        'activation': _ACTIVATIONS[spec.activation],
        'initializers': _INITS[spec.init_scheme],
    }
    if tower_axis is not None:
        built['dropout'] = _shared(layers.TowerDropout, axis_name=tower_axis)
        built['exchange'] = _shared(layers.gather_towers, axis_name=tower_axis)
    return built


def from_spec(
    spec: specs.ModelSpec,
    *,
    backend: str | None = None,
    tower_axis: str | None = None,
    kernels: layers.Kernels | None = None,
) -> AlexNet:
    """The module ``spec`` describes, with the kernels of ``backend`` (default: JAX's).

    ``kernels`` replaces the backend's choice (an A/B of kernels). ``tower_axis`` names the mesh
    axis of Section 3.2's towers: the module is then one tower's share, to run inside
    ``jax.shard_map`` (``towers.py``), and LRN runs on the tower's own channels. On one device,
    ``spec.tower_local_lrn`` splits LRN the same way.
    """
    if kernels is None:
        kernels = layers.kernels_for(jax.default_backend() if backend is None else backend)
    return AlexNet(
        convs=spec.built_convs(),
        hidden=spec.hidden,
        num_classes=spec.num_classes,
        input_sizes=spec.input_sizes,
        pool_padding=spec.pool_padding,
        groups=spec.groups,
        norm_layers=spec.norm_layers,
        norm_after_pool=spec.norm_after_pool,
        dropout_rate=spec.dropout_rate,
        dropout_before_fc=spec.dropout_before_fc,
        dtype=jnp.dtype(spec.compute_dtype),
        variant=spec.variant,
        **_layers(kernels, tower_axis, spec),
    )


def variant(name: str, *, backend: str | None = None, **fields: Any) -> AlexNet:
    """Variant ``name`` with any :class:`~alexnet_jax.specs.ModelSpec` field overridden."""
    return from_spec(specs.model_spec(name, **fields), backend=backend)


paper = functools.partial(variant, 'paper')
single_tower = functools.partial(variant, 'single_tower')
caffenet = functools.partial(variant, 'caffenet')
owt = functools.partial(variant, 'owt')
bn = functools.partial(variant, 'bn')
small = functools.partial(variant, 'small')
VARIANTS: dict[str, Callable[..., AlexNet]] = {
    'paper': paper,
    'single_tower': single_tower,
    'caffenet': caffenet,
    'owt': owt,
    'bn': bn,
    'small': small,
}


def create_model(
    config: ml_collections.ConfigDict,
    *,
    dtype: Any = None,
    backend: str | None = None,
    tower_axis: str | None = None,
    kernels: layers.Kernels | None = None,
) -> AlexNet:
    """The model a config names, with the kernels for ``backend`` (default: JAX's, read here).

    ``dtype`` overrides the compute dtype of the config (``half_precision``); ``kernels``, the
    backend's kernels.
    """
    spec = specs.resolve_model(config)
    if dtype is not None:
        spec = dataclasses.replace(spec, compute_dtype=jnp.dtype(dtype).name)
    return from_spec(spec, backend=backend, tower_axis=tower_axis, kernels=kernels)


def param_count(params: Any) -> int:
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
