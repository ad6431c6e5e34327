"""Faults injected into real runs: each test asserts what is on disk afterwards.

Read-only and full checkpoint directories (bind mounts and a small tmpfs, so root only),
divergence, a corrupt newest checkpoint, SIGTERM during an evaluation, two runs on one
workdir, a multi-host peer that never comes, and a resume into another network.
"""

import contextlib
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from alexnet_jax import checkpointing, evaluation, specs, train, trained, workdir_lock
from tests.test_multihost import _free_port
from tests.test_train import ROOT, small_config

CLI_DEFAULTS = {
    'dataset': 'synthetic',
    'batch_size': 16,
    'synthetic_num_train': 256,
    'synthetic_num_eval': 50,
    'lr_schedule': 'constant',
    'learning_rate': 0.01,
    'log_every_steps': 2,
}


def _start(workdir, *flags, **overrides):
    """``python -m alexnet_jax.main`` on the small synthetic config, output captured."""
    fields = {**CLI_DEFAULTS, **overrides}
    cmd = [
        sys.executable,
        '-m',
        'alexnet_jax.main',
        '--config=configs/fashion_mnist.py',
        f'--workdir={workdir}',
        *[f'--config.{k}={v}' for k, v in fields.items()],
        *flags,
    ]
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _error_lines(out):
    return [line for line in out.splitlines() if line.startswith('error:')]


def _steps(workdir):
    directory = workdir / 'checkpoints'
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _mounted(path, *mount_args):
    subprocess.run(['mount', *mount_args, str(path)], check=True, capture_output=True)


@contextlib.contextmanager
def _read_only(path):
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mounted(path, '--bind', str(path))
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        pytest.skip(f'cannot bind-mount here (needs root): {error}')
    try:
        _mounted(path, '-o', 'remount,ro,bind')
        yield
    finally:
        subprocess.run(['umount', str(path)], check=False)


@contextlib.contextmanager
def _small_disk(path, size):
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mounted(path, '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs')
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        pytest.skip(f'cannot mount a tmpfs here (needs root): {error}')
    try:
        yield
    finally:
        subprocess.run(['umount', str(path)], check=False)


def _state_bytes(workdir, step):
    return sum(p.stat().st_size for p in (workdir / 'checkpoints' / str(step)).rglob('*'))


# --- 1. A checkpoint write that fails ends the run promptly, non-zero, naming the path. ---


def test_read_only_checkpoint_dir_ends_the_run_with_one_error(tmp_path):
    with _read_only(tmp_path / 'checkpoints'):
        started = time.monotonic()
        code, out = _finish(
            _start(tmp_path, num_train_steps=40, checkpoint_every_steps=2, eval_every_steps=100),
            timeout=240,
        )
        elapsed = time.monotonic() - started
    assert code == 1, out[-3000:]
    errors = _error_lines(out)
    assert len(errors) == 1, out[-3000:]
    assert 'Writing checkpoint 2 failed' in errors[0]
    assert 'Read-only file system' in errors[0]
    assert str(tmp_path / 'checkpoints') in errors[0]
    assert 'Traceback' not in out
    assert not (tmp_path / 'results.json').exists()
    # Failed within a step or two of the first save, not after all 40 steps.
    assert 'step 40/40' not in out
    assert elapsed < 120, f'took {elapsed:.0f} s'


def test_full_disk_keeps_the_last_complete_checkpoint(tmp_path):
    workdir = tmp_path / 'run'
    probe = tmp_path / 'probe'  # the size of one checkpoint of this model, measured
    train.train_and_evaluate(small_config(num_train_steps=2, checkpoint_every_steps=2), str(probe))
    one = _state_bytes(probe, 2)
    # Room for one checkpoint and a half: the second cannot be written beside the first.
    with _small_disk(workdir, f'{int(one * 1.5) // 1024}k'):
        code, out = _finish(
            _start(workdir, num_train_steps=40, checkpoint_every_steps=2, eval_every_steps=100)
        )
        assert code == 1, out[-3000:]
        errors = _error_lines(out)
        assert len(errors) == 1 and 'No space left on device' in errors[0], out[-3000:]
        assert 'Newest complete checkpoint: step 2' in errors[0]
        assert 'Traceback' not in out, out[-3000:]  # orbax's closed-loop reports are dropped
        assert _steps(workdir) == [2]
        state = trained.load_trained_state(small_config(), str(workdir))
        assert int(state.step) == 2
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


# --- 2. Divergence: caught on its step, never saved, the message true. ---


def _assert_every_checkpoint_finite(workdir, config):
    for step in _steps(workdir):
        state = trained.load_trained_state(config, str(workdir), step=step)
        for leaf in jax.tree.leaves(jax.device_get(state.params)):
            assert np.isfinite(leaf).all(), f'checkpoint {step} holds non-finite parameters'


def test_divergence_is_caught_before_anything_is_saved(tmp_path):
    # The reproduction: every step checkpointed, a line only every 5 steps.
    config = small_config(
        learning_rate=1e6, checkpoint_every_steps=1, log_every_steps=5, num_train_steps=20
    )
    with pytest.raises(FloatingPointError) as raised:
        train.train_and_evaluate(config, str(tmp_path))
    message = str(raised.value)
    bad = int(re.search(r'infinite at (?:or before )?step (\d+);', message).group(1))
    kept = _steps(tmp_path)
    assert all(step < bad for step in kept)
    newest = f'step {kept[-1]}' if kept else 'none'
    assert f'Newest checkpoint: {newest}' in message
    _assert_every_checkpoint_finite(tmp_path, config)


def test_nan_injected_at_a_given_step_keeps_the_last_finite_checkpoints(tmp_path, monkeypatch):
    poison_at = 5
    original = train.placement_for

    def poisoned_placement(config, stats):
        placement = original(config, stats)

        def step(state, batch, rng):
            new_state, step_metrics = placement.train_step(state, batch, rng)
            if int(new_state.step) == poison_at:  # this step's update turns into NaN
                params = jax.tree.map(lambda p: p * np.nan, new_state.params)
                new_state = new_state.replace(params=params)  # (its loss is still finite)
            return new_state, step_metrics

        return placement._replace(train_step=step)

    monkeypatch.setattr(train, 'placement_for', poisoned_placement)
    config = small_config(
        checkpoint_every_steps=1, keep_checkpoints=2, log_every_steps=100, num_train_steps=12
    )
    with pytest.raises(FloatingPointError, match=f'step {poison_at};.*step {poison_at - 1}'):
        train.train_and_evaluate(config, str(tmp_path))
    # Retention kept the newest two finite checkpoints and nothing after the fault.
    assert _steps(tmp_path) == [poison_at - 2, poison_at - 1]
    _assert_every_checkpoint_finite(tmp_path, config)


# --- 3. A corrupt newest checkpoint is replaced when its step is reached again. ---


def _corrupt(step_dir):
    for path in step_dir.joinpath('state').rglob('*'):
        if path.is_file():
            path.write_bytes(b'\0garbage')


def test_corrupt_newest_checkpoint_is_replaced_by_the_recovered_run(tmp_path):
    config = small_config(num_train_steps=4, checkpoint_every_steps=2, eval_every_steps=100)
    reference = tmp_path / 'reference'
    train.train_and_evaluate(config, str(reference))
    workdir = tmp_path / 'run'
    train.train_and_evaluate(config, str(workdir))
    (workdir / 'results.json').unlink()  # as if killed after the last save
    _corrupt(workdir / 'checkpoints' / '4')
    results = train.train_and_evaluate(config, str(workdir))
    assert results['step'] == 4
    state = trained.load_trained_state(config, str(workdir))  # the newest: 4, readable again
    assert int(state.step) == 4
    expected = trained.load_trained_state(config, str(reference))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected.params), strict=True):
        np.testing.assert_array_equal(a, b)


# --- 4. SIGTERM during an evaluation: saved and stopped within seconds, exit status 143. ---


class _Lines:
    """Reads a process's output in a thread, so a test can wait for a line."""

    def __init__(self, proc):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.append(line)

    def wait_for(self, text, proc, timeout=240):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            assert proc.poll() is None, ''.join(self.lines)[-3000:]
            time.sleep(0.05)
        raise TimeoutError(f'no line with {text!r}')

    def text(self):
        self._thread.join(timeout=10)
        return ''.join(self.lines)


def test_sigterm_during_evaluation_saves_and_exits_143_within_seconds(tmp_path):
    # An evaluation of 40,000 images takes minutes here; the grace period is seconds.
    proc = _start(
        tmp_path,
        num_train_steps=40,
        eval_every_steps=4,
        checkpoint_every_steps=100,
        synthetic_num_eval=40_000,
        eval_batch_size=64,
        log_every_seconds=0.5,
    )
    lines = _Lines(proc)
    lines.wait_for('eval: ', proc)  # the evaluation's progress lines have started
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    elapsed = time.monotonic() - sent
    out = lines.text()
    assert proc.returncode == 143, out[-3000:]
    assert elapsed < 15, f'stopped {elapsed:.1f} s after SIGTERM'
    assert 'Stopped by SIGTERM at step 4' in out
    assert _steps(tmp_path) == [4]
    assert not (tmp_path / 'results.json').exists()


def test_a_run_stopped_mid_evaluation_redoes_it_on_resume(tmp_path, monkeypatch):
    """The evaluation a signal interrupted runs on resume, so the plateau rule sees it."""
    config = small_config(num_train_steps=6, eval_every_steps=2, lr_schedule='plateau')
    reference = tmp_path / 'reference'
    train.train_and_evaluate(config, str(reference))

    original = evaluation.evaluate
    calls = []

    def interrupted_at_step_4(placement, state, cfg, **kwargs):
        calls.append(int(jax.device_get(state.step)))
        if calls[-1] == 4 and calls.count(4) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives before the first batch
        return original(placement, state, cfg, **kwargs)

    monkeypatch.setattr(evaluation, 'evaluate', interrupted_at_step_4)
    workdir = tmp_path / 'run'
    results = train.train_and_evaluate(config, str(workdir))
    assert results == {'step': 4, 'stopped_by': 'SIGTERM'}
    results = train.train_and_evaluate(config, str(workdir))
    assert results['step'] == 6
    assert calls.count(4) == 2  # interrupted, then redone on resume
    ours = metrics_rows(workdir)
    theirs = metrics_rows(reference)
    assert [r['eval_top1_error'] for r in ours] == [r['eval_top1_error'] for r in theirs]


def metrics_rows(workdir):
    rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    return [r for r in rows if 'eval_top1_error' in r]


# --- 5. Two runs on one workdir. ---


def test_second_run_on_a_busy_workdir_is_refused_naming_the_holder(tmp_path):
    first = _start(tmp_path, num_train_steps=400, checkpoint_every_steps=2, eval_every_steps=1000)
    try:
        deadline = time.monotonic() + 240
        while not _steps(tmp_path):
            assert first.poll() is None, first.stdout.read()[-3000:]
            assert time.monotonic() < deadline, 'no checkpoint'
            time.sleep(0.1)
        code, out = _finish(_start(tmp_path, num_train_steps=400), timeout=120)
        assert code == 1, out[-3000:]
        errors = _error_lines(out)
        assert len(errors) == 1, out[-3000:]
        assert f'pid {first.pid} on host {socket.gethostname()}' in errors[0]
        lines_before = (tmp_path / 'metrics.jsonl').read_text().count('\n')
    finally:
        first.kill()  # SIGKILL: the lock stays behind, stale
        first.communicate()
    assert (tmp_path / workdir_lock.LOCK_NAME).exists()
    # The dead holder's lock is taken over; the new run resumes and finishes.
    code, out = _finish(_start(tmp_path, num_train_steps=6, checkpoint_every_steps=2))
    assert code == 0, out[-3000:]
    assert 'stale lock' in out
    assert not (tmp_path / workdir_lock.LOCK_NAME).exists()
    assert (tmp_path / 'metrics.jsonl').read_text().count('\n') >= lines_before


def test_lock_of_a_live_process_on_another_host_is_respected_until_stale(tmp_path):
    lock_path = tmp_path / workdir_lock.LOCK_NAME
    lock_path.write_text(json.dumps({'host': 'elsewhere', 'pid': 1, 'started': 'then'}))
    with pytest.raises(workdir_lock.WorkdirLockedError, match='pid 1 on host elsewhere'):
        workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    old = time.time() - 2 * workdir_lock.STALE_AFTER_SECONDS  # no heartbeat for 20 minutes
    os.utime(lock_path, (old, old))
    lock = workdir_lock.WorkdirLock(str(tmp_path))
    lock.acquire()
    assert json.loads(lock_path.read_text())['pid'] == os.getpid()
    lock.release()
    assert not lock_path.exists()


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, '-c', ''])
    child.wait()
    return child.pid


def test_a_lock_still_being_written_is_not_taken_for_a_dead_one(tmp_path):
    lock_path = tmp_path / workdir_lock.LOCK_NAME
    lock_path.write_text('')  # created by a run that has not written its record yet
    with pytest.raises(workdir_lock.WorkdirLockedError, match='being locked by another process'):
        workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    old = time.time() - 2 * workdir_lock.UNREADABLE_GRACE_SECONDS  # its writer died
    os.utime(lock_path, (old, old))
    lock = workdir_lock.WorkdirLock(str(tmp_path))
    lock.acquire()
    assert json.loads(lock_path.read_text())['pid'] == os.getpid()
    lock.release()
    assert os.listdir(tmp_path) == []  # no private record left behind either


def test_two_runs_finding_one_dead_holder_leave_the_lock_to_one(tmp_path, monkeypatch):
    lock_path = tmp_path / workdir_lock.LOCK_NAME
    dead = {'host': socket.gethostname(), 'pid': _dead_pid(), 'started': 'then'}
    lock_path.write_text(json.dumps(dead))
    first, second = workdir_lock.WorkdirLock(str(tmp_path)), workdir_lock.WorkdirLock(str(tmp_path))
    judge = workdir_lock.WorkdirLock._stale

    def first_takes_over_between(self, holder):  # the race, made to happen every time
        verdict = judge(self, holder)
        if self is second and not first.held:
            first.acquire()
        return verdict

    monkeypatch.setattr(workdir_lock.WorkdirLock, '_stale', first_takes_over_between)
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f'in use by pid {os.getpid()}'):
        second.acquire()
    assert first.held and not second.held
    second.release()  # holds nothing: removes nothing
    assert lock_path.exists()
    first.release()
    assert os.listdir(tmp_path) == []


def test_release_leaves_a_lock_another_run_took_over(tmp_path):
    lock_path = tmp_path / workdir_lock.LOCK_NAME
    lock = workdir_lock.WorkdirLock(str(tmp_path))
    lock.acquire()
    other = {'host': 'elsewhere', 'pid': 7, 'started': 'now', 'token': 'theirs'}
    lock_path.write_text(json.dumps(other))  # judged stale elsewhere and taken over
    lock.release()
    assert json.loads(lock_path.read_text()) == other


def test_lock_on_a_filesystem_without_hard_links(tmp_path, monkeypatch):
    def refuse(*_):
        raise PermissionError(errno.EPERM, 'Operation not permitted')

    monkeypatch.setattr(os, 'link', refuse)
    lock = workdir_lock.WorkdirLock(str(tmp_path))
    lock.acquire()
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f'in use by pid {os.getpid()}'):
        workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    lock.release()
    assert os.listdir(tmp_path) == []


# --- Multi-host: a coordinator that never comes. ---


def test_missing_coordinator_ends_with_one_error_naming_it(tmp_path):
    address = f'127.0.0.1:{_free_port()}'
    started = time.monotonic()
    code, out = _finish(
        _start(
            tmp_path,
            f'--coordinator_address={address}',
            '--num_processes=2',
            '--process_id=1',
            '--distributed_timeout=3',
        ),
        timeout=120,
    )
    assert code == 1, out[-3000:]
    errors = _error_lines(out)
    assert len(errors) == 1 and address in errors[0] and 'within 3 s' in errors[0], out
    assert time.monotonic() - started < 60


# --- Resume into another network. ---


@pytest.mark.parametrize(
    ('field', 'value'), [('pooling', 'non_overlapping'), ('activation', 'tanh')]
)
def test_resume_into_another_network_is_refused(tmp_path, field, value):
    train.train_and_evaluate(small_config(num_train_steps=2), str(tmp_path))
    with pytest.raises(checkpointing.CheckpointMismatchError, match=field):
        train.train_and_evaluate(small_config(num_train_steps=4, **{field: value}), str(tmp_path))


def test_the_network_fields_are_every_field_that_changes_the_network():
    """The compared list against a second path: change each field and see the network change."""
    config = small_config()
    derived = checkpointing.network_fields(config)
    spec = specs.resolve_model(config)

    def other(choices, current):
        return next(c for c in choices if c != current)

    alternatives = {
        'model': other(specs.VARIANTS, config.model),
        'num_classes': config.num_classes + 1,
        'norm': other(specs.NORMS, spec.norm),
        'pooling': other(specs.POOLINGS, spec.pooling),
        'activation': other(specs.ACTIVATIONS, spec.activation),
        'dropout_rate': spec.dropout_rate / 2,
        'groups': other((1, 2), spec.groups),
        'init_scheme': other(specs.INITS, spec.init_scheme),
    }
    changes_network = set()
    reference = checkpointing._network(config)
    for field, value in alternatives.items():
        changed = small_config(**{field: value})
        if checkpointing._network(changed) != reference:
            changes_network.add(field)
    assert changes_network == set(alternatives)
    # half_kernels needs groups=1 (Section 3.2's one-GPU net): compared on that net.
    one_gpu = checkpointing._network(small_config(groups=1))
    if checkpointing._network(small_config(groups=1, half_kernels=True)) != one_gpu:
        changes_network.add('half_kernels')
    assert derived == changes_network
    # Fields that change neither the parameters nor what they compute: a checkpoint moves.
    for field, value in (('half_precision', True), ('tower_local_lrn', True)):
        assert checkpointing._network(small_config(**{field: value})) == reference, field
        assert field not in derived


def test_spelling_out_the_preset_is_the_same_network(tmp_path):
    train.train_and_evaluate(small_config(num_train_steps=2), str(tmp_path))
    spec = specs.resolve_model(small_config())
    same = small_config(num_train_steps=4, pooling=spec.pooling, activation=spec.activation)
    assert train.train_and_evaluate(same, str(tmp_path))['step'] == 4
