"""Everyday use: the package metadata agrees with requirements.txt, every console script imports,
and config_help documents every field from configs/default.py's own comments."""

import json
import logging
import os
import re
import subprocess
import sys
import tomllib

import numpy as np
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
    'alexnet-jax-prepare': 'alexnet_jax.prepare:run',
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
        'or fashion_mnist | cifar10 | imagefolder | synthetic | prepared'
    )
    assert by_name['num_classes'].description.startswith('classes of the dataset')
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


# --- evaluate and predict on a trained run ---


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
    from alexnet_jax import train
    from tests.test_train import small_config

    workdir = tmp_path_factory.mktemp('run')
    config = small_config(num_train_steps=2, checkpoint_every_steps=100, eval_every_steps=100)
    train.train_and_evaluate(config, str(workdir))
    return workdir, config


def _command(name, *args):
    return subprocess.run(
        [sys.executable, '-m', name, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_evaluate_prints_its_result_and_no_library_logs(trained_run):
    workdir, _ = trained_run
    proc = _command('alexnet_jax.evaluate', f'--workdir={workdir}', '--crops=1')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith('step 2, 1 crop(s), 50 images: top-1 error ')
    assert len(proc.stdout.splitlines()) == 1
    # absl's INFO lines start 'I1202 17:20:16...'; Python's default format 'INFO:'.
    info = [line for line in proc.stderr.splitlines() if re.match(r'I\d{4} |INFO', line)]
    assert info == [] and proc.stderr.strip() == '', proc.stderr[:2000]


def test_evaluate_names_a_split_the_run_does_not_hold(trained_run):
    workdir, _ = trained_run  # trained with validation_examples = 0
    proc = _command('alexnet_jax.evaluate', f'--workdir={workdir}', '--split=validation')
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith(
        f'error: The run in {workdir} has no validation split (config.validation_examples = 0)'
    ), proc.stderr[-2000:]


def test_restored_state_equals_the_checkpoint_read_directly(trained_run):
    import jax
    import numpy as np
    import orbax.checkpoint as ocp
    from flax import serialization

    from alexnet_jax import trained

    workdir, config = trained_run
    state = trained.load_trained_state(config, str(workdir))
    assert int(state.step) == 2
    # A second path: orbax's own restore without any target, as stored.
    raw = ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / '2' / 'state')
    restored = serialization.to_state_dict(state)
    leaves = jax.tree_util.tree_leaves_with_path(restored)
    raw_leaves = dict(jax.tree_util.tree_leaves_with_path(raw))
    assert len(leaves) == len(raw_leaves)
    for path, leaf in leaves:
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(raw_leaves[path]))
    assert any(np.asarray(leaf).any() for _, leaf in leaves)  # not the zero template


def test_predict_reads_folders_and_prints_json(trained_run, tmp_path):
    from PIL import Image

    workdir, _ = trained_run
    folder = tmp_path / 'photos'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ('b.png', 'a.jpg', 'C.PNG'):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), np.uint8)).save(folder / name)
    (folder / 'notes.txt').write_text('not an image')
    (folder / 'sub').mkdir()
    proc = _command('alexnet_jax.predict', f'--workdir={workdir}', '--json', '--top=3', folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip() == '', proc.stderr[:2000]
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r['path'] for r in records] == [str(folder / n) for n in ('C.PNG', 'a.jpg', 'b.png')]
    for record in records:
        probs = [entry['prob'] for entry in record['top']]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1
        assert all(entry['name'] == f'class_{entry["class"]}' for entry in record['top'])
    # The text output of the same file agrees with the JSON.
    proc = _command('alexnet_jax.predict', f'--workdir={workdir}', '--top=3', folder / 'a.jpg')
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == str(folder / 'a.jpg')
    text = [(line.split()[1], float(line.split()[0].rstrip('%'))) for line in lines[1:]]
    expected = [(e['name'], round(100 * e['prob'], 2)) for e in records[1]['top']]
    assert text == expected


def test_predict_names_a_missing_path_or_an_empty_folder(trained_run, tmp_path):
    workdir, _ = trained_run
    missing = tmp_path / 'nope.jpg'
    proc = _command('alexnet_jax.predict', f'--workdir={workdir}', missing)
    assert proc.returncode != 0
    assert proc.stderr.strip() == f'error: {missing} does not exist: name image files or ' + (
        'folders of them.'
    )
    proc = _command('alexnet_jax.predict', f'--workdir={workdir}', tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith(f'error: {tmp_path} is a folder without image files')


def test_quiet_libraries_sets_the_libraries_to_warning_only(monkeypatch):
    import logging

    from absl import logging as absl_logging

    from alexnet_jax import cli

    names = ('jax._src.xla_bridge', 'orbax.checkpoint', 'tensorflow_datasets.core', 'absl')
    saved = {n: logging.getLogger(n).level for n in (*cli.LIBRARY_LOGGERS, 'alexnet_jax')}
    verbosity = absl_logging.get_verbosity()
    ours = logging.getLogger('alexnet_jax')
    ours.setLevel(logging.INFO)
    monkeypatch.setattr(sys, 'unraisablehook', sys.unraisablehook)  # restored afterwards
    try:
        for name in names:
            logging.getLogger(name.split('.')[0]).setLevel(logging.DEBUG)
        cli.quiet_libraries()
        for name in names:
            assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name
        assert ours.level == logging.INFO  # ours stays as the command set it
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        absl_logging.set_verbosity(verbosity)


def test_closed_event_loop_reports_are_dropped_and_others_kept(monkeypatch):
    from alexnet_jax import cli

    seen = []
    monkeypatch.setattr(sys, 'unraisablehook', lambda report: seen.append(report.exc_value))
    cli.quiet_libraries()
    cli.quiet_libraries()  # a second call does not wrap the hook again

    class RaisesWhenCollected:
        def __init__(self, error):
            self.error = error

        def __del__(self):
            raise self.error

    RaisesWhenCollected(RuntimeError('Event loop is closed'))  # what orbax's threads raise
    RaisesWhenCollected(RuntimeError('something else'))
    RaisesWhenCollected(ValueError('Event loop is closed'))
    assert [(type(e), str(e)) for e in seen] == [
        (RuntimeError, 'something else'),
        (ValueError, 'Event loop is closed'),
    ]


def test_without_a_working_tensorflow_a_run_keeps_its_metrics_and_says_why(tmp_path, monkeypatch):
    """TensorBoard's writer needs TensorFlow; when it cannot start, metrics.jsonl still has all."""
    import types

    from alexnet_jax import metrics

    broken = types.ModuleType('flax.metrics.tensorboard')

    def no_tensorflow(*args, **kwargs):
        raise RuntimeError('tensorflow.make_tensor_proto: TensorFlow is not installed')

    broken.SummaryWriter = no_tensorflow
    monkeypatch.setitem(sys.modules, 'flax.metrics.tensorboard', broken)
    import flax.metrics  # once imported, `from flax.metrics import tensorboard` reads this

    monkeypatch.setattr(flax.metrics, 'tensorboard', broken, raising=False)
    # Our own handler on the module's logger: other tests change the project logger's
    # propagation and level (a progress bar), which caplog depends on.
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger('alexnet_jax.metrics')
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        writer = metrics.Writer(str(tmp_path))
        writer.write_scalars(3, {'train_loss': 0.5, 'learning_rate': 0.01})
        writer.close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    messages = [r.getMessage() for r in records]
    assert any(
        'No TensorBoard events' in m and 'TensorFlow is not installed' in m for m in messages
    )
    rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert rows == [{'step': 3, 'train_loss': 0.5, 'learning_rate': 0.01}]
    assert not (tmp_path / 'tensorboard').exists()
