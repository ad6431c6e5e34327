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
between this placement and the data-parallel one. It *is* that module: ``models.create_model``
with ``tower_axis='tower'`` injects the tower versions of its layers (``layers.py``: conv and
dense holding half the output features, the all-gather as the exchange, dropout folding in the
tower index), and this module only places it.

One deliberate difference from the single-device ``paper`` model by default: LRN (Section 3.3)
runs within each tower (``config.tower_local_lrn``, on with the towers and available on one
device too), over its own 48 (conv1) or 128 (conv2) channels, as on the paper's two GPUs
(each GPU normalised its own maps). The plain single-device model normalises over all 96/256
channels at once, as Caffe does, so the two channels on either side of the tower boundary see
two neighbours more there. No parameters are involved; the forward passes agree to float
precision with a single-device model with ``tower_local_lrn``, and differ from the plain one by
about 1e-4 (relative, logits) at the paper's initialisation on mean-subtracted 0-255 pixels.
Matching the plain model's LRN would need a third exchange of activations that the paper does
not have.

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

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from alexnet_jax import models, parallel, specs, steps
from alexnet_jax.data_types import Stats
from alexnet_jax.specs import ConfigError

BATCH = parallel.AXIS  # the data-parallel axis: the steps pmean/psum over it
TOWER = 'tower'
TOWERS = specs.TOWERS  # Section 3.2: two GTX 580 GPUs
SPLIT_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')

__all__ = [
    'BATCH',
    'TOWER',
    'TOWERS',
    'create_mesh',
    'make_steps',
    'placement',
    'state_shardings',
    'state_specs',
    'tower_model',
]


def tower_model(config: ml_collections.ConfigDict) -> models.AlexNet:
    """``models.create_model(config)`` as one tower's share, for ``shard_map`` over ``'tower'``.

    Takes the whole (per-replica) image batch and this tower's parameters, whose last axis is
    ``1 / towers`` as long; returns the full logits, the same on every tower.
    """
    return models.create_model(config, tower_axis=TOWER)


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A ``('batch', 'tower')`` mesh of the local devices: consecutive pairs are the towers.

    Raises a :class:`ConfigError` naming the fix unless there is an even number (2, 4, ...).
    """
    devices = list(devices or jax.local_devices())
    specs.check_tower_devices(len(devices))
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
    devices = list(devices or jax.local_devices())
    as_towers = config.copy_and_resolve_references()  # even if the switch is off (benchmarks)
    as_towers.model_parallel_towers = True
    specs.resolve_model(as_towers)  # the tower model's own checks (paper, no bn, even classes)
    specs.check_devices(as_towers, len(devices), len(devices))
    mesh = create_mesh(devices)
    train_step, eval_step = make_steps(config, stats, mesh)

    def place_state(state: Any) -> Any:
        return jax.device_put(state, state_shardings(state, mesh))

    def place_batch(batch: Any) -> Any:
        return jax.device_put(batch, NamedSharding(mesh, PartitionSpec(BATCH)))

    return steps.Placement(mesh.shape[BATCH], place_state, place_batch, train_step, eval_step)
