"""Section 3.2 for real: the two towers of the paper's net on two devices (model parallelism).

"We spread the net across two GPUs ... [each] GPU holds half of the kernels (or neurons), with one
additional trick: the GPUs communicate only in certain layers." Here the devices form a 2-D mesh
``('batch', 'tower')``: every data replica is a pair of devices, and device ``t`` of a pair holds
tower ``t``'s half of every layer: the ``t``-th half of the output features of conv1 ... conv5
and fc6 ... fc8 (with the bias), and the matching half of the momentum. Activations cross between
the towers exactly where Figure 2 has them cross, each as one all-gather over ``'tower'``:

  into conv3  the two towers' pool2 maps (13x13x128 each -> 13x13x256)
  into fc6    the two towers' pool5 maps (6x6x128 each -> 6x6x256, then flattened)
  into fc7    the two halves of fc6 (2048 + 2048), after dropout
  into fc8    the two halves of fc7, after dropout
  logits      the two halves of fc8's outputs (fc8 is split like every other layer)

conv1 (each tower's 48 kernels on the whole image), conv2, conv4 and conv5 (each tower's group of
the grouped kernel), ReLU, LRN and max-pooling never leave the tower. Concatenating the towers'
channels reproduces the channel order of the single-device grouped model (tower 0 first, at every
pixel), so the flattened pool5 and every kernel line up and the parameter tree is *the same* as
:class:`alexnet_jax.models.AlexNet`'s (``variant='paper'``): same names, same full shapes, each
leaf merely sharded along its last (output-feature) axis. Checkpoints therefore move freely
between this placement and the data-parallel one.

One deliberate difference from the single-device ``paper`` model: LRN (Section 3.3) runs within
each tower, over its own 48 (conv1) or 128 (conv2) channels, as on the paper's two GPUs
(each GPU normalised its own maps). The single-device model normalises over all
96/256 channels at once, as Caffe does, so the two channels on either side of the tower boundary
see two neighbours more there. No parameters are involved; the forward passes agree to float
precision with a single-device model whose LRN is split per tower, and differ from the plain one
by about 1e-4 (relative, logits) at the paper's initialisation on mean-subtracted 0-255 pixels.
Matching the single-device
LRN exactly would need a third exchange of activations that the paper does not have.

Why ``jax.shard_map`` over a 2-D ``Mesh`` rather than nested ``pmap``: in JAX 0.10 ``pmap`` is
itself ``jit(shard_map)`` over a 1-D mesh; nesting two of them means stacked per-device arrays and
two layers of axis bookkeeping, and a ``pmap`` cannot take a state that is sharded along one axis
and replicated along the other. One ``shard_map`` over ``('batch', 'tower')`` states all of that
in ``PartitionSpec`` s: the state is ``P(..., 'tower')`` (replicated over ``'batch'``), a batch is
``P('batch')`` (replicated over ``'tower'``), and the step body is
:func:`alexnet_jax.steps.train_step` / ``eval_step`` unchanged, whose ``pmean`` / ``psum`` over
``'batch'`` leave ``'tower'`` alone. As ``pmap`` does, the ``shard_map`` runs with
``check_vma=False``: the gradient of a replicated parameter is then each replica's own, and the
step's explicit ``pmean`` averages it (with ``check_vma=True`` autodiff would already sum it over
``'batch'``, and the ``pmean`` would leave that sum). The all-gather into the logits transposes to
a slice (``to='invarying'``): both towers compute the same loss, and each half of the logits must
receive its gradient once, not once per tower; the other all-gathers transpose to reduce-scatters,
which add up what the two towers' next layers send back, so the gradients equal the
single-device model's.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alexnet_jax import models, ops, parallel, steps
from alexnet_jax.config_checks import ConfigError
from alexnet_jax.data_types import Stats
from alexnet_jax.lrn import LRN

BATCH = parallel.AXIS  # the data-parallel axis: train.py's steps pmean/psum over it
TOWER = 'tower'
TOWERS = 2  # Section 3.2: two GTX 580 GPUs
SPLIT_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')

__all__ = [
    'BATCH',
    'TOWER',
    'TOWERS',
    'TowerAlexNet',
    'create_mesh',
    'make_steps',
    'placement',
    'state_shardings',
    'state_specs',
    'tower_model',
]


class TowerAlexNet(nn.Module):
    """One tower of the ``paper`` net, run inside ``shard_map`` over a mesh axis ``axis_name``.

    Takes the whole (per-replica) image batch and this tower's parameters, which have the
    names of :class:`~alexnet_jax.models.AlexNet`'s and a last axis ``1 / towers`` as long.
    Returns the full logits, the same on every tower. Only for ``apply``: the parameters come
    from ``AlexNet.init`` and :func:`state_shardings`.
    """

    num_classes: int = 1000
    norm: str | None = None
    pooling: str | None = None
    activation: str | None = None
    dropout_rate: float | None = None
    init_scheme: str | None = None
    dtype: Any = jnp.float32
    towers: int = TOWERS
    axis_name: str = TOWER

    @property
    def spec(self) -> models.Spec:
        return models.resolve_spec(
            'paper',
            norm=self.norm,
            pooling=self.pooling,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            init_scheme=self.init_scheme,
        )

    def _gather(self, x: jax.Array, to: str = 'varying') -> jax.Array:
        """Both towers' halves side by side on the last axis, tower 0 first (Section 3.2)."""
        return jax.lax.all_gather(x, self.axis_name, axis=-1, tiled=True, to=to)

    def _dense(self, x: jax.Array, features: int, name: str) -> jax.Array:
        kernel_init, bias_init = models._initializers(self.spec.init_scheme, name)
        return nn.Dense(
            features // self.towers,
            kernel_init=kernel_init,
            bias_init=bias_init,
            dtype=self.dtype,
            name=name,
        )(x)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        spec = self.spec
        if spec.norm == 'bn' or spec.norm_after_pool or spec.dropout_before_fc:
            raise ValueError('The tower model covers the paper net with LRN or no norm only.')
        if images.ndim != 4 or images.shape[1:3] != (spec.input_sizes[0],) * 2:
            raise ValueError(f'The paper net takes [N, 227, 227, C] images, got {images.shape}.')
        act = nn.relu if spec.activation == 'relu' else jnp.tanh
        window, stride = (3, 2) if spec.pooling == 'overlapping' else (2, 2)  # Section 3.4
        pools = dict(zip((1, 2, 5), spec.pool_padding, strict=True))

        x = images.astype(self.dtype)
        for i, conv in enumerate(spec.convs, start=1):
            name = f'conv{i}'
            if i == 3:  # Section 3.2: "the kernels of layer 3 take input from all kernel maps"
                x = self._gather(x)
            kernel_init, bias_init = models._initializers(spec.init_scheme, name)
            padding = conv.padding
            if isinstance(padding, int):
                padding = [(padding, padding), (padding, padding)]
            x = nn.Conv(
                conv.features // self.towers,  # this tower's half of the kernels
                (conv.kernel, conv.kernel),
                strides=conv.stride,
                padding=padding,
                kernel_init=kernel_init,
                bias_init=bias_init,
                dtype=self.dtype,
                conv_general_dilated=ops.split_grouped_conv,  # as AlexNet's, one group here
                name=name,
            )(x)
            x = act(x)
            if spec.norm == 'lrn' and i in spec.norm_layers:  # Section 3.3, within the tower
                x = LRN(size=5, k=2.0, alpha=1e-4, beta=0.75, name=f'norm{i}')(x)
            if i in pools:
                if spec.pooling == 'non_overlapping' and pools[i] == 'VALID':
                    n = 2 * ((x.shape[1] - 1) // 2)  # as models.AlexNet: equal output sizes
                    x = x[:, :n, :n]
                x = nn.max_pool(x, (window, window), (stride, stride), padding=pools[i])

        # Gathering channels last and then flattening gives the single-device HWC layout, in
        # which each pixel holds tower 0's 128 channels and then tower 1's.
        x = self._gather(x).reshape(x.shape[0], -1)
        for name in ('fc6', 'fc7'):
            x = act(self._dense(x, spec.hidden, name))
            x = self._dropout(x, spec.dropout_rate, train)  # Section 4.2, this tower's neurons
            x = self._gather(x)
        logits = self._dense(x, self.num_classes, 'fc8')
        # Both towers then hold the same logits and compute the same loss: this gather transposes
        # to a slice, so each half of the logits gets its gradient once, not once per tower.
        return self._gather(logits, to='invarying').astype(jnp.float32)

    def _dropout(self, x: jax.Array, rate: float, train: bool) -> jax.Array:
        if not train or rate == 0.0:
            return x
        # Each tower draws the mask of its own neurons; the gather then hands both towers the
        # same dropped activations.
        rng = jax.random.fold_in(self.make_rng('dropout'), jax.lax.axis_index(self.axis_name))
        return nn.Dropout(rate, deterministic=False)(x, rng=rng)


def tower_model(config: ml_collections.ConfigDict) -> TowerAlexNet:
    """The tower half of ``models.create_model(config)`` (same switches, same compute dtype)."""
    return TowerAlexNet(
        num_classes=config.num_classes,
        norm=config.norm,
        pooling=config.pooling,
        activation=config.activation,
        dropout_rate=config.dropout_rate,
        init_scheme=config.init_scheme,
        dtype=steps.compute_dtype(config),
    )


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A ``('batch', 'tower')`` mesh of the local devices: consecutive pairs are the towers.

    Raises a :class:`ConfigError` naming the fix unless there is an even number (2, 4, ...).
    """
    devices = list(devices or jax.local_devices())
    if len(devices) < TOWERS or len(devices) % TOWERS:
        raise ConfigError(
            f'config.model_parallel_towers=True puts the two towers of Section 3.2 on two '
            f'devices of each data replica, so it needs an even number of local devices; found '
            f'{len(devices)}. Use 2, 4, ... devices (on CPU: '
            f'XLA_FLAGS=--xla_force_host_platform_device_count=2), or turn the switch off.'
        )
    return Mesh(np.asarray(devices).reshape(-1, TOWERS), (BATCH, TOWER))


def _leaf_spec(path: tuple[Any, ...], leaf: Any) -> PartitionSpec:
    """``P(..., 'tower')`` for a split layer's weights (and their momentum); else replicated."""
    keys = {getattr(k, 'key', None) for k in path}
    ndim = np.ndim(leaf)
    if ndim == 0 or not keys.intersection(SPLIT_LAYERS):
        return PartitionSpec()
    if leaf.shape[-1] % TOWERS:
        name = '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)
        raise ConfigError(
            f'{name} has {leaf.shape[-1]} output features, which do not split into '
            f'{TOWERS} towers; config.num_classes must be even for model_parallel_towers.'
        )
    return PartitionSpec(*([None] * (ndim - 1)), TOWER)


def state_specs(state: Any) -> Any:
    """The ``PartitionSpec`` of every leaf of a train state (params, momentum, the rest)."""
    return jax.tree_util.tree_map_with_path(_leaf_spec, state)


def state_shardings(state: Any, mesh: Mesh) -> Any:
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec),
        state_specs(state),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def _squeeze(batch: Any) -> Any:
    """A replica's [1, per_device, ...] block of the batch -> [per_device, ...], as pmap gives."""
    return jax.tree.map(lambda x: x[0], batch)


def _train_body(state, batch, rng, *, apply_fn, config, stats):
    own_apply = state.apply_fn
    new_state, step_metrics = steps.train_step(
        state.replace(apply_fn=apply_fn), _squeeze(batch), rng, config=config, stats=stats
    )
    # Each tower checked its own half of the parameters: finite only if both halves are.
    finite = jax.lax.pmin(step_metrics['finite'].astype(jnp.int32), TOWER).astype(bool)
    return new_state.replace(apply_fn=own_apply), {**step_metrics, 'finite': finite}


def _eval_body(state, batch, *, apply_fn, config, stats):
    return steps.eval_step(
        state.replace(apply_fn=apply_fn), _squeeze(batch), config=config, stats=stats
    )


def make_steps(
    config: ml_collections.ConfigDict, stats: Stats, mesh: Mesh
) -> tuple[Callable, Callable]:
    """``steps.train_step`` and ``steps.eval_step`` over ``mesh``, with the tower model."""
    apply_fn = tower_model(config).apply

    @functools.partial(jax.jit, donate_argnums=(0,))
    def train_step(state, batch, rng):
        specs = state_specs(state)
        body = functools.partial(_train_body, apply_fn=apply_fn, config=config, stats=stats)
        return jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(specs, PartitionSpec(BATCH), PartitionSpec()),
            out_specs=(specs, PartitionSpec()),
            check_vma=False,  # pmap's semantics, which steps.train_step is written for
        )(state, batch, rng)

    @jax.jit
    def eval_step(state, batch):
        body = functools.partial(_eval_body, apply_fn=apply_fn, config=config, stats=stats)
        return jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(state_specs(state), PartitionSpec(BATCH)),
            out_specs=PartitionSpec(),
            check_vma=False,
        )(state, batch)

    return train_step, eval_step


def placement(
    config: ml_collections.ConfigDict,
    stats: Stats,
    devices: list[jax.Device] | None = None,
) -> steps.Placement:
    """Section 3.2's placement: towers on device pairs, data parallel across the pairs."""
    if jax.process_count() > 1:
        raise ConfigError('config.model_parallel_towers=True runs on one host (process) for now.')
    if config.model != 'paper' or config.groups not in (None, 2):
        raise ConfigError(
            'config.model_parallel_towers=True needs the two-tower paper model (model=paper).'
        )
    if config.norm == 'bn':
        raise ConfigError('config.model_parallel_towers=True needs norm=lrn or none, not bn.')
    mesh = create_mesh(devices)
    train_step, eval_step = make_steps(config, stats, mesh)

    def place_state(state: Any) -> Any:
        return jax.device_put(state, state_shardings(state, mesh))

    def place_batch(batch: Any) -> Any:
        return jax.device_put(batch, NamedSharding(mesh, PartitionSpec(BATCH)))

    return steps.Placement(mesh.shape[BATCH], place_state, place_batch, train_step, eval_step)
