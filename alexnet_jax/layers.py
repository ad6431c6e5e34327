"""The layers :class:`alexnet_jax.models.AlexNet` is built from, and their tower versions.

Each is a plain Flax module or function that ``models`` injects into ``AlexNet``: conv and dense
(``nn.Conv``'s and ``nn.Dense``'s parameters, with the kernels of :class:`Kernels`), pooling,
normalisation, initialisers, dropout and the exchange between towers. None looks at a config
string or at the backend; :func:`kernels_for` turns a backend's name into kernels once.

Tower versions (Section 3.2, run inside ``jax.shard_map`` by ``towers.py``): with ``towers=2``
a conv or dense layer holds its device's half of the output features (and of a grouped layer's
groups), :func:`gather_towers` is the exchange at Figure 2's crossing points, and
:class:`TowerDropout` draws each tower's own mask.
"""

import dataclasses
import operator
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexnet_jax import onednn_conv, ops
from alexnet_jax.lrn import LRN

Initializer = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The primitive ops the layers run; the defaults are lax's own (any backend)."""

    conv: Callable[..., jax.Array] = jax.lax.conv_general_dilated
    dense: Callable[[jax.Array, jax.Array], jax.Array] = ops.plain_dense
    add_bias: Callable[[jax.Array, jax.Array], jax.Array] = operator.add
    max_pool: Callable[..., jax.Array] = ops.plain_max_pool


def kernels_for(backend: str) -> Kernels:
    """The fastest kernels measured on ``backend`` ('cpu', 'gpu', 'tpu', ...); see ``ops``."""
    if backend == 'cpu':
        # oneDNN's convolutions where they build (see onednn_conv), else XLA's, group by group.
        conv = onednn_conv.conv if onednn_conv.enabled() else ops.split_grouped_conv
        return Kernels(conv=conv, add_bias=ops.add_bias, max_pool=ops.max_pool)
    if backend == 'gpu':
        # Two plain convolutions beat one grouped call 1.7x on an H200 (bf16, batch 256,
        # experiments/benchmarks/grouped_conv.py); the max-pool's gradient is faster there too.
        return Kernels(conv=ops.split_grouped_conv, max_pool=ops.max_pool)
    return Kernels()


def _local_groups(groups: int, towers: int) -> int:
    """A grouped layer split over towers runs its own groups; an ungrouped one sees everything."""
    return groups // towers if groups % towers == 0 else groups


class Conv2D(nn.Module):
    """``nn.Conv``'s parameters (``kernel`` HWIO, ``bias``) and result, from injected kernels.

    The same names, shapes and initial values as ``nn.Conv``, so checkpoints are unchanged.
    With ``towers`` > 1 it is one device's share: ``features / towers`` outputs.
    """

    features: int
    kernel_size: int
    strides: int = 1
    padding: str | Sequence[tuple[int, int]] = 'SAME'
    feature_group_count: int = 1
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros
    dtype: Any = jnp.float32
    conv_general_dilated: Callable[..., jax.Array] = jax.lax.conv_general_dilated
    add_bias: Callable[[jax.Array, jax.Array], jax.Array] = operator.add
    towers: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, features = self.kernel_size, self.features // self.towers
        groups = _local_groups(self.feature_group_count, self.towers)
        shape = (k, k, x.shape[-1] // groups, features)
        kernel = self.param('kernel', self.kernel_init, shape, jnp.float32)
        bias = self.param('bias', self.bias_init, (features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = self.conv_general_dilated(
            x,
            kernel,
            (self.strides, self.strides),
            self.padding,
            feature_group_count=groups,
            dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        )
        return self.add_bias(y, bias)


class Dense(nn.Module):
    """``nn.Dense``'s parameters (``kernel`` [in, out], ``bias``) and result, from injected kernels.

    Same names, shapes and initial values as ``nn.Dense``. With ``towers`` > 1 it is one
    device's share: ``features / towers`` outputs.
    """

    features: int
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros
    dtype: Any = jnp.float32
    dense: Callable[[jax.Array, jax.Array], jax.Array] = ops.plain_dense
    add_bias: Callable[[jax.Array, jax.Array], jax.Array] = operator.add
    towers: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = self.features // self.towers
        kernel = self.param('kernel', self.kernel_init, (x.shape[-1], features), jnp.float32)
        bias = self.param('bias', self.bias_init, (features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return self.add_bias(self.dense(x, kernel), bias)


# --- Pooling (Section 3.4): ``pool(x, padding)``.


def overlapping_pool(
    x: jax.Array, padding: str, *, max_pool: Callable[..., jax.Array] = ops.plain_max_pool
) -> jax.Array:
    """Section 3.4's overlapping pooling: 3x3 windows at stride 2."""
    return max_pool(x, 3, 2, padding)


def non_overlapping_pool(
    x: jax.Array, padding: str, *, max_pool: Callable[..., jax.Array] = ops.plain_max_pool
) -> jax.Array:
    """The traditional 2x2/2 pooling Section 3.4 compares against, at equal output sizes."""
    if padding == 'VALID':
        # Keep as many 2x2/2 windows as 3x3/2 ones would have (only even sizes differ: 8 -> 3).
        n = 2 * ((x.shape[1] - 1) // 2)
        x = x[:, :n, :n]
    return max_pool(x, 2, 2, padding)


# --- Normalisation: ``norm(layer, train=, axis_name=, dtype=)`` returns the layer to apply.


def local_response_norm(
    layer: int, *, train: bool, axis_name: str | None, dtype: Any, groups: int = 1
) -> nn.Module:
    """Section 3.3's LRN (k = 2, n = 5, alpha = 1e-4, beta = 0.75), within ``groups`` slices."""
    del train, axis_name, dtype  # no parameters, no statistics; computes in float32 or wider
    return LRN(size=5, k=2.0, alpha=1e-4, beta=0.75, groups=groups, name=f'norm{layer}')


def batch_norm(layer: int, *, train: bool, axis_name: str | None, dtype: Any) -> nn.Module:
    """BatchNorm (the tf.keras tutorial's), its statistics averaged over ``axis_name``."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        axis_name=axis_name if train else None,
        dtype=dtype,
        name=f'bn{layer}',
    )


# --- Initialisation: ``initializers(layer_name) -> (kernel_init, bias_init)``.

# Section 5: "We initialized the weights in each layer from a zero-mean Gaussian distribution
# with standard deviation 0.01. We initialized the neuron biases in the second, fourth, and fifth
# convolutional layers, as well as in the fully-connected hidden layers, with the constant 1."
_PAPER_BIAS_ONE = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')


def paper_init(name: str) -> tuple[Initializer, Initializer]:
    bias = 1.0 if name in _PAPER_BIAS_ONE else 0.0
    return nn.initializers.normal(0.01), nn.initializers.constant(bias)


def modern_init(name: str) -> tuple[Initializer, Initializer]:
    """He et al. (2015) for layers followed by a ReLU, LeCun for the logits; zero biases."""
    kernel = nn.initializers.lecun_normal() if name == 'fc8' else nn.initializers.he_normal()
    return kernel, nn.initializers.zeros


# --- Exchange between towers: ``exchange(x, to)``.


def no_exchange(x: jax.Array, to: str = 'varying') -> jax.Array:
    """One device holds every tower: nothing to exchange."""
    del to
    return x


def gather_towers(x: jax.Array, to: str = 'varying', *, axis_name: str) -> jax.Array:
    """Both towers' halves side by side on the last axis, tower 0 first (Section 3.2).

    ``to='invarying'`` (for the logits, which both towers then share) transposes to a slice, so
    each half receives its gradient once; the others transpose to reduce-scatters, which add up
    what the two towers' next layers send back.
    """
    return jax.lax.all_gather(x, axis_name, axis=-1, tiled=True, to=to)


class TowerDropout(nn.Module):
    """``nn.Dropout`` of one tower's neurons: the tower index is folded into the key."""

    rate: float
    deterministic: bool
    axis_name: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or self.rate == 0.0:
            return x
        # Each tower draws the mask of its own neurons; the exchange then hands both towers
        # the same dropped activations.
        rng = jax.random.fold_in(self.make_rng('dropout'), jax.lax.axis_index(self.axis_name))
        return nn.Dropout(self.rate, deterministic=False)(x, rng=rng)
