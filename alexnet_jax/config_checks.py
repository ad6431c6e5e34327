"""One clear error for a config that cannot work, before any compute starts.

The fields are resolved and checked by ``specs.resolve`` (the same specs the model, the
optimizer and the data read); this adds the loop's cadence and the workdir. Nothing here looks
at the machine: the device checks (``specs.check_devices``) run where the devices are used.
"""

import os
import tempfile

import ml_collections

from alexnet_jax import specs
from alexnet_jax.specs import ConfigError

__all__ = ['ConfigError', 'validate_config']


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_config(config: ml_collections.ConfigDict, workdir: str | None = None) -> None:
    """Raises :class:`ConfigError` naming the first field that cannot work, and how to fix it."""
    specs.resolve(config)
    _require(
        config.num_train_steps > 0 or config.num_epochs > 0,
        f'Nothing to train: config.num_epochs={config.num_epochs} and config.num_train_steps='
        f'{config.num_train_steps}; set one of them positive.',
    )
    for field in ('eval_every_steps', 'checkpoint_every_steps', 'log_every_steps'):
        _require(config[field] > 0, f'config.{field}={config[field]} must be positive.')
    _require(
        config.log_every_seconds > 0,
        f'config.log_every_seconds={config.log_every_seconds} must be positive.',
    )
    _require(config.keep_checkpoints > 0, 'config.keep_checkpoints must be at least 1.')
    if workdir is not None:
        _check_writable(workdir)


def _check_writable(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir):
            pass
    except OSError as error:
        raise ConfigError(
            f'Cannot write to --workdir {workdir!r} ({error.strerror}); pick a writable directory.'
        ) from None
