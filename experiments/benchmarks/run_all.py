"""Runs the speed benchmarks into one folder of raw logs, with the machine and versions they ran on.

    python -m experiments.benchmarks.run_all --out experiments/logs/$(date +%F)-$(hostname)
    python -m experiments.benchmarks.run_all --out DIR --only train_step --repo OLD --label before-

Each benchmark runs as its own process (``<name>.log``: its whole output; ``<name>.json`` where
the benchmark writes one). ``machine.json`` records the date, the commit, the library versions,
``lscpu`` (the instruction set: AVX2 or AVX-512), ``nvidia-smi`` where there is one, and the load
average before and after each benchmark. ``--repo`` runs another checkout's benchmark scripts
with this interpreter (e.g. the commit before a change, for a before/after in one sitting);
``--label`` prefixes the file names. At the end the training-step table is printed as markdown.
"""

import argparse
import ctypes
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time

from experiments.benchmarks.train_step import memory_mib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))

# name -> arguments of experiments/benchmarks/<script>.py; '{json}' becomes the JSON path.
BENCHMARKS = {
    'lrn': ('lrn', []),
    'layers': ('layers', ['--variant', 'owt']),
    'max_pool': ('max_pool', []),
    'input_pipeline': ('input_pipeline', ['--json', '{json}']),
    'record_formats': ('record_formats', []),
    'end_to_end': ('end_to_end', ['--json', '{json}']),
    'seeds_vmap': ('seeds_vmap', ['--json', '{json}']),
    'pinned_runs': ('pinned_runs', []),
    'kernel_candidates': ('kernel_candidates', []),
    'host_malloc': ('host_malloc', ['--json', '{json}']),
    # Section 3.2's towers against data parallelism on fake CPU devices (issue 8), at the small
    # batches where the towers' activation traffic is cheap and at one where it is not.
    'towers_2x16': ('towers', ['--devices', '2', '--batch', '16', '--rounds', '5']),
    'towers_4x32': ('towers', ['--devices', '4', '--batch', '32', '--rounds', '5']),
    'towers_2x64': ('towers', ['--devices', '2', '--batch', '64', '--rounds', '5']),
    # PyTorch's defaults, and its settings that measured fastest on CPU with and without
    # torch.compile: the fastest of them per variant is PyTorch at its best (issue 19).
    'train_step': (
        'train_step',
        ['--repeats', '5', '--torch', 'eager,best-cpu,cl+compile+fused+malloc', '--json', '{json}'],
    ),
}
# Run --runs times each, as separate processes (the headline is the median over runs).
REPEATED = ('train_step',)
PACKAGES = (
    'jax',
    'jaxlib',
    'flax',
    'optax',
    'numpy',
    'tensorflow-cpu',
    'torch',
    'ml-collections',
    'simplejpeg',
)


def _command_output(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# Settings read from the environment that change what a benchmark measures.
# (XLA_FLAGS as set here: runtime.configure() adds our CPU defaults where the user set none.)
ENVIRONMENT = (
    'XLA_FLAGS',
    'JAX_PLATFORMS',
    'ALEXNET_JAX_KEEP_HOST_MEMORY',
    'ALEXNET_JAX_ONEDNN',
    'ALEXNET_JAX_WINOGRAD',
    'ONEDNN_MAX_CPU_ISA',  # caps oneDNN's instruction set (ours and PyTorch's): an AVX2 host
    'ATEN_CPU_CAPABILITY',  # caps PyTorch's own kernels and Inductor's code the same way
    'MKL_ENABLE_INSTRUCTIONS',
    'OMP_WAIT_POLICY',
    'GLIBC_TUNABLES',
    'LD_PRELOAD',
    'MALLOC_CONF',
    'MALLOC_ARENA_MAX',
    'MALLOC_TRIM_THRESHOLD_',
    'MALLOC_MMAP_THRESHOLD_',
    'OMP_NUM_THREADS',
    'CUDA_VISIBLE_DEVICES',
)


def onednn_version() -> str | None:
    """The system oneDNN's version (what alexnet_jax/onednn_conv.py links), if it loads."""

    class Version(ctypes.Structure):
        _fields_ = [('major', ctypes.c_int), ('minor', ctypes.c_int), ('patch', ctypes.c_int)]

    try:
        library = ctypes.CDLL('libdnnl.so.2')  # Debian 12's libdnnl2 (oneDNN 2.x)
    except OSError:
        return None
    library.dnnl_version.restype = ctypes.POINTER(Version)
    v = library.dnnl_version().contents
    return f'{v.major}.{v.minor}.{v.patch}'


def machine_record(repo: str) -> dict:
    """Where and with what the benchmarks ran."""
    lscpu = _command_output(['lscpu']) or ''
    flags = next((line for line in lscpu.splitlines() if line.startswith('Flags:')), '')
    isa = 'AVX-512' if ' avx512f' in flags else 'AVX2' if ' avx2' in flags else 'other'
    commit = _command_output(['git', '-C', repo, 'rev-parse', 'HEAD'])
    return {
        'date': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
        'host': socket.gethostname(),
        'repo': repo,
        'commit': commit.strip() if commit else None,
        'python': platform.python_version(),
        'versions': {**{p: _version(p) for p in PACKAGES}, 'onednn': onednn_version()},
        'cpus': os.cpu_count(),
        'instruction_set': isa,
        'lscpu': lscpu,
        'nvidia_smi': _command_output(['nvidia-smi']),
        'environment': {k: os.environ[k] for k in ENVIRONMENT if k in os.environ},
        'load_average_start': os.getloadavg(),
        'runs': [],
    }


def run_benchmark(name: str, out: str, repo: str, stem: str) -> dict:
    """Runs benchmark ``name`` into ``out/<stem>.log`` (and ``.json``)."""
    script, args = BENCHMARKS[name]
    json_path = os.path.join(out, f'{stem}.json')
    log_path = os.path.join(out, f'{stem}.log')
    cmd = [sys.executable, os.path.join(repo, 'experiments', 'benchmarks', f'{script}.py')]
    cmd += [a.replace('{json}', json_path) for a in args]
    record = {'name': name, 'stem': stem, 'command': cmd, 'load_before': os.getloadavg()}
    started = time.perf_counter()
    with open(log_path, 'w') as log:
        env = [f'{k}={shlex.quote(os.environ[k])}' for k in ENVIRONMENT if k in os.environ]
        log.write(f'$ {" ".join([*env, shlex.join(cmd)])}\n')
        log.flush()
        code = subprocess.run(cmd, cwd=repo, stdout=log, stderr=subprocess.STDOUT).returncode
    record.update(
        returncode=code,
        seconds=round(time.perf_counter() - started, 1),
        load_after=os.getloadavg(),
        log=os.path.basename(log_path),
        json=os.path.basename(json_path) if os.path.exists(json_path) else None,
    )
    print(f'{name}: exit {code}, {record["seconds"]:.0f} s -> {log_path}', flush=True)
    return record


def _median_range(values: list[float], fmt: str = '.2f') -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    low, high = min(values), max(values)
    return f'{statistics.median(values):{fmt}} ({low:{fmt}}-{high:{fmt}})'


def train_step_summary(paths: list[str]) -> str:
    """Markdown: per variant, ours against PyTorch at its best over separate runs of train_step.

    PyTorch at its best is the setting with the highest median img/s over the runs. Each figure
    is the median over runs (each run's own figure being the median of its rounds), with the
    range over runs in brackets; "rounds" is the lowest and highest ratio of any single round.
    """
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append({r['variant']: r for r in json.load(f)})
    lines = [
        f'{len(runs)} run(s); median over runs (range over runs)',
        '',
        '| variant | ours img/s | PyTorch at its best: setting | its img/s | ours / best '
        '| rounds | ours / PyTorch eager | ours MiB | best MiB |',
        '|---|---:|---|---:|---:|---|---:|---:|---:|',
    ]
    for variant in runs[0]:
        per_run = [run[variant]['rows'] for run in runs if variant in run]
        # A setting that failed to build in some run (train_step leaves it out) is not compared.
        settings = [k for k in per_run[0] if k != 'jax' and all(k in rows for rows in per_run)]
        if not settings:
            lines.append(f'| {variant} | (no PyTorch setting ran in every run) |')
            continue

        def median_img_s(kind: str, per_run=per_run) -> float:
            return statistics.median(rows[kind]['img_s'] for rows in per_run)

        best = max(settings, key=median_img_s)
        rounds = [x for rows in per_run for x in rows[best]['ratio_rounds']]
        eager = 'torch:eager'
        vs_eager = ''
        if eager in settings:
            vs_eager = _median_range([rows[eager]['ratio'] for rows in per_run])
        lines.append(
            f'| {variant} | {_median_range([rows["jax"]["img_s"] for rows in per_run], ".1f")} '
            f'| {_setting_name(best, per_run[0][best]["flags"])} '
            f'| {_median_range([rows[best]["img_s"] for rows in per_run], ".1f")} '
            f'| {_median_range([rows[best]["ratio"] for rows in per_run])} '
            f'| {min(rounds):.2f}-{max(rounds):.2f} '
            f'| {vs_eager} '
            f'| {_median_range([memory_mib(rows["jax"]) for rows in per_run], ".0f")} '
            f'| {_median_range([memory_mib(rows[best]) for rows in per_run], ".0f")} |'
        )
    return '\n'.join(lines)


def _setting_name(kind: str, flags: list[str]) -> str:
    name, spelled = kind.removeprefix('torch:'), '+'.join(flags) or 'defaults'
    return name if name == spelled else f'{name} ({spelled})'


def markdown_of(log_path: str) -> str:
    """The markdown table lines a benchmark printed (what RESULTS.md quotes)."""
    with open(log_path) as f:
        return ''.join(line for line in f if line.startswith('|'))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='folder for the logs (created)')
    parser.add_argument('--only', default=','.join(BENCHMARKS), help='comma-separated names')
    parser.add_argument('--repo', default=ROOT, help='the checkout whose benchmarks run')
    parser.add_argument('--label', default='', help='prefix of the file names (e.g. before-)')
    parser.add_argument(
        '--runs', type=int, default=3, help=f'separate runs of {", ".join(REPEATED)}'
    )
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(',') if n]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(
            f'unknown benchmark(s) {", ".join(unknown)}; choose from {", ".join(BENCHMARKS)}'
        )
    args.out = os.path.abspath(args.out)  # the benchmarks run in --repo
    os.makedirs(args.out, exist_ok=True)
    repo = os.path.abspath(args.repo)
    record = machine_record(repo)
    # A folder may hold several sittings (other labels, or --only another benchmark later):
    # never overwrite an earlier sitting's record.
    machine_path = os.path.join(args.out, f'{args.label}machine.json')
    sitting = 1
    while os.path.exists(machine_path):
        sitting += 1
        machine_path = os.path.join(args.out, f'{args.label}machine-{sitting}.json')
    for name in names:
        stems = [f'{args.label}{name}']
        if name in REPEATED and args.runs > 1:
            stems = [f'{args.label}{name}-run{k}' for k in range(1, args.runs + 1)]
        for stem in stems:
            record['runs'].append(run_benchmark(name, args.out, repo, stem))
            with open(machine_path, 'w') as f:  # after each, so a run cut short keeps its record
                json.dump(record, f, indent=1)
    print(f'\n{record["instruction_set"]}, {record["cpus"]} cpus, commit {record["commit"]}')
    for run in record['runs']:
        print(f'\n{run["stem"]} (exit {run["returncode"]}):')
        print(markdown_of(os.path.join(args.out, run['log'])), end='')
    runs = record['runs']
    steps = [
        os.path.join(args.out, r['json']) for r in runs if r['name'] == 'train_step' and r['json']
    ]
    if steps:
        print('\nTraining step, PyTorch at its best:')
        print(train_step_summary(steps))
    return 0 if all(r['returncode'] == 0 for r in record['runs']) else 1


if __name__ == '__main__':
    sys.exit(main())
