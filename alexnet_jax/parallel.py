"""Placement of the train state and batches for the ``pmap``-ed step, kept in one place.

The state is never stacked per device: it is placed once, replicated over a mesh of the local
devices whose axis has the step's ``axis_name``, and the step is ``pmap``-ed with
``in_axes=None`` for it. That avoids the classic trap of ``flax.jax_utils.replicate`` in JAX 0.10
(a mesh axis named differently from pmap's, so the second call recompiles), keeps checkpoints a
single copy, and lets a checkpoint restore on any device count. If the step moves to
``jax.shard_map`` one day, only this module changes.
"""

import collections
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = 'batch'


def local_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    return Mesh(np.asarray(devices or jax.local_devices()), (AXIS,))


def replicate(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
    """One copy of ``tree`` on every local device, laid out as the pmapped step expects."""
    return jax.device_put(tree, NamedSharding(local_mesh(devices), PartitionSpec()))


def shard(batch: Any, devices: Sequence[jax.Device] | None = None) -> Any:
    """Host arrays shaped ``[local_devices, per_device, ...]``, one slice per device."""
    return jax.device_put(batch, NamedSharding(local_mesh(devices), PartitionSpec(AXIS)))


def prefetch(
    iterator: Iterator[Any], size: int, place: Callable[[Any], Any] = shard
) -> Iterator[Any]:
    """Keeps ``size`` batches in flight to the devices (placed by ``place``) while steps run."""
    queue: collections.deque[Any] = collections.deque()
    for batch in iterator:
        queue.append(place(batch))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def to_host(tree: Any) -> Any:
    """Numpy copy of a replicated tree (one copy, not one per device)."""
    return jax.device_get(tree)
