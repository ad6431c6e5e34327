"""Fine-tuning: start from another run's (or a converted) checkpoint, optionally with layers frozen.

    --config.init_from=DIR        parameters and BatchNorm statistics of DIR's newest checkpoint;
                                  fresh optimizer state, step 0. fc8 is re-initialised when the
                                  number of classes differs.
    --config.freeze=conv1,conv2   these top-level layers are never updated (nor weight-decayed).

Frozen layers get zero updates from ``optax.set_to_zero`` inside ``optax.multi_transform``, so
they stay bit-identical and carry no momentum buffers.
"""

import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from alexnet_jax import specs

log = logging.getLogger(__name__)

CLASSIFIER = 'fc8'  # the layer whose width is the number of classes


def freeze_names(config: ml_collections.ConfigDict) -> list[str]:
    """The layer names in ``config.freeze`` (comma-separated; absent in older configs)."""
    return list(specs.layer_names(config.get('freeze')))


def freeze_mask(config: ml_collections.ConfigDict, params: Any) -> Any | None:
    """A tree like ``params``: True for the leaves of frozen layers; None if none is frozen."""
    names = freeze_names(config)
    if not names:
        return None
    unknown = sorted(set(names) - set(params))
    if unknown:
        raise ValueError(
            f'config.freeze names {", ".join(unknown)}, which this network lacks; its layers are '
            f'{", ".join(params)}.'
        )
    return {name: jax.tree.map(lambda _, f=name in names: f, sub) for name, sub in params.items()}


def keep_frozen(tx: optax.GradientTransformation, mask: Any | None) -> optax.GradientTransformation:
    """``tx`` for the trained leaves, zero updates (no state, no decay) for the frozen ones."""
    if mask is None:
        return tx
    labels = jax.tree.map(lambda frozen: 'frozen' if frozen else 'trained', mask)
    return optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)


def _read_source(source: str) -> tuple[dict, dict, int]:
    """(params, batch_stats, step) of the newest checkpoint of the run in ``source``."""
    from alexnet_jax import checkpointing

    config_path = os.path.join(source, 'config.json')
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f'config.init_from={source} is not a run directory (no config.json): give a '
            f'training run or a directory written by python -m alexnet_jax.convert.'
        )
    with open(config_path) as f:
        source_config = ml_collections.ConfigDict(json.load(f))
    ckpt = checkpointing.Checkpointer(source, source_config, read_only=True)
    try:
        steps = ckpt.steps()
        if not steps:
            raise FileNotFoundError(f'config.init_from={source} holds no checkpoint.')
        import orbax.checkpoint as ocp

        restored = ckpt.manager.restore(
            steps[-1], args=ocp.args.Composite(state=ocp.args.StandardRestore())
        )['state']
    finally:
        ckpt.close()
    to_numpy = lambda tree: jax.tree.map(np.asarray, dict(tree or {}))
    return to_numpy(restored['params']), to_numpy(restored.get('batch_stats')), steps[-1]


def load_initial_params(config: ml_collections.ConfigDict, state: Any) -> Any:
    """``state`` with the params and batch_stats of ``config.init_from``'s newest checkpoint.

    The optimizer state and step stay those of the fresh ``state``. A classifier of another
    width stays freshly initialised (logged); any other difference in layers or shapes is one
    error naming them.
    """
    source = config.get('init_from')
    if not source:
        return state
    from alexnet_jax import checkpointing

    saved, saved_stats, step = _read_source(source)
    fresh_shapes = checkpointing.leaf_shapes(state.params)
    saved_shapes = checkpointing.leaf_shapes(saved)
    head = frozenset(k for k in fresh_shapes if k.startswith(f"['{CLASSIFIER}']"))
    reinit = any(fresh_shapes[k] != saved_shapes.get(k) for k in head)
    differences = '; '.join(
        d
        for d in (
            checkpointing.shape_differences(
                saved_shapes, fresh_shapes, ignore=head if reinit else frozenset()
            ),
            checkpointing.shape_differences(
                checkpointing.leaf_shapes(saved_stats), checkpointing.leaf_shapes(state.batch_stats)
            ),
        )
        if d
    )
    if differences:
        raise ValueError(
            f'config.init_from={source} holds another network than this config makes '
            f'({differences}). Use the same model, or a source of this model.'
        )
    params = dict(state.params)
    for layer in params:
        if layer == CLASSIFIER and reinit:
            continue
        params[layer] = jax.tree.map(lambda a: np.asarray(a, np.float32), saved[layer])
    log.info('Initial parameters from %s (step %d).', source, step)
    if reinit:
        log.info(
            '%s re-initialised: %d classes here, %d in %s.',
            CLASSIFIER,
            state.params[CLASSIFIER]['bias'].shape[0],
            saved[CLASSIFIER]['bias'].shape[0],
            source,
        )
    stats = saved_stats if state.batch_stats else state.batch_stats
    return state.replace(params=params, batch_stats=stats)
