"""The sweep runner, its report and figures, on tiny synthetic runs (a few seconds each)."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from alexnet_jax import train
from experiments import figures, report, sweep
from experiments.figures import filter_mosaic

TINY_BUDGET = {
    'dataset': 'synthetic',
    'synthetic_num_train': 64,
    'synthetic_num_eval': 20,
    'batch_size': 16,
    'num_train_steps': 4,
    'log_every_steps': 2,
    'eval_every_steps': 100,
    'checkpoint_every_steps': 2,
    'lr_schedule': 'constant',
}


def write_sweep(tmp_path, grid, seeds=(0,), budget=None, extra='', name='tiny'):
    path = tmp_path / f'{name}.py'
    path.write_text(
        textwrap.dedent(
            f"""\
            BASE = 'configs/fashion_mnist.py'
            grid = {grid!r}
            seeds = {list(seeds)!r}
            budget = {budget if budget is not None else TINY_BUDGET!r}
            report = {{'target_train_error': [0.95]}}
            {extra}
            """
        )
    )
    return str(path)


def _json(*parts):
    with open(os.path.join(*parts)) as f:
        return json.load(f)


def _results_mtimes(sweep_dir):
    return {
        name: os.stat(os.path.join(sweep_dir, name, 'results.json')).st_mtime_ns
        for name in os.listdir(sweep_dir)
        if os.path.exists(os.path.join(sweep_dir, name, 'results.json'))
    }


def test_tiny_sweep_runs_skips_finished_runs_reports_and_draws(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path, {'dropout_rate': [0.0, 0.5]})
    sweep_dir = str(tmp_path / 'sweep')
    assert sweep.main(['--sweep', sweep_file, '--workdir', sweep_dir]) == 0
    names = ['dropout_rate=0.0__seed=0', 'dropout_rate=0.5__seed=0']
    first = _results_mtimes(sweep_dir)
    assert sorted(first) == names
    for name in names:
        results = _json(sweep_dir, name, 'results.json')
        assert results['step'] == 4 and results['eval_count'] == 20
        assert _json(sweep_dir, name, 'run.json')['seed'] == 0

    # Rerun: both finished, nothing retrained.
    assert sweep.main(['--sweep', sweep_file, '--workdir', sweep_dir]) == 0
    assert _results_mtimes(sweep_dir) == first
    assert '0 run, 2 skipped' in capsys.readouterr().out
    # The config.json training writes is what --reuse compares: the same sweep elsewhere copies.
    copies = str(tmp_path / 'copies')
    assert sweep.main(['--sweep', sweep_file, '--workdir', copies, '--reuse', sweep_dir]) == 0
    assert '0 run, 0 skipped (finished before), 2 copied' in capsys.readouterr().out

    capsys.readouterr()
    assert report.main([sweep_dir]) == 0
    text = capsys.readouterr().out
    assert '| dropout_rate | seeds | test top-1 err %' in text
    assert '| 0.0 | 1 |' in text and '| 0.5 | 1 |' in text
    assert 'steps to 95% train err' in text
    with open(os.path.join(sweep_dir, 'report.md')) as f:
        assert f.read().strip() == text.strip()
    for png in ('learning_curves.png', 'test_error.png'):
        with open(os.path.join(sweep_dir, png), 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'

    # Figures 3 and 4 from the first run's checkpoint (the CLI loads the same way).
    config, state = figures.load_run(os.path.join(sweep_dir, names[0]))
    for out in (
        figures.plot_filters(config, state, str(tmp_path / 'filters.png')),
        figures.plot_neighbours(config, state, str(tmp_path / 'nn.png'), 2, 3, train_subset=20),
    ):
        assert os.path.getsize(out) > 1000


def _fake_training(fail_on_rate):
    """Stands in for train_and_evaluate: fails for one dropout rate, else writes a tiny run."""
    calls = []

    def fake(config, workdir):
        calls.append(workdir)
        if config.dropout_rate == fail_on_rate:
            raise FloatingPointError('The training loss became nan at step 3.')
        with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
            for step, error in ((2, 0.9), (4, 0.6)):
                f.write(json.dumps({'step': step, 'train_top1_error': error}) + '\n')
            f.write(json.dumps({'step': 4, 'eval_top1_error': 0.7}) + '\n')
        results = {'step': 4, 'eval_top1_error': 0.7, 'images_per_sec': 100.0}
        with open(os.path.join(workdir, 'results.json'), 'w') as f:
            json.dump(results, f)
        return results

    return fake, calls


def test_a_failed_run_is_recorded_the_sweep_goes_on_and_the_report_lists_it(tmp_path, monkeypatch):
    fake, calls = _fake_training(fail_on_rate=0.5)
    monkeypatch.setattr(train, 'train_and_evaluate', fake)
    sweep_file = write_sweep(tmp_path, [{'dropout_rate': 0.5}, {'dropout_rate': 0.0}], [0, 1])
    sweep_dir = str(tmp_path / 'sweep')
    assert sweep.main(['--sweep', sweep_file, '--workdir', sweep_dir]) == 1  # some failed
    assert len(calls) == 4  # the runs after the failures still ran
    failed = _json(sweep_dir, 'dropout_rate=0.5__seed=1', 'failed.json')
    assert failed['error'].startswith('FloatingPointError: The training loss became nan')
    assert 'Traceback' in failed['traceback']

    text = report.build_report(sweep_dir, targets=[0.75])
    assert '### Failed runs' in text
    assert '- `dropout_rate=0.5__seed=0`: FloatingPointError: The training loss' in text
    assert '| 0.5 | 0 (+2 failed) |' in text
    # 0.0: test 70%, final train 60% (last 10% of steps: the step-4 window); the mean of the
    # windows up to step 4, (90 + 60) / 2, reaches 75% there.
    assert '| 0.0 | 2 | 70.00 ± 0.00 | 60.00 ± 0.00 | 10.00 ± 0.00 | 4 ± 0 |' in text

    # Rerunning retries the failed runs only (a half-finished run resumes from its checkpoint:
    # train_and_evaluate's own behaviour, tested in test_train.py).
    calls.clear()
    sweep.main(['--sweep', sweep_file, '--workdir', sweep_dir])
    assert sorted(os.path.basename(c) for c in calls) == [
        'dropout_rate=0.5__seed=0',
        'dropout_rate=0.5__seed=1',
    ]


def _recording_training():
    """Stands in for train_and_evaluate: writes config.json, a checkpoint dir and results."""
    calls = []

    def fake(config, workdir):
        calls.append(os.path.basename(workdir))
        os.makedirs(os.path.join(workdir, 'checkpoints', '4'))
        with open(os.path.join(workdir, 'config.json'), 'w') as f:
            f.write(config.to_json_best_effort())
        results = {'step': 4, 'eval_top1_error': 0.1 + config.seed, 'images_per_sec': 1.0}
        with open(os.path.join(workdir, 'results.json'), 'w') as f:
            json.dump(results, f)
        return results

    return fake, calls


def _fake_run_dir(path, config, results=True, lock=False):
    os.makedirs(path)
    with open(os.path.join(path, 'config.json'), 'w') as f:
        f.write(config.to_json_best_effort())
    if results:
        with open(os.path.join(path, 'results.json'), 'w') as f:
            json.dump({'step': 4, 'eval_top1_error': 0.5}, f)
    if lock:
        with open(os.path.join(path, 'lock'), 'w') as f:
            f.write('{}')


def test_a_shared_arm_is_copied_from_another_sweep_where_its_config_finished(
    tmp_path, monkeypatch, capsys
):
    fake, calls = _recording_training()
    monkeypatch.setattr(train, 'train_and_evaluate', fake)
    first = write_sweep(tmp_path, {'dropout_rate': [0.5, 0.0]}, [0, 1], name='first')
    first_dir = str(tmp_path / 'first')
    assert sweep.main(['--sweep', first, '--workdir', first_dir]) == 0
    assert len(calls) == 4

    # The second sweep names the same baseline with another field at its default value
    # (random_flip is True in configs/fashion_mnist.py): the same config, so copied, not
    # trained. Seed 2 has twins under first/ that are not finished (no results.json, still
    # locked, a half-made copy): it trains, as does the other arm.
    budget = {**TINY_BUDGET, 'dropout_rate': 0.5}
    grid = [{'random_flip': True}, {'random_flip': False}]
    second = write_sweep(tmp_path, grid, [0, 2], budget=budget, name='second')
    seed2 = next(r for r in sweep.build_runs(sweep.load_sweep(second)) if r.seed == 2)
    _fake_run_dir(os.path.join(first_dir, 'unfinished'), seed2.config, results=False)
    _fake_run_dir(os.path.join(first_dir, 'locked'), seed2.config, lock=True)
    _fake_run_dir(os.path.join(first_dir, 'x' + sweep.COPYING), seed2.config)
    calls.clear()
    second_dir = tmp_path / 'second'
    stale = second_dir / ('random_flip=True__seed=0' + sweep.COPYING)
    stale.mkdir(parents=True)
    (stale / 'results.json').write_text('{}')
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # left by a sweep an hour ago
    argv = ['--sweep', second, '--workdir', str(second_dir), '--reuse', first_dir]
    assert sweep.main(argv) == 0
    assert sorted(calls) == [
        'random_flip=False__seed=0',
        'random_flip=False__seed=2',
        'random_flip=True__seed=2',
    ]
    assert '1 copied from --reuse' in capsys.readouterr().out
    copied = second_dir / 'random_flip=True__seed=0'
    source = os.path.abspath(os.path.join(first_dir, 'dropout_rate=0.5__seed=0'))
    assert _json(copied, 'reused.json') == {'from': source}
    assert _json(copied, 'results.json') == _json(source, 'results.json')
    assert _json(copied, 'run.json')['overrides'] == {'random_flip': True}
    assert not (copied / 'checkpoints').exists() and not stale.exists()

    # A half-made copy seen by the report (a sweep stopped mid-copy) is not a run.
    stale.mkdir()
    for name in ('run.json', 'results.json'):
        (stale / name).write_text((copied / name).read_text())
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    text = report.build_report(str(second_dir), targets=[0.5])
    assert f'- `random_flip=True__seed=0` from `{source}`' in text
    assert '| True | 2 |' in text  # the copy and the trained seed 2, one group

    # Rerun: everything finished, nothing copied or trained again; the stale copy is gone.
    calls.clear()
    assert sweep.main(argv) == 0 and calls == [] and not stale.exists()
    assert sweep.main([*argv[:4], '--reuse', str(tmp_path / 'nowhere')]) == 2
    assert 'nowhere: no such directory' in capsys.readouterr().err

    # A copy that fails (disk full) is said and the run trained instead; nothing half-made stays.
    def disk_full(*args, **kwargs):
        raise OSError(28, 'No space left on device')

    shutil.rmtree(copied)
    monkeypatch.setattr(sweep.shutil, 'copytree', disk_full)
    assert sweep.main(argv) == 0
    assert calls == ['random_flip=True__seed=0']
    assert not (copied / 'reused.json').exists() and not stale.exists()


def test_archived_runs_are_reused_on_a_new_machine_and_name_the_code_that_trained_them(
    tmp_path, monkeypatch, capsys
):
    fake, calls = _recording_training()

    def fake_with_metrics(config, workdir):
        results = fake(config, workdir)
        with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
            f.write(json.dumps({'step': 4, 'train_loss': 0.5}) + '\n')
        return results

    monkeypatch.setattr(train, 'train_and_evaluate', fake_with_metrics)
    sweep_file = write_sweep(tmp_path, {'dropout_rate': [0.5, 0.0]}, [0, 1])
    first_dir = str(tmp_path / 'first')
    assert sweep.main(['--sweep', sweep_file, '--workdir', first_dir]) == 0
    git = ['git', '-C', sweep.ROOT]
    head = subprocess.run([*git, 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout
    changed = subprocess.run(
        [*git, 'status', '--porcelain', '--untracked-files=no'], capture_output=True, text=True
    ).stdout
    head = head.strip() + ('-dirty' if changed.strip() else '') if head.strip() else ''
    name = 'dropout_rate=0.5__seed=1'
    assert _json(first_dir, name, 'run.json')['commit'] == (head or None)
    # One run still training (its lock held) is left for later.
    os.remove(os.path.join(first_dir, 'dropout_rate=0.0__seed=1', 'results.json'))
    with open(os.path.join(first_dir, 'dropout_rate=0.0__seed=1', 'lock'), 'w') as f:
        f.write('{}')

    archive = str(tmp_path / 'repo' / 'runs')
    argv = ['--sweep', sweep_file, '--workdir', first_dir, '--archive', archive]
    assert sweep.main(argv) == 0
    assert '3 finished runs archived' in capsys.readouterr().out
    assert sorted(os.listdir(archive)) == [
        'dropout_rate=0.0__seed=0',
        'dropout_rate=0.5__seed=0',
        'dropout_rate=0.5__seed=1',
    ]
    kept = os.path.join(archive, name)
    assert sorted(os.listdir(kept)) == sorted([*sweep.ARCHIVED_FILES, sweep.ARCHIVED_JSON])
    assert _json(kept, 'archived.json') == {'from': os.path.join(first_dir, name)}
    for f in sweep.ARCHIVED_FILES:
        with open(os.path.join(kept, f)) as a, open(os.path.join(first_dir, name, f)) as b:
            assert a.read() == b.read()
    assert sweep.main(argv) == 0 and '0 finished runs archived' in capsys.readouterr().out

    # A new machine: an empty sweep directory, the archive from the repository.
    calls.clear()
    new_dir = str(tmp_path / 'new')
    assert sweep.main(['--sweep', sweep_file, '--workdir', new_dir, '--reuse', archive]) == 0
    assert calls == ['dropout_rate=0.0__seed=1']  # only the run that had not finished
    assert '1 run, 0 skipped (finished before), 3 copied' in capsys.readouterr().out
    assert _json(new_dir, name, 'results.json') == _json(first_dir, name, 'results.json')
    assert _json(new_dir, name, 'run.json')['commit'] == (head or None)


def test_a_run_another_process_is_training_is_left_to_it_not_failed(tmp_path, monkeypatch, capsys):
    """Two processes on one sweep (one per core): the second skips the run the first holds."""
    from alexnet_jax import workdir_lock

    fake, calls = _recording_training()

    def locking_fake(config, workdir):  # takes the workdir's lock first, as training does
        with workdir_lock.hold(workdir):
            return fake(config, workdir)

    monkeypatch.setattr(train, 'train_and_evaluate', locking_fake)
    sweep_file = write_sweep(tmp_path, {'dropout_rate': [0.5, 0.0]})
    sweep_dir = str(tmp_path / 'sweep')
    held = os.path.join(sweep_dir, 'dropout_rate=0.5__seed=0')
    os.makedirs(held)
    other = workdir_lock.WorkdirLock(held)  # this (live) process is "the other one"
    other.acquire()
    try:
        assert sweep.main(['--sweep', sweep_file, '--workdir', sweep_dir]) == 0
    finally:
        other.release()
    assert calls == ['dropout_rate=0.0__seed=0']
    assert '1 run, 0 skipped (finished before), 0 copied from --reuse, 1 left to another' in (
        capsys.readouterr().out
    )
    assert not os.path.exists(os.path.join(held, sweep.FAILED_JSON))
    # Once it is free, a rerun trains it.
    assert sweep.main(['--sweep', sweep_file, '--workdir', sweep_dir]) == 0
    assert calls == ['dropout_rate=0.0__seed=0', 'dropout_rate=0.5__seed=0']


def test_a_sigterm_as_a_run_finishes_stops_the_sweep_before_the_next_run(
    tmp_path, monkeypatch, capsys
):
    """The run finishes (too late to stop at a step), and the sweep does not start another."""
    import signal

    from alexnet_jax import preemption

    fake, calls = _recording_training()

    def finishing_as_sigterm_arrives(config, workdir):
        watcher = preemption.PreemptionWatcher()  # as train_and_evaluate holds one
        try:
            results = fake(config, workdir)  # the loop and its evaluations are over
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 10
            while watcher.signal_name is None and time.monotonic() < deadline:
                time.sleep(0.01)
            return results
        finally:
            watcher.close()

    monkeypatch.setattr(train, 'train_and_evaluate', finishing_as_sigterm_arrives)
    sweep_file = write_sweep(tmp_path, {'dropout_rate': [0.5, 0.0]})
    sweep_dir = str(tmp_path / 'sweep')
    assert sweep.main(['--sweep', sweep_file, '--workdir', sweep_dir]) == 3
    assert calls == ['dropout_rate=0.5__seed=0']  # finished, kept; the next one not started
    assert os.path.exists(os.path.join(sweep_dir, calls[0], 'results.json'))
    assert not os.path.exists(os.path.join(sweep_dir, 'dropout_rate=0.0__seed=0'))
    assert '1 run, 0 skipped' in capsys.readouterr().out


def test_the_dropout_and_augmentation_sweeps_share_their_regularised_arm():
    # claims.sh trains the arm once (dropout) and the augmentation sweep copies it with --reuse:
    # only if the two sweep files give the very same configs.
    def configs(name):
        path = os.path.join(sweep.ROOT, 'experiments', 'sweeps', f'{name}.py')
        runs = sweep.build_runs(sweep.load_sweep(path))
        return {r.name: json.loads(r.config.to_json_best_effort()) for r in runs}

    dropout, augmentation = configs('dropout'), configs('augmentation')
    shared = [(a, d) for a, c in augmentation.items() for d, e in dropout.items() if c == e]
    assert shared == [
        (f'random_crop=True__random_flip=True__seed={s}', f'dropout_rate=0.5__seed={s}')
        for s in range(5)
    ]


@pytest.mark.parametrize(
    'grid, budget, message',
    [
        ({'dropuot_rate': [0.1]}, None, "field 'dropuot_rate' (did you mean 'dropout_rate'?)"),
        ({'norm': ['lrn']}, {**TINY_BUDGET, 'num_steps': 4}, "unknown config field 'num_steps'"),
        ({'norm': ['lrn', 'lnr']}, None, "Unknown norm 'lnr'"),
        ({'batch_size': ['16']}, None, 'cannot set batch_size'),
        ({}, None, 'empty grid'),
        ({'norm': []}, None, 'empty grid'),
        ([], None, 'empty grid'),
    ],
)
def test_a_bad_sweep_fails_before_any_run_with_one_message(
    tmp_path, monkeypatch, capsys, grid, budget, message
):
    def must_not_run(config, workdir):
        raise AssertionError('a run started')

    monkeypatch.setattr(train, 'train_and_evaluate', must_not_run)
    sweep_file = write_sweep(tmp_path, grid, budget=budget)
    sweep_dir = tmp_path / 'sweep'
    assert sweep.main(['--sweep', sweep_file, '--workdir', str(sweep_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err
    assert not sweep_dir.exists()


def test_a_misspelt_claim_fails_the_sweep_before_any_compute(tmp_path):
    claim = {
        'name': 'dropout lowers test error',
        'metric': 'eval_top1_error',
        'baseline': {'dropout_rate': 0.0},
        'arm': {'dropout_rate': 0.5},
        'expect': 'lowr',
    }
    sweep_file = write_sweep(
        tmp_path, {'dropout_rate': [0.0, 0.5]}, extra=f'report = {{"claims": [{claim!r}]}}'
    )
    with pytest.raises(sweep.SweepError) as raised:
        sweep.build_runs(sweep.load_sweep(sweep_file))
    message = str(raised.value)
    assert sweep_file in message and "'dropout lowers test error'" in message
    assert "expect must be 'lower' or 'higher', got 'lowr'" in message


def test_write_scripts_writes_one_line_per_run(tmp_path):
    sweep_file = write_sweep(
        tmp_path, {'norm': ['lrn', 'none'], 'pooling': ['overlapping']}, [0, 1]
    )
    sweep_dir = tmp_path / 'sweep'
    assert sweep.main(['--sweep', sweep_file, '--workdir', str(sweep_dir), '--write-scripts']) == 0
    run_all = (sweep_dir / 'run_all.sh').read_text()
    lines = [line for line in run_all.splitlines() if 'alexnet_jax.main' in line]
    assert len(lines) == 4
    assert '--config=configs/fashion_mnist.py' in lines[0]
    assert '--config.norm=lrn --config.pooling=overlapping --config.seed=0' in lines[0]
    assert '--config.num_train_steps=4' in lines[0]
    assert f'--workdir={sweep_dir}/norm=none__pooling=overlapping__seed=1' in lines[3]
    slurm = (sweep_dir / 'slurm_array.sh').read_text()
    assert '#SBATCH --array=0-3' in slurm
    assert slurm.count('alexnet_jax.main') == 4 and '$SLURM_ARRAY_TASK_ID' in slurm
    for script in ('run_all.sh', 'slurm_array.sh'):
        subprocess.run(['bash', '-n', str(sweep_dir / script)], check=True)  # valid bash
    assert not (sweep_dir / 'norm=lrn__pooling=overlapping__seed=0').exists()  # nothing ran

    # alexnet_jax.main's own flag parser reads the line back into the run's config.
    argv = shlex.split(lines[3].split('|| ', 1)[1])[3:]
    parse = (
        'import sys; sys.argv = ["main", *sys.argv[1:]]; from absl import flags; '
        'import alexnet_jax.main; flags.FLAGS(sys.argv); c = flags.FLAGS.config; '
        'print(c.norm, c.pooling, c.seed, c.num_train_steps, c.dataset)'
    )
    out = subprocess.run(
        [sys.executable, '-c', parse, *argv], cwd=sweep.ROOT, capture_output=True, text=True
    )
    assert out.stdout.split() == ['none', 'overlapping', '1', '4', 'synthetic'], out.stderr


def test_run_names_are_stable_and_readable():
    assert (
        sweep.run_name({'norm': 'lrn', 'dropout_rate': 0.5}, 1)
        == 'norm=lrn__dropout_rate=0.5__seed=1'
    )
    assert sweep.run_name({'dataset': 'a/b c'}, 0) == 'dataset=a-b-c__seed=0'


def test_filter_mosaic_normalises_each_filter_and_keeps_grey_or_colour():
    rng = np.random.default_rng(0)
    grey = filter_mosaic(rng.normal(size=(5, 5, 1, 32)) * np.arange(1, 33))  # scales differ
    assert grey.shape == (4 * 6 + 1, 8 * 6 + 1, 1)
    for r, c in ((0, 0), (3, 7)):  # every filter spans [0, 1] on its own
        tile = grey[1 + 6 * r : 6 * r + 6, 1 + 6 * c : 6 * c + 6]
        assert tile.min() == 0.0 and tile.max() == 1.0
    assert filter_mosaic(rng.normal(size=(11, 11, 3, 96))).shape == (6 * 12 + 1, 16 * 12 + 1, 3)


def test_nearest_neighbours_by_euclidean_distance():
    database = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    queries = np.array([[9.0, 0.0], [0.2, 0.1]])
    np.testing.assert_array_equal(
        figures.nearest_neighbours(queries, database, 2), [[1, 3], [0, 3]]
    )


def test_same_class_fraction_counts_neighbours_sharing_their_querys_label():
    query_labels, pool_labels = np.array([0, 1]), np.array([0, 1, 1, 0])
    idx = np.array([[0, 3], [1, 0]])  # query 0: classes 0, 0; query 1: classes 1, 0
    assert figures.same_class_fraction(query_labels, pool_labels, idx) == 3 / 4


def test_set_gives_every_run_a_field_on_top_of_the_budget(tmp_path, monkeypatch, capsys):
    fake, calls = _recording_training()
    seen = []

    def recording(config, workdir):
        seen.append((config.dropout_rate, config.learning_rate, config.lr_schedule))
        return fake(config, workdir)

    monkeypatch.setattr(train, 'train_and_evaluate', recording)
    sweep_file = write_sweep(tmp_path, {'dropout_rate': [0.5, 0.0]})
    argv = ['--sweep', sweep_file, '--workdir', str(tmp_path / 's')]
    assert sweep.main([*argv, '--set', 'learning_rate=0.003', '--set', 'lr_schedule=step']) == 0
    assert sorted(seen) == [(0.0, 0.003, 'step'), (0.5, 0.003, 'step')]
    recorded = _json(str(tmp_path / 's'), 'sweep.json')['budget']
    assert recorded['learning_rate'] == 0.003 and recorded['lr_schedule'] == 'step'
    assert sweep.main([*argv, '--set', 'learning_rate']) == 2
    assert 'write FIELD=VALUE' in capsys.readouterr().err
    assert sweep.main([*argv, '--set', 'learning_rat=0.1']) == 2
    assert "did you mean 'learning_rate'" in capsys.readouterr().err
