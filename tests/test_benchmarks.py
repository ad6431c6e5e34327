"""The benchmarks' own arithmetic and bookkeeping (experiments/benchmarks/), without timing."""

import gzip
import json
import pathlib
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import models
from experiments.benchmarks import run_all, step_profile, torch_peer, train_step


def _macs_from_model(variant: str) -> tuple[float, float]:
    """Forward multiply-adds of one image, and conv1's, counted from the built model's kernels
    and its layers' output shapes (a second path to the constants the benchmark uses)."""
    size = train_step.IMAGE_SIZE[variant]
    model = models.variant(variant, backend='cpu')
    images = jnp.zeros((1, size, size, 3))
    variables = model.init(jax.random.key(0), images, train=False)
    _, state = model.apply(variables, images, train=False, capture_intermediates=True)
    outputs = flax.traverse_util.flatten_dict(state['intermediates'])
    kernels = flax.traverse_util.flatten_dict(variables['params'])
    total = conv1 = 0.0
    for path, kernel in kernels.items():
        if path[-1] != 'kernel':
            continue
        (out,) = outputs[(*path[:-1], '__call__')]
        # Each output element is a dot product over the kernel's fan-in.
        macs = np.prod(out.shape[1:]) * np.prod(kernel.shape[:-1])
        total += macs
        conv1 = macs if path[0] == 'conv1' else conv1
    return total, conv1


@pytest.mark.parametrize('variant', train_step.VARIANTS)
def test_flop_count_matches_the_model(variant):
    total, conv1 = _macs_from_model(variant)
    assert train_step.FORWARD_MACS[variant] == pytest.approx(total, rel=1e-3)
    assert train_step.CONV1_MACS[variant] == conv1
    # Forward, input gradient and kernel gradient, each as many multiply-adds, 2 FLOPs each;
    # the images get no gradient.
    expected = 2 * 8 * (total + total + (total - conv1))
    assert train_step.train_flops(variant, 8) == pytest.approx(expected, rel=1e-3)


def test_torch_settings_expand_presets_and_refuse_unknown_flags():
    assert torch_peer.torch_flags('eager') == []
    assert torch_peer.torch_flags('best-cpu') == torch_peer.TORCH_PRESETS['best-cpu'].split('+')
    assert torch_peer.torch_flags('cl+fused') == ['cl', 'fused']
    with pytest.raises(
        ValueError, match=r"unknown PyTorch setting\(s\) cudagraph in 'cl\+cudagraph'.*flags cl"
    ):
        torch_peer.torch_flags('cl+cudagraph')


def _run(rates: dict[str, list[float]], memory: dict[str, float]) -> list[dict]:
    """A train_step JSON of one variant: per side, the img/s of each round."""
    ours = rates['jax']
    rows = {}
    for kind, rounds in rates.items():
        row = {
            'img_s': float(np.median(rounds)),
            'memory': {'peak_rss_delta_mib': memory[kind]},
            'flags': kind.removeprefix('torch:').split('+') if kind != 'jax' else None,
        }
        if kind != 'jax':
            row['ratio'] = row['img_s'] and float(np.median(ours)) / row['img_s']
            row['ratio_rounds'] = [o / t for o, t in zip(ours, rounds, strict=True)]
        rows[kind] = row
    return [{'variant': 'owt', 'rows': rows}]


def test_summary_compares_with_the_fastest_setting_over_runs(tmp_path):
    memory = {'jax': 1000.0, 'torch:eager': 900.0, 'torch:cl+fused': 950.0}
    runs = [  # cl+fused is faster in two runs of three: it is PyTorch at its best
        {'jax': [60, 62, 61], 'torch:eager': [40, 41, 42], 'torch:cl+fused': [70, 71, 72]},
        {'jax': [50, 52, 51], 'torch:eager': [55, 56, 57], 'torch:cl+fused': [54, 53, 52]},
        {'jax': [58, 60, 59], 'torch:eager': [30, 31, 32], 'torch:cl+fused': [66, 65, 64]},
    ]
    paths = []
    for k, rates in enumerate(runs):
        paths.append(tmp_path / f'run{k}.json')
        paths[-1].write_text(json.dumps(_run(rates, memory)))
    table = run_all.train_step_summary([str(p) for p in paths])
    row = next(line for line in table.splitlines() if line.startswith('| owt'))
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[2] == 'cl+fused'
    ratios = [59 / 65, 51 / 53, 61 / 71]  # each run's median over its rounds
    assert cells[4] == (f'{np.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})')
    every_round = [o / t for r in runs for o, t in zip(r['jax'], r['torch:cl+fused'], strict=True)]
    assert cells[5] == f'{min(every_round):.2f}-{max(every_round):.2f}'
    assert cells[1].startswith('59.0 (51.0-61.0)')


def test_the_machine_record_and_each_log_name_the_settings_that_change_a_benchmark(
    tmp_path, monkeypatch
):
    for name in run_all.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=dot')
    monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.hugetlb=1')
    record = run_all.machine_record(run_all.ROOT)
    assert record['environment']['XLA_FLAGS'] == '--xla_cpu_experimental_ynn_fusion_type=dot'
    assert record['environment']['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=1'
    assert 'LD_PRELOAD' not in record['environment']
    # A benchmark's log starts with the command as a shell would rerun it, settings first.
    monkeypatch.setitem(run_all.BENCHMARKS, 'echo', ('no_such_script', ['--out dir']))
    run_all.run_benchmark('echo', str(tmp_path), run_all.ROOT, 'echo')
    first = (tmp_path / 'echo.log').read_text().splitlines()[0]
    assert first.startswith(
        '$ XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot '
        'GLIBC_TUNABLES=glibc.malloc.hugetlb=1 '
    )
    assert first.endswith("no_such_script.py '--out dir'")


def test_every_benchmark_run_all_names_is_a_script_that_takes_its_arguments():
    # Each script's argument parser, read from its source: run_all passes only flags it defines.
    folder = pathlib.Path(run_all.ROOT) / 'experiments' / 'benchmarks'
    for name, (script, args) in run_all.BENCHMARKS.items():
        source = (folder / f'{script}.py').read_text()
        defined = set(re.findall(r"add_argument\(\s*'(--[a-z0-9-]+)'", source))
        passed = {a for a in args if a.startswith('--')}
        assert passed <= defined, (name, passed - defined)


def test_profile_summary_counts_device_time_once_per_step(tmp_path):
    """A GPU-shaped Perfetto trace (two streams that overlap, an XLA Ops lane, a host lane): the
    busy time is the union of the kernels' spans, and each kernel's total is its own."""
    meta = [
        {'ph': 'M', 'pid': 1, 'name': 'process_name', 'args': {'name': '/host:CPU'}},
        {'ph': 'M', 'pid': 2, 'name': 'process_name', 'args': {'name': '/device:GPU:0'}},
        {'ph': 'M', 'pid': 1, 'tid': 5, 'name': 'thread_name', 'args': {'name': 'python'}},
        {'ph': 'M', 'pid': 2, 'tid': 7, 'name': 'thread_name', 'args': {'name': 'Stream #7'}},
        {'ph': 'M', 'pid': 2, 'tid': 8, 'name': 'thread_name', 'args': {'name': 'Stream #8'}},
        {'ph': 'M', 'pid': 2, 'tid': 9, 'name': 'thread_name', 'args': {'name': 'XLA Ops'}},
    ]

    def kernel(tid, ts, dur, name, op):
        return {
            'ph': 'X',
            'pid': 2,
            'tid': tid,
            'ts': ts,
            'dur': dur,
            'name': name,
            'args': {'hlo_op': op},
        }

    spans = [
        kernel(7, 0, 300, 'conv_kernel', 'conv1'),  # 0-300
        kernel(8, 200, 200, 'gemm', 'fc6'),  # 200-400: overlaps the first by 100
        kernel(7, 1000, 500, 'conv_kernel', 'conv2'),  # 1000-1500
        {'ph': 'X', 'pid': 2, 'tid': 9, 'ts': 0, 'dur': 1500, 'name': 'all ops'},
        {'ph': 'X', 'pid': 1, 'tid': 5, 'ts': 0, 'dur': 9000, 'name': 'host work'},
    ]
    path = tmp_path / 'trace.json.gz'
    with gzip.open(path, 'wt') as f:
        json.dump({'traceEvents': meta + spans}, f)
    text = step_profile.summarize(str(path), steps=2)
    # (400 + 500) us of kernels busy over 2 steps; conv_kernel 800 us of 1000 us of kernels.
    assert 'kernels busy 0.450 ms per step' in text
    assert '| `conv_kernel` | 1 | 0.400 | 80.0% |' in text
    assert '| `fc6` | 0.5 | 0.100 | 20.0% |' in text
    assert 'host work' not in text and 'all ops' not in text
    assert step_profile.busy_time([(0, 3), (1, 2), (5, 6)]) == 4
