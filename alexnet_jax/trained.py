"""A training run read back from its workdir: its config, a checkpoint's state, its results.

What ``evaluate``, ``predict``, the figures and the tests start from, and how the driver knows
a run has already finished; nothing here trains.
"""

import json
from typing import Any

import jax
import ml_collections
from etils import epath

from alexnet_jax import checkpointing, datasets, metrics, models, steps


def config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in ``workdir`` was started with (its ``config.json``)."""
    path = epath.Path(workdir) / 'config.json'
    if not path.exists():
        raise FileNotFoundError(
            f'{path} does not exist: --workdir must be the directory of a training run '
            f'(python -m alexnet_jax.main --workdir ...).'
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_trained_state(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None, best: bool = False
) -> steps.TrainState:
    """The state of checkpoint ``step`` (or the best by validation error, or the newest).

    The restore target is built from shapes only: ``model.init`` is traced by
    ``jax.eval_shape``, never compiled or run (0.3 s for the paper's net instead of 13-28 s);
    the parameters come back as numpy arrays.
    """
    info = datasets.run_dataset_info(config, workdir)
    model = models.create_model(config)
    state = jax.eval_shape(lambda: steps.create_train_state(config, model, info.image_shape, 1))
    ckpt = checkpointing.Checkpointer(workdir, config, read_only=True)
    try:
        if best:
            step = ckpt.best_step()
            if step is None:
                raise FileNotFoundError(f'No evaluated checkpoint in {ckpt.directory}.')
        if step is None and not ckpt.manager.all_steps():
            raise FileNotFoundError(f'No checkpoint in {ckpt.directory}: train first.')
        return ckpt.restore(state, step)
    finally:
        ckpt.close()


def finished_results(
    ckpt: checkpointing.Checkpointer, workdir: str, total: int
) -> dict[str, Any] | None:
    """The results of a run that already reached ``total`` and wrote them; else None."""
    saved = ckpt.steps()
    if not saved or saved[-1] < total:
        return None
    ckpt.check_config(saved[-1])  # the same network, or one error saying what differs
    results = metrics.read_results(workdir)
    return results if results is not None and results.get('step') == saved[-1] else None
