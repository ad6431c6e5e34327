"""One clear error for a config that cannot work, before any compute starts."""

import math
import os
import tempfile

import jax
import ml_collections

from alexnet_jax import models, optim

DATASETS = ('imagenet2012', 'fashion_mnist', 'cifar10', 'imagefolder', 'synthetic')


class ConfigError(ValueError):
    """A config field whose value cannot work; the message names the field and the fix."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(config: ml_collections.ConfigDict, field: str, accepted: tuple) -> None:
    value = config[field]
    _require(
        value in accepted,
        f'config.{field}={value!r} is not one of {", ".join(map(repr, accepted))}.',
    )


def validate_config(config: ml_collections.ConfigDict, workdir: str | None = None) -> None:
    """Raises :class:`ConfigError` naming the first field that cannot work, and how to fix it."""
    _one_of(config, 'dataset', DATASETS)
    _one_of(config, 'lr_schedule', optim.SCHEDULES)
    _one_of(config, 'eval_crops', (1, 10))
    try:
        spec = models.resolve_spec(
            config.model,
            norm=config.norm,
            pooling=config.pooling,
            activation=config.activation,
            dropout_rate=config.dropout_rate,
            groups=config.groups,
            init_scheme=config.init_scheme,
        )
    except ValueError as error:
        raise ConfigError(f'{error} (config.model and its switch fields)') from None
    _require(
        config.image_size in spec.input_sizes,
        f'config.image_size={config.image_size} does not fit model {config.model!r}, which takes '
        f'{" or ".join(map(str, spec.input_sizes))}.',
    )
    devices = jax.device_count()
    for field in ('batch_size', 'eval_batch_size'):
        size = config[field] if config[field] is not None else config.batch_size
        _require(
            size > 0 and size % devices == 0,
            f'config.{field}={size} must be a positive multiple of the {devices} devices '
            f'(over all hosts); use e.g. --config.{field}={max(1, size // devices) * devices}.',
        )
    _require(
        math.isfinite(config.learning_rate) and config.learning_rate > 0,
        f'config.learning_rate={config.learning_rate} must be a positive number (paper: 0.01).',
    )
    _require(0 <= config.momentum < 1, f'config.momentum={config.momentum} must be in [0, 1).')
    _require(config.weight_decay >= 0, f'config.weight_decay={config.weight_decay} is negative.')
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
    _require(
        config.eval_num_examples is None or config.eval_num_examples >= 0,
        f'config.eval_num_examples={config.eval_num_examples} must be None (the whole split), '
        f'0 (no evaluation) or a positive number of images.',
    )
    _require(config.keep_checkpoints > 0, 'config.keep_checkpoints must be at least 1.')
    if config.model_parallel_towers:
        _require(
            config.model == 'paper' and (config.groups in (None, 2)),
            'config.model_parallel_towers=True needs the two-tower paper model '
            f"(config.model='paper'), got model={config.model!r}, groups={config.groups}.",
        )
        local = jax.local_device_count()
        _require(
            local >= 2 and local % 2 == 0,
            f'config.model_parallel_towers=True puts the two towers on two devices each, but '
            f'this host has {local} device(s); use an even number of devices, or set it False.',
        )
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
