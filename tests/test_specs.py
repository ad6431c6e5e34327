"""alexnet_jax.specs: the config resolved once, against the variant table written out by hand."""

import json
import os
import subprocess
import sys

import pytest

from alexnet_jax import specs
from alexnet_jax.config_checks import ConfigError, validate_config
from configs import cifar10, default, fashion_mnist, imagenet

# The table in specs.py's docstring (and the paper / tutorials it cites), written out again:
# input sizes, conv output features, hidden width, norm, normalised layers, groups, init, and
# the two order switches (norm after pool, dropout before fc).
TABLE = {
    'paper': ((227,), (96, 256, 384, 384, 256), 4096, 'lrn', (1, 2), 2, 'paper', False, False),
    'single_tower': (
        (227,),
        (96, 256, 384, 384, 256),
        4096,
        'lrn',
        (1, 2),
        1,
        'paper',
        False,
        False,
    ),
    'caffenet': ((227,), (96, 256, 384, 384, 256), 4096, 'lrn', (1, 2), 2, 'paper', True, False),
    'owt': ((224,), (64, 192, 384, 256, 256), 4096, 'none', (1, 2), 1, 'paper', False, True),
    'bn': ((227,), (96, 256, 384, 384, 256), 4096, 'bn', (1, 2, 3, 4, 5), 1, 'paper', False, False),
    'small': ((28, 32), (32, 64, 96, 96, 64), 512, 'lrn', (1, 2), 2, 'modern', False, False),
}


def _config(**fields):
    c = default.get_config()
    for key, value in fields.items():
        c[key] = value
    return c


@pytest.mark.parametrize('variant', list(TABLE))
def test_each_variant_resolves_to_the_documented_table(variant):
    sizes, features, hidden, norm, layers, groups, init, after_pool, before_fc = TABLE[variant]
    spec = specs.resolve_model(_config(model=variant, image_size=sizes[0]))
    assert spec.variant == variant and spec.input_sizes == sizes
    assert tuple(c.features for c in spec.convs) == features and spec.hidden == hidden
    assert (spec.norm, spec.norm_layers, spec.groups, spec.init_scheme) == (
        norm,
        layers,
        groups,
        init,
    )
    assert (spec.norm_after_pool, spec.dropout_before_fc) == (after_pool, before_fc)
    # Section 3.4, the ReLU and Section 4.2 for every variant; float32; one device.
    assert (spec.pooling, spec.activation, spec.dropout_rate) == ('overlapping', 'relu', 0.5)
    assert (spec.compute_dtype, spec.tower_local_lrn, spec.model_parallel_towers) == (
        'float32',
        False,
        False,
    )
    assert spec.num_classes == 1000


def test_switches_override_the_preset_and_none_keeps_it():
    spec = specs.resolve_model(
        _config(model='small', norm='bn', pooling='non_overlapping', dropout_rate=0.2, groups=1)
    )
    assert (spec.norm, spec.pooling, spec.dropout_rate, spec.groups) == (
        'bn',
        'non_overlapping',
        0.2,
        1,
    )
    assert spec.activation == 'relu' and spec.init_scheme == 'modern'  # still the preset's
    assert specs.resolve_model(_config(half_precision=True)).compute_dtype == 'bfloat16'


def test_tower_local_lrn_follows_the_towers_unless_set():
    assert specs.resolve_model(_config(model_parallel_towers=True)).tower_local_lrn
    assert specs.resolve_model(_config(tower_local_lrn=True)).tower_local_lrn
    assert not specs.resolve_model(_config()).tower_local_lrn
    with pytest.raises(ConfigError, match='tower_local_lrn'):
        specs.resolve_model(_config(model_parallel_towers=True, tower_local_lrn=False))
    with pytest.raises(ConfigError, match='groups=2'):
        specs.resolve_model(_config(model='single_tower', tower_local_lrn=True))


def test_network_is_the_same_however_the_config_spells_it():
    spelled = _config(model='single_tower', groups=2, norm='lrn', half_precision=True)
    assert specs.resolve_model(spelled).network() == specs.resolve_model(_config()).network()
    assert specs.resolve_model(_config(model='caffenet')).network() != (
        specs.resolve_model(_config()).network()
    )


@pytest.mark.parametrize(
    ('fields', 'named'),
    [
        ({'model': 'vgg'}, 'config.model'),
        ({'norm': 'layer'}, 'config.norm'),
        ({'groups': 3}, 'config.groups'),
        ({'dropout_rate': 1.0}, 'config.dropout_rate'),
        ({'dataset': 'mnist'}, 'config.dataset'),
        ({'eval_crops': 5}, 'config.eval_crops'),
        ({'lr_schedule': 'linear'}, 'config.lr_schedule'),
        ({'learning_rate': 0.0}, 'config.learning_rate'),
        ({'momentum': 1.0}, 'config.momentum'),
        ({'batch_size': 0}, 'config.batch_size'),
        ({'eval_num_examples': -1}, 'config.eval_num_examples'),
        ({'image_size': 224}, 'config.image_size'),
        ({'model_parallel_towers': True, 'norm': 'bn'}, 'model_parallel_towers'),
        ({'model_parallel_towers': True, 'model': 'owt'}, 'model_parallel_towers'),
        ({'model_parallel_towers': True, 'num_classes': 5}, 'num_classes'),
    ],
)
def test_a_field_that_cannot_work_is_named(fields, named):
    with pytest.raises(ConfigError, match=named.replace('.', r'\.')):
        specs.resolve(_config(**fields))


def test_optimizer_and_data_specs_resolve_their_fields():
    _, optimizer, data = specs.resolve(_config(freeze=' conv1, conv2 ,', batch_size=64))
    assert optimizer.freeze == ('conv1', 'conv2')
    assert (optimizer.learning_rate, optimizer.momentum, optimizer.weight_decay) == (
        0.01,
        0.9,
        0.0005,
    )
    assert optimizer.schedule == 'plateau' and optimizer.plateau_max_reductions == 3
    assert data.batch_size == data.eval_batch_size == 64  # eval_batch_size=None: batch_size
    assert specs.resolve(_config(eval_batch_size=32))[2].eval_batch_size == 32


@pytest.mark.parametrize('module', [default, imagenet, fashion_mnist, cifar10])
def test_every_shipped_config_resolves(module):
    specs.resolve(module.get_config())


def test_check_devices_names_the_batch_and_the_towers():
    specs.check_devices(_config(batch_size=12), 4, 4)
    with pytest.raises(ConfigError, match=r'config\.batch_size=10 .* 4 devices.*=8'):
        specs.check_devices(_config(batch_size=10), 4, 4)
    with pytest.raises(ConfigError, match=r'config\.eval_batch_size=6'):
        specs.check_devices(_config(batch_size=8, eval_batch_size=6), 4, 4)
    towers = _config(model_parallel_towers=True, batch_size=2)
    specs.check_devices(towers, 4, 4)  # two replicas of two towers: one image each
    with pytest.raises(ConfigError, match='even number of local devices; found 3'):
        specs.check_devices(towers, 3, 3)


_VALIDATE = """
import json, sys
from alexnet_jax.config_checks import ConfigError, validate_config
from configs import default
answers = []
for fields in json.loads(sys.argv[1]):
    c = default.get_config()
    c.update(fields)
    try:
        validate_config(c)
        answers.append('ok')
    except ConfigError as error:
        answers.append(str(error))
import jax
print(json.dumps([jax.device_count(), answers]))
"""


def test_validate_config_gives_the_same_answer_on_any_device_count():
    """A sweep's validity must not depend on the machine: 1 and 3 fake devices agree."""
    configs = [
        {},  # batch 128: not a multiple of 3 devices
        {'batch_size': 6, 'eval_batch_size': 9},
        {'model_parallel_towers': True},  # needs an even number of local devices
        {'norm': 'lnr'},  # and a real error stays an error everywhere
    ]
    results = []
    for count in (1, 3):
        env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={count}')
        env['JAX_PLATFORMS'] = 'cpu'
        out = subprocess.run(
            [sys.executable, '-c', _VALIDATE, json.dumps(configs)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    (one, answers_one), (three, answers_three) = results
    assert (one, three) == (1, 3)  # the fake device counts really differed
    assert answers_one == answers_three
    assert answers_one[:3] == ['ok'] * 3 and "Unknown norm 'lnr'" in answers_one[3]
    validate_config(_config())  # and in this process too
