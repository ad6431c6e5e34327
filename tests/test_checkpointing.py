"""Exact resume (clean stop, SIGKILL, SIGTERM), damaged checkpoints, evaluate and predict."""

import json
import os
import pickle
import pickletools
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from alexnet_jax import checkpointing, preemption, train, trained
from tests.test_train import ROOT, eval_by_hand, small_config, synthetic_eval_split

# Dropout, colour noise and a plateau schedule that divides mid-run: every source of state and
# randomness that exact resume must reproduce.
RESUME_FIELDS = {
    'lr_schedule': 'plateau',
    'plateau_patience': 1,
    'eval_every_steps': 2,
    'checkpoint_every_steps': 3,
    'pca_noise_std': 0.1,
}


def _config(**overrides):
    return small_config(**{**RESUME_FIELDS, **overrides})


def _final_params(workdir, config):
    state = trained.load_trained_state(config, str(workdir))
    return int(state.step), jax.tree.leaves(jax.device_get(state.params)), state


def _assert_identical(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    """One run of 8 steps never stopped: the reference every resumed run must equal."""
    workdir = tmp_path_factory.mktemp('uninterrupted')
    config = _config(num_train_steps=8)
    train.train_and_evaluate(config, str(workdir))
    return _final_params(workdir, config)


def test_clean_stop_and_resume_is_bit_identical(tmp_path, uninterrupted):
    train.train_and_evaluate(_config(num_train_steps=5), str(tmp_path))
    results = train.train_and_evaluate(_config(num_train_steps=8), str(tmp_path))
    assert results['step'] == 8
    step, params, state = _final_params(tmp_path, _config(num_train_steps=8))
    assert step == uninterrupted[0] == 8
    _assert_identical(params, uninterrupted[1])
    # The plateau counters and the (possibly divided) learning rate came back too.
    ref_state = uninterrupted[2]
    assert int(state.plateau.reductions) == int(ref_state.plateau.reductions)
    assert float(state.opt_state.hyperparams['learning_rate']) == float(
        ref_state.opt_state.hyperparams['learning_rate']
    )


def _corrupt(step_dir):
    for path in step_dir.joinpath('state').rglob('*'):
        if path.is_file():
            path.write_bytes(b'\0garbage')


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, uninterrupted, caplog):
    train.train_and_evaluate(_config(num_train_steps=7), str(tmp_path))
    checkpoints = tmp_path / 'checkpoints'
    newest = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert newest == 7
    _corrupt(checkpoints / str(newest))
    with caplog.at_level('INFO'):
        train.train_and_evaluate(_config(num_train_steps=8), str(tmp_path))
    assert any('unreadable' in r.message and f'/{newest}' in r.message for r in caplog.records)
    _assert_identical(_final_params(tmp_path, _config(num_train_steps=8))[1], uninterrupted[1])


def test_checkpoint_of_another_model_is_refused_naming_the_difference(tmp_path):
    train.train_and_evaluate(_config(num_train_steps=3), str(tmp_path))
    with pytest.raises(checkpointing.CheckpointMismatchError, match='num_classes'):
        train.train_and_evaluate(_config(num_train_steps=6, num_classes=7), str(tmp_path))


def test_relative_workdir_checkpoints_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README runs with --workdir runs/fashion_mnist
    train.train_and_evaluate(_config(num_train_steps=3), 'runs/relative')
    assert (tmp_path / 'runs/relative/checkpoints/3').is_dir()
    results = train.train_and_evaluate(_config(num_train_steps=4), 'runs/relative')
    assert results['step'] == 4


def _is_pickle(data: bytes) -> bool:
    """Whether ``data`` parses as a pickle opcode stream up to its STOP (never executed)."""
    try:
        ops = list(pickletools.genops(data))
    except Exception:  # an unknown opcode or the end of the bytes before STOP
        return False
    return bool(ops) and ops[-1][0].name == 'STOP'


def _file_kind(path) -> str | None:
    """What a checkpoint file is, judged by its bytes: 'json', 'text', 'ocdbt', or None."""
    data = path.read_bytes()
    if path.name == 'commit_success.txt':
        return 'text' if data.decode().startswith('Checkpoint commit was successful') else None
    if path.name in ('_CHECKPOINT_METADATA', '_METADATA', 'metadata', 'metrics'):
        json.loads(data)  # raises if it is not JSON
        return 'json'
    # Orbax's array store (OCDBT): manifests and tree nodes begin with its magic 0x0cdb...,
    # data files are zstd frames (magic 28 b5 2f fd) of the arrays' chunks.
    if 'state' in path.parts and (data[:2] == b'\x0c\xdb' or data[:4] == b'\x28\xb5\x2f\xfd'):
        return 'ocdbt'
    return None


def test_checkpoints_are_json_and_array_stores_never_pickles(tmp_path):
    # The detector recognises a pickled state of any protocol, so the check below can fail.
    params = {'conv1': {'kernel': np.ones((3, 3), np.float32)}, 'step': 3}
    assert all(_is_pickle(pickle.dumps(params, protocol=p)) for p in range(6))
    train.train_and_evaluate(_config(num_train_steps=3), str(tmp_path))
    files = [p for p in (tmp_path / 'checkpoints').rglob('*') if p.is_file()]
    kinds = {p: _file_kind(p) for p in files}
    assert {p.relative_to(tmp_path) for p, kind in kinds.items() if kind is None} == set()
    assert {'json', 'text', 'ocdbt'} <= set(kinds.values())
    assert [p for p in files if _is_pickle(p.read_bytes())] == []


def _cli(workdir, steps, **kwargs):
    overrides = {
        **RESUME_FIELDS,
        'num_train_steps': steps,
        'checkpoint_every_steps': 4,
        'log_every_steps': 1,
    }
    args = [f'--config.{k}={v}' for k, v in overrides.items()]
    cmd = [
        sys.executable,
        '-m',
        'alexnet_jax.main',
        '--config=configs/fashion_mnist.py',
        f'--workdir={workdir}',
        '--config.dataset=synthetic',
        '--config.batch_size=16',
        '--config.synthetic_num_train=256',
        '--config.synthetic_num_eval=50',
        '--config.learning_rate=0.01',
        *args,
    ]
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )


def _wait_for_checkpoint(workdir, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [p for p in (workdir / 'checkpoints').glob('[0-9]*') if p.name.isdigit()]
        if steps:
            return
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    raise TimeoutError('no checkpoint appeared')


@pytest.fixture(scope='module')
def cli_reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('cli_reference')
    proc = _cli(workdir, 150)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert 'Done at step 150: top-1 error' in out  # the last line of a finished run
    return workdir


# SIGINT takes SIGTERM's path (one handler): test_ctrl_c_is_caught_like_sigterm checks that much
# in-process, which spares CI a third pair of runs.
@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM])
def test_killed_or_preempted_run_resumes_bit_identically(tmp_path, cli_reference, sig):
    proc = _cli(tmp_path, 150)
    _wait_for_checkpoint(tmp_path, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=300)
    if sig != signal.SIGKILL:  # SIGTERM (preemption) and Ctrl-C save and exit with 128 + sig
        assert proc.returncode == 128 + sig, out[-3000:]
        assert f'Stopped by {sig.name}' in out
    else:
        assert proc.returncode == -signal.SIGKILL
    # A kill can land while orbax writes 'N.orbax-checkpoint-tmp': only finished steps count.
    finished = (tmp_path / 'checkpoints').glob('[0-9]*')
    stopped = max(int(p.name) for p in finished if p.name.isdigit())
    assert stopped < 150, 'the run finished before the signal: make it longer'
    proc = _cli(tmp_path, 150)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    config = _config(num_train_steps=150, learning_rate=0.01)
    _, resumed, _ = _final_params(tmp_path, config)
    _, reference, _ = _final_params(cli_reference, config)
    _assert_identical(resumed, reference)


def test_ctrl_c_is_caught_like_sigterm_and_exits_130():
    previous = signal.getsignal(signal.SIGINT)
    watcher = preemption.PreemptionWatcher()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the run stops at a step
        deadline = time.time() + 10
        while watcher.signal_name is None and time.time() < deadline:
            time.sleep(0.01)
        assert watcher.requested() and watcher.reached(3) == 'SIGINT'
    finally:
        watcher.close()
    assert signal.getsignal(signal.SIGINT) is previous  # Ctrl-C is the shell's again
    assert preemption.exit_code('SIGINT') == 130 and preemption.exit_code('SIGTERM') == 143


def _command(name, workdir, *args):
    """Runs ``python -m alexnet_jax.<name> --workdir=<workdir> <args>`` and captures it."""
    return subprocess.run(
        [sys.executable, '-m', f'alexnet_jax.{name}', f'--workdir={workdir}', *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_evaluate_command_writes_errors(tmp_path):
    config = _config(num_train_steps=4)
    train.train_and_evaluate(config, str(tmp_path))
    proc = _command('evaluate', tmp_path, '--crops=10')
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / 'eval_step4_10crop.json').read_text())
    assert result['eval_count'] == 50 and result['eval_crops'] == 10
    # The same checkpoint on the same ten-crop examples, computed by hand.
    config.eval_crops = 10
    split = synthetic_eval_split(config)
    loss, rank = eval_by_hand(
        trained.load_trained_state(config, str(tmp_path)), config, split['image'], split['label']
    )
    np.testing.assert_allclose(result['eval_loss'], loss.mean(), rtol=1e-4)
    assert result['eval_top1_error'] == pytest.approx((rank >= 1).mean())
    assert result['eval_top5_error'] == pytest.approx((rank >= 5).mean())


def test_evaluate_without_a_run_says_so(tmp_path):
    proc = _command('evaluate', tmp_path)
    assert proc.returncode != 0
    assert 'config.json does not exist' in proc.stderr


def _predict(workdir, *paths):
    return _command('predict', workdir, *map(str, paths))


def test_predict_prints_top5_and_rejects_non_images(tmp_path):
    from PIL import Image

    workdir = tmp_path / 'run'
    config = _config(num_train_steps=2)
    train.train_and_evaluate(config, str(workdir))
    image = tmp_path / 'photo.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), np.uint8)).save(image)
    proc = _predict(workdir, image)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == str(image)
    probs = [float(line.split('%')[0]) for line in lines[1:]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 100.01
    # The same probabilities as the model applied by hand to the same crop.
    from alexnet_jax import dataset_stats, datasets, device_preprocessing, predict

    info = datasets.get(config).info()
    batch = predict.load_image(str(image), config, info.image_shape)
    state = trained.load_trained_state(config, str(workdir))
    x = device_preprocessing.device_preprocess(
        batch, None, dataset_stats.load_stats(config), config, train=False
    )
    logits = state.apply_fn({'params': state.params}, x.reshape(-1, *x.shape[-3:]), train=False)
    expected = np.sort(np.asarray(jax.nn.softmax(logits)).mean(0))[::-1][:5] * 100
    np.testing.assert_allclose(probs, expected, atol=0.01)

    bad = tmp_path / 'notes.jpg'
    bad.write_text('not an image')
    proc = _predict(workdir, bad)
    assert proc.returncode != 0
    assert f'{bad} is not a readable image' in proc.stderr


def test_evaluate_with_no_checkpoint_says_so(tmp_path):
    (tmp_path / 'config.json').write_text(_config().to_json())
    proc = _command('evaluate', tmp_path)
    assert proc.returncode != 0
    assert 'No checkpoint in' in proc.stderr


def test_predict_no_resize_feeds_an_input_sized_image_unchanged(tmp_path):
    from PIL import Image

    from alexnet_jax import dataset_stats

    workdir = tmp_path / 'run'
    config = _config(num_train_steps=2, normalization='channel')
    train.train_and_evaluate(config, str(workdir))
    size = config.image_size
    pixels = np.random.default_rng(1).integers(0, 255, (size, size, 3), np.uint8)
    image = tmp_path / 'input.png'
    Image.fromarray(pixels).save(image)
    proc = _predict(workdir, '--no_resize', '--json', '--top=3', image)
    assert proc.returncode == 0, proc.stderr[-3000:]
    top = json.loads(proc.stdout.strip().splitlines()[0])['top']
    # The model on the image normalised by hand: (pixel - channel mean) / channel std.
    stats = dataset_stats.load_stats(config)
    x = (pixels.astype(np.float32) - stats.channel_mean) / stats.channel_std
    state = trained.load_trained_state(config, str(workdir))
    logits = state.apply_fn({'params': state.params}, x[None], train=False)
    probs = np.asarray(jax.nn.softmax(logits))[0]
    expected = np.argsort(-probs, kind='stable')[:3]
    assert [entry['class'] for entry in top] == list(expected)
    np.testing.assert_allclose([entry['prob'] for entry in top], probs[expected], rtol=1e-4)

    wrong = tmp_path / 'big.png'
    Image.fromarray(np.zeros((size + 4, size, 3), np.uint8)).save(wrong)
    proc = _predict(workdir, '--no_resize', wrong)
    assert proc.returncode == 1
    assert f'{wrong} is {size}x{size + 4}; --no_resize takes images of the model' in proc.stderr
