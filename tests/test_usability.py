"""Everyday use: the package metadata agrees with requirements.txt, every console script imports,
and config_help documents every field from configs/default.py's own comments."""

import os
import re
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

from configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject():
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        return tomllib.load(f)


def _requirement_lines(name):
    """requirements file `name` as (section, Requirement) pairs; `-r` lines are followed."""
    out, section = [], 'runtime'
    with open(os.path.join(ROOT, name)) as f:
        for raw in f:
            line = raw.strip()
            if line.startswith('# Tests and lint'):
                section = 'test'
            line = line.split('#')[0].strip()
            if not line:
                continue
            if line.startswith('-r '):
                out += _requirement_lines(line[3:].strip())
                continue
            out.append((section, Requirement(line)))
    return out


def _key(requirement):
    """A comparable form: normalised name, sorted extras, the specifier set, the marker."""
    name = re.sub(r'[-_.]+', '-', requirement.name).lower()
    return (name, tuple(sorted(requirement.extras)), str(requirement.specifier), requirement.marker)


def test_pyproject_dependencies_match_requirements_txt():
    project = _pyproject()['project']
    lines = _requirement_lines('requirements.txt')
    runtime = sorted(_key(r) for section, r in lines if section == 'runtime')
    tests = sorted(_key(r) for section, r in lines if section == 'test')
    assert runtime and tests
    assert runtime == sorted(_key(Requirement(d)) for d in project['dependencies'])
    extras = project['optional-dependencies']
    assert tests == sorted(_key(Requirement(d)) for d in extras['test'])
    # The accelerator files are requirements.txt plus the extra's jax, in jax's version range.
    (jax,) = [r for _, r in lines if r.name == 'jax']
    for kind, accelerator in (('gpu', 'cuda13'), ('tpu', 'tpu')):
        added = [r for _, r in _requirement_lines(f'requirements-{kind}.txt')][len(lines) :]
        assert [_key(r) for r in added] == [_key(Requirement(d)) for d in extras[kind]]
        assert [(r.name, r.extras, r.specifier) for r in added] == [
            ('jax', {accelerator}, jax.specifier)
        ]


SCRIPTS = {
    'alexnet-jax-train': 'alexnet_jax.main:run',
    'alexnet-jax-evaluate': 'alexnet_jax.evaluate:run',
    'alexnet-jax-predict': 'alexnet_jax.predict:run',
    'alexnet-jax-dataset-stats': 'alexnet_jax.dataset_stats:run',
    'alexnet-jax-config-help': 'alexnet_jax.config_help:run',
}


def test_console_scripts_are_the_commands():
    assert _pyproject()['project']['scripts'] == SCRIPTS


@pytest.mark.parametrize('name', sorted(SCRIPTS))
def test_console_script_imports_to_a_callable(name):
    # A fresh process each: the command modules define absl flags (two of them --workdir).
    module, _, attr = _pyproject()['project']['scripts'][name].partition(':')
    check = (
        f'import importlib, inspect; f = getattr(importlib.import_module({module!r}), {attr!r}); '
        'assert callable(f) and not inspect.signature(f).parameters, f'
    )
    proc = subprocess.run(
        [sys.executable, '-c', check], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f'{name}: {proc.stderr[-1500:]}'


def test_packages_ship_the_configs():
    setuptools = _pyproject()['tool']['setuptools']
    assert set(setuptools['packages']) == {'alexnet_jax', 'configs'}
    assert _pyproject()['build-system']['build-backend'] == 'setuptools.build_meta'


# --- config_help ---


def _comments_by_regex():
    """configs/default.py's trailing comments, read line by line (not the way config_help does)."""
    found = {}
    with open(os.path.join(ROOT, 'configs', 'default.py')) as f:
        for line in f:
            m = re.match(r'\s*c\.(\w+)\s*=\s*[^#]*?\S\s+#\s?(.*\S)\s*$', line)
            if m:
                found[m.group(1)] = m.group(2)
            elif (m := re.match(r'\s*c\.(\w+)\s*=', line)) is not None:
                found[m.group(1)] = ''
    return found


def test_config_help_parses_every_field_and_its_comment():
    from alexnet_jax import config_help

    fields = config_help.default_fields()
    names = [f.name for f in fields]
    assert names == list(_comments_by_regex())  # the file's order
    assert set(names) == set(default.get_config())
    assert {f.name: f.description for f in fields} == _comments_by_regex()
    by_name = {f.name: f for f in fields}
    assert by_name['dataset'].description == (
        'imagenet2012 | fashion_mnist | cifar10 | imagefolder | synthetic'
    )
    assert by_name['num_classes'].description == ''  # no comment: listed all the same
    assert by_name['batch_size'].section == 'Optimisation (alexnet_jax/optim.py)'


def test_parse_fields_handles_multiline_values_and_non_trailing_comments():
    from alexnet_jax import config_help

    source = (
        'def get_config():\n'
        '    cfg = make()\n'
        '    # --- Part A ---\n'
        '    # a comment on its own line is not a description\n'
        '    cfg.alpha = 1\n'
        '    cfg.beta = (  # not this one\n'
        "        'x',\n"
        '    )  # but this one (the last line)\n'
        "    cfg.gamma = '#not a comment'  # gamma's\n"
        '    other.delta = 2  # not a field of cfg\n'
        '    return cfg\n'
    )
    fields = config_help.parse_fields(source)
    assert [(f.name, f.section, f.description) for f in fields] == [
        ('alpha', 'Part A', ''),
        ('beta', 'Part A', 'but this one (the last line)'),
        ('gamma', 'Part A', "gamma's"),
    ]


def _config_help(*args):
    return subprocess.run(
        [sys.executable, '-m', 'alexnet_jax.config_help', *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize('config_file', [None, 'configs/fashion_mnist.py'])
def test_config_help_command_prints_every_field(config_file):
    args = ['--config', config_file, '--config.batch_size=64'] if config_file else []
    proc = _config_help(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = {}
    for line in proc.stdout.splitlines():
        m = re.match(r'  (\w+)\s+= (.*?)(?:\s+# (.*))?$', line)
        if m:
            lines[m.group(1)] = (m.group(2), m.group(3) or '')
    expected = default.get_config()
    if config_file:
        from configs import fashion_mnist

        expected = fashion_mnist.get_config()
        expected.batch_size = 64
    assert set(lines) == set(expected)
    comments = _comments_by_regex()
    defaults = default.get_config()
    for name, (value, note) in lines.items():
        assert value == repr(expected[name])
        assert note.startswith(comments[name])
        if expected[name] != defaults[name]:
            assert note.endswith(f'[default: {defaults[name]!r}]')
    if config_file:
        assert lines['dataset'][0] == "'fashion_mnist'" and lines['batch_size'][0] == '64'
