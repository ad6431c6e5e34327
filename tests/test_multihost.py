"""Two processes on 127.0.0.1 (CPU, gloo) equal one process with two devices."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.test_train import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return {
        **os.environ,
        'PYTHONPATH': ROOT,
        'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
    }


def _run_all(commands, devices):
    procs = [
        subprocess.Popen(
            c,
            cwd=ROOT,
            env=_env(devices),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for c in commands
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outs


def test_two_processes_equal_one_process_with_two_devices(tmp_path):
    driver = os.path.join(ROOT, 'tests', 'multihost_driver.py')
    one, two = tmp_path / 'one.npz', tmp_path / 'two.npz'
    _run_all([[sys.executable, driver, str(one)]], devices=2)
    port = _free_port()
    _run_all(
        [[sys.executable, driver, str(two), str(i), '2', str(port)] for i in range(2)], devices=1
    )
    a, b = np.load(one), np.load(two)
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 10
    for key in a.files:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.slow
def test_cli_runs_on_two_processes(tmp_path):
    port = _free_port()
    base = [
        sys.executable,
        '-m',
        'alexnet_jax.main',
        '--config=configs/fashion_mnist.py',
        f'--workdir={tmp_path}',
        '--config.dataset=synthetic',
        '--config.batch_size=16',
        '--config.synthetic_num_train=256',
        '--config.synthetic_num_eval=50',
        '--config.num_train_steps=6',
        '--config.checkpoint_every_steps=3',
        '--config.log_every_steps=2',
        f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=2',
    ]
    outs = _run_all([base + [f'--process_id={i}'] for i in range(2)], devices=1)
    assert (tmp_path / 'results.json').exists()
    steps = sorted(
        int(p.name) for p in (tmp_path / 'checkpoints').glob('[0-9]*') if p.name.isdigit()
    )
    assert steps[-1] == 6
    assert 'step 6/6' in outs[0] and 'step 6/6' not in outs[1]  # only process 0 logs
