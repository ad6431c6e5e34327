"""The config resolved once: typed, frozen model, optimizer and data specs, checked on the way.

A config spells things loosely (``None`` means "the variant's preset", batch sizes default to
each other); a spec holds the resolved value of every field. ``models``, ``towers``,
``config_checks`` and checkpoint compatibility read a :class:`ModelSpec` instead of each
interpreting config fields. :func:`resolve` raises :class:`ConfigError` naming the field.

The variants (1000 classes; parameter counts are asserted in ``tests/test_models.py``):

  variant       input  conv features, fc6/7      norm after    groups  init    other
  paper         227    96-256-384-384-256, 4096  lrn: 1, 2     2       paper
  single_tower  227    96-256-384-384-256, 4096  lrn: 1, 2     1       paper
  caffenet      227    96-256-384-384-256, 4096  lrn: 1, 2     2       paper   pool, then LRN
  owt           224    64-192-384-256-256, 4096  none          1       paper   dropout before fc
  bn            227    96-256-384-384-256, 4096  bn: 1 ... 5   1       paper
  small       28/32    32-64-96-96-64, 512       lrn: 1, 2     2       modern  pools 1, 2 pad

``half_kernels`` (any variant, with groups=1) halves conv1-conv4's kernels and keeps conv5 and
the FC layers: the one-GPU net Section 3.2 compares the towers against (its footnote).

Every variant pools with overlapping 3x3/2 windows, applies ReLU and drops out at 0.5 by default.
Nothing here depends on the machine: the device checks are :func:`check_devices`, called where
the devices are used.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import ml_collections

from alexnet_jax.datasets import DATASETS

NORMS = ('lrn', 'bn', 'none')
POOLINGS = ('overlapping', 'non_overlapping')
ACTIVATIONS = ('relu', 'tanh')
INITS = ('paper', 'modern')
GROUPS = (1, 2)
NORMALIZATIONS = ('mean_image', 'channel', 'none')
SCHEDULES = ('plateau', 'step', 'cosine', 'constant')  # optim.lr_schedule's
EVAL_CROPS = (1, 10)
TOWERS = 2  # Section 3.2: two GTX 580 GPUs


class ConfigError(ValueError):
    """A config field whose value cannot work; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class Conv:
    """One convolution's geometry."""

    features: int
    kernel: int
    stride: int = 1
    padding: int | str = 'SAME'  # an int pads that many pixels on every side


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Every resolved field of the network (and its compute dtype and tower placement)."""

    variant: str
    convs: tuple[Conv, Conv, Conv, Conv, Conv]
    hidden: int  # width of fc6 and fc7
    input_sizes: tuple[int, ...]  # the square input sizes the FC layers accept
    num_classes: int = 1000
    pool_padding: tuple[str, str, str] = ('VALID', 'VALID', 'VALID')
    norm: str = 'lrn'
    norm_layers: tuple[int, ...] = (1, 2)  # Section 3.3: after conv1 and conv2
    norm_after_pool: bool = False  # caffenet pools first
    pooling: str = 'overlapping'
    activation: str = 'relu'
    dropout_rate: float = 0.5
    dropout_before_fc: bool = False  # torchvision drops fc6/fc7's *inputs*; the paper their outputs
    groups: int = 2
    half_kernels: bool = False  # Section 3.2's one-GPU net: conv1-4 halved, conv5 and fc kept
    init_scheme: str = 'paper'
    compute_dtype: str = 'float32'  # parameters stay float32
    tower_local_lrn: bool = False  # LRN within each tower's half of the channels (Section 3.2)
    model_parallel_towers: bool = False  # each tower on its own device (towers.py)

    def network(self) -> dict[str, Any]:
        """The fields that define the parameters and what the network computes from them.

        Not the variant's name (``single_tower`` with ``groups=2`` is ``paper``), the compute
        dtype, nor where the towers run and how LRN sees them: a checkpoint moves freely across
        those.
        """
        return {f: getattr(self, f) for f in NETWORK_FIELDS}

    def built_convs(self) -> tuple[Conv, ...]:
        """The convolutions the network builds: ``convs``, with conv1-conv4 at half their
        kernels under ``half_kernels``.

        Section 3.2, footnote: the one-GPU net keeps the last conv layer's kernels (and the FC
        layers) because most parameters are in fc6, which takes conv5 as input.
        """
        if not self.half_kernels:
            return self.convs
        halved = tuple(dataclasses.replace(c, features=c.features // 2) for c in self.convs[:4])
        return (*halved, *self.convs[4:])


NETWORK_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(ModelSpec)
    if f.name not in ('variant', 'compute_dtype', 'tower_local_lrn', 'model_parallel_towers')
)

# Section 3.5 / Figure 2. conv1 has no padding: 11x11 at stride 4 gives 55x55 only from a 227
# input ((227 - 11) / 4 + 1 = 55); the paper's "224" gives 54.25. torchvision instead pads 2.
_PAPER_CONVS = (
    Conv(96, 11, 4, 'VALID'),
    Conv(256, 5, 1, 2),
    Conv(384, 3, 1, 1),
    Conv(384, 3, 1, 1),
    Conv(256, 3, 1, 1),
)

VARIANTS: dict[str, ModelSpec] = {
    'paper': ModelSpec('paper', _PAPER_CONVS, 4096, (227,)),
    'single_tower': ModelSpec('single_tower', _PAPER_CONVS, 4096, (227,), groups=1),
    'caffenet': ModelSpec('caffenet', _PAPER_CONVS, 4096, (227,), norm_after_pool=True),
    'owt': ModelSpec(
        'owt',
        (Conv(64, 11, 4, 2), Conv(192, 5, 1, 2), Conv(384, 3), Conv(256, 3), Conv(256, 3)),
        4096,
        (224,),
        norm='none',
        groups=1,
        dropout_before_fc=True,
    ),
    'bn': ModelSpec(
        'bn', _PAPER_CONVS, 4096, (227,), norm='bn', norm_layers=(1, 2, 3, 4, 5), groups=1
    ),
    # 28x28 (Fashion-MNIST) or 32x32 (CIFAR-10): conv1 shrinks from 11x11/4 to 5x5/1 because the
    # image is 8x smaller than the paper's; widths are a third of the paper's so that an epoch of
    # Fashion-MNIST takes minutes on two CPU cores. Pools 1 and 2 pad (28 -> 14 -> 7), pool5 does
    # not (7 -> 3), so the towers, LRN placement and three pools stay where the paper has them.
    'small': ModelSpec(
        'small',
        (Conv(32, 5), Conv(64, 5), Conv(96, 3), Conv(96, 3), Conv(64, 3)),
        512,
        (28, 32),
        pool_padding=('SAME', 'SAME', 'VALID'),
        init_scheme='modern',
    ),
}

# The config fields that override a variant's preset when not None (same names in ModelSpec).
SWITCHES = ('norm', 'pooling', 'activation', 'dropout_rate', 'groups', 'init_scheme')
# Every config field that defines the network: what checkpoint compatibility compares.
NETWORK_CONFIG_FIELDS = ('model', 'num_classes', *SWITCHES, 'half_kernels')


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """Section 5's SGD and its learning-rate schedule, resolved."""

    learning_rate: float
    momentum: float
    weight_decay: float
    decay_biases: bool
    schedule: str
    plateau_factor: float
    plateau_patience: int
    plateau_max_reductions: int
    step_every_epochs: float
    warmup_epochs: float
    freeze: tuple[str, ...]  # top-level layers never updated


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What the input pipeline feeds the network, resolved (``eval_batch_size`` filled in)."""

    dataset: str
    image_size: int
    resize_size: int
    crop_padding: int
    batch_size: int  # global, over all hosts and devices
    eval_batch_size: int
    random_crop: bool
    random_flip: bool
    pca_noise_std: float
    normalization: str
    eval_crops: int
    eval_num_examples: int | None  # None: the whole split; 0: no evaluation


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(field: str, value: Any, accepted: Sequence[Any], name: str | None = None) -> None:
    _require(
        value in accepted,
        f'Unknown {name or field} {value!r} (config.{field}); accepted: '
        f'{", ".join(map(repr, accepted))}.',
    )


def model_spec(variant: str, **fields: Any) -> ModelSpec:
    """The variant's preset with every field that is not None replaced, checked."""
    _one_of('model', variant, tuple(VARIANTS), 'model variant')
    overrides = {k: v for k, v in fields.items() if v is not None}
    spec = dataclasses.replace(VARIANTS[variant], **overrides)
    _one_of('norm', spec.norm, NORMS)
    _one_of('pooling', spec.pooling, POOLINGS)
    _one_of('activation', spec.activation, ACTIVATIONS)
    _one_of('init_scheme', spec.init_scheme, INITS)
    _one_of('groups', spec.groups, GROUPS)
    _require(
        0.0 <= spec.dropout_rate < 1.0,
        f'config.dropout_rate must be in [0, 1), got {spec.dropout_rate}.',
    )
    _require(spec.num_classes > 0, f'config.num_classes={spec.num_classes} must be positive.')
    if spec.model_parallel_towers:
        _require(
            variant == 'paper' and spec.groups == TOWERS,
            'config.model_parallel_towers=True needs the two-tower paper model '
            f"(config.model='paper'), got model={variant!r}, groups={spec.groups}.",
        )
        _require(
            spec.norm != 'bn',
            'config.model_parallel_towers=True needs norm=lrn or none, not bn.',
        )
        _require(
            spec.num_classes % TOWERS == 0,
            f'config.num_classes={spec.num_classes}: fc8 splits its outputs over the '
            f'{TOWERS} towers, so num_classes must be even for model_parallel_towers.',
        )
        _require(
            spec.tower_local_lrn or spec.norm != 'lrn',
            "config.model_parallel_towers=True runs LRN within each tower (as the paper's two "
            'GPUs did); config.tower_local_lrn=False cannot be placed on two devices.',
        )
    if spec.half_kernels:
        _require(
            spec.groups == 1,
            "config.half_kernels=True is Section 3.2's one-GPU net, which has no towers: it "
            f'needs groups=1, but model {variant!r} has groups={spec.groups}. Set '
            '--config.groups=1 (or use a variant whose groups is 1, e.g. single_tower).',
        )
    if spec.tower_local_lrn:
        _require(
            spec.groups == TOWERS,
            f'config.tower_local_lrn=True normalises within each of the {TOWERS} towers, so it '
            f'needs groups={TOWERS}; got groups={spec.groups}.',
        )
    return spec


def resolve_model(config: ml_collections.ConfigDict) -> ModelSpec:
    """The network ``config`` describes (``config.model``, its switches, dtype and towers)."""
    towers = bool(config.model_parallel_towers)
    tower_local_lrn = config.get('tower_local_lrn')  # absent from configs of older runs
    return model_spec(
        config.model,
        num_classes=config.num_classes,
        **{name: config[name] for name in SWITCHES},
        half_kernels=bool(config.get('half_kernels', False)),  # absent from older runs too
        compute_dtype='bfloat16' if config.half_precision else 'float32',
        tower_local_lrn=towers if tower_local_lrn is None else bool(tower_local_lrn),
        model_parallel_towers=towers,
    )


def layer_names(value: str | None) -> tuple[str, ...]:
    """The layer names of a comma-separated field such as ``config.freeze`` (None: none)."""
    return tuple(name.strip() for name in (value or '').split(',') if name.strip())


def resolve_optimizer(config: ml_collections.ConfigDict) -> OptimizerSpec:
    _one_of('lr_schedule', config.lr_schedule, SCHEDULES, 'learning-rate schedule')
    _require(
        isinstance(config.learning_rate, int | float)
        and math.isfinite(config.learning_rate)
        and config.learning_rate > 0,
        f'config.learning_rate={config.learning_rate} must be a positive number (paper: 0.01).',
    )
    _require(0 <= config.momentum < 1, f'config.momentum={config.momentum} must be in [0, 1).')
    _require(config.weight_decay >= 0, f'config.weight_decay={config.weight_decay} is negative.')
    return OptimizerSpec(
        learning_rate=float(config.learning_rate),
        momentum=float(config.momentum),
        weight_decay=float(config.weight_decay),
        decay_biases=bool(config.decay_biases),
        schedule=config.lr_schedule,
        plateau_factor=float(config.plateau_factor),
        plateau_patience=int(config.plateau_patience),
        plateau_max_reductions=int(config.plateau_max_reductions),
        step_every_epochs=float(config.step_every_epochs),
        warmup_epochs=float(config.warmup_epochs),
        freeze=layer_names(config.get('freeze')),
    )


def resolve_data(config: ml_collections.ConfigDict) -> DataSpec:
    _one_of('dataset', config.dataset, DATASETS)
    _one_of('normalization', config.normalization, NORMALIZATIONS)
    _one_of('eval_crops', config.eval_crops, EVAL_CROPS)
    eval_batch_size = config.eval_batch_size
    if eval_batch_size is None:
        eval_batch_size = config.batch_size
    for field, size in (('batch_size', config.batch_size), ('eval_batch_size', eval_batch_size)):
        _require(size > 0, f'config.{field}={size} must be positive.')
    _require(
        config.input_threads >= 0,
        f'config.input_threads={config.input_threads} must be 0 (every core) or positive.',
    )
    for field in ('validation_examples', 'train_clean_examples'):
        _require(
            config[field] >= 0, f'config.{field}={config[field]} must be 0 (none) or positive.'
        )
    _require(
        config.eval_num_examples is None or config.eval_num_examples >= 0,
        f'config.eval_num_examples={config.eval_num_examples} must be None (the whole split), '
        f'0 (no evaluation) or a positive number of images.',
    )
    return DataSpec(
        dataset=config.dataset,
        image_size=int(config.image_size),
        resize_size=int(config.resize_size),
        crop_padding=int(config.crop_padding),
        batch_size=int(config.batch_size),
        eval_batch_size=int(eval_batch_size),
        random_crop=bool(config.random_crop),
        random_flip=bool(config.random_flip),
        pca_noise_std=float(config.pca_noise_std),
        normalization=config.normalization,
        eval_crops=int(config.eval_crops),
        eval_num_examples=config.eval_num_examples,
    )


def resolve(config: ml_collections.ConfigDict) -> tuple[ModelSpec, OptimizerSpec, DataSpec]:
    """The three specs of ``config``; :class:`ConfigError` names the first field that fails."""
    data = resolve_data(config)
    optimizer = resolve_optimizer(config)
    model = resolve_model(config)
    _require(
        data.image_size in model.input_sizes,
        f'config.image_size={data.image_size} does not fit model {model.variant!r}, which takes '
        f'{" or ".join(map(str, model.input_sizes))}.',
    )
    return model, optimizer, data


def check_tower_devices(local_device_count: int) -> None:
    """Raises :class:`ConfigError` unless the local devices pair up into towers."""
    _require(
        local_device_count >= TOWERS and local_device_count % TOWERS == 0,
        f'config.model_parallel_towers=True puts the two towers of Section 3.2 on two '
        f'devices of each data replica, so it needs an even number of local devices; found '
        f'{local_device_count}. Use 2, 4, ... devices (on CPU: '
        f'XLA_FLAGS=--xla_force_host_platform_device_count=2), or turn the switch off.',
    )


def check_devices(
    config: ml_collections.ConfigDict, device_count: int, local_device_count: int
) -> None:
    """Raises :class:`ConfigError` unless the batches split over these devices (and towers).

    Called where the devices are used (the placements), so that whether a config is valid does
    not depend on the machine it is checked on. With ``model_parallel_towers`` a batch splits
    over the device pairs only.
    """
    data_devices = device_count
    if config.model_parallel_towers:
        check_tower_devices(local_device_count)
        data_devices = device_count // TOWERS
    for field in ('batch_size', 'eval_batch_size'):
        size = config[field] if config[field] is not None else config.batch_size
        fix = max(1, size // data_devices) * data_devices
        _require(
            size > 0 and size % data_devices == 0,
            f'config.{field}={size} must be a positive multiple of the {data_devices} devices '
            f'(over all hosts); use e.g. --config.{field}={fix}.',
        )
