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
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time

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
    # Equal malloc settings on both sides: the stable comparison (RESULTS.md, issue 7).
    'train_step': (
        'train_step',
        ['--repeats', '3', '--torch-keep-host-memory', '--json', '{json}'],
    ),
}
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
        'versions': {p: _version(p) for p in PACKAGES},
        'cpus': os.cpu_count(),
        'instruction_set': isa,
        'lscpu': lscpu,
        'nvidia_smi': _command_output(['nvidia-smi']),
        'load_average_start': os.getloadavg(),
        'runs': [],
    }


def run_benchmark(name: str, out: str, repo: str, label: str) -> dict:
    script, args = BENCHMARKS[name]
    json_path = os.path.join(out, f'{label}{name}.json')
    log_path = os.path.join(out, f'{label}{name}.log')
    cmd = [sys.executable, os.path.join(repo, 'experiments', 'benchmarks', f'{script}.py')]
    cmd += [a.replace('{json}', json_path) for a in args]
    record = {'name': name, 'command': cmd, 'load_before': os.getloadavg()}
    started = time.perf_counter()
    with open(log_path, 'w') as log:
        log.write(f'$ {" ".join(cmd)}\n')
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


def train_step_table(path: str) -> str:
    """The markdown table of a train_step JSON (the rows RESULTS.md quotes)."""
    with open(path) as f:
        results = json.load(f)
    lines = [
        '| variant | ours img/s | PyTorch img/s | ratio | ours MiB | PyTorch MiB |',
        '|---|---|---|---|---|---|',
    ]
    for r in results:
        jm, tm = r['jax_memory'], r.get('torch_memory', {})
        lines.append(
            f'| {r["variant"]} | {r["jax_img_s"]:.2f} | {r.get("torch_img_s", float("nan")):.2f} '
            f'| {r.get("ratio", float("nan")):.2f} | {jm.get("peak_rss_delta_mib", 0):.0f} '
            f'| {tm.get("peak_rss_delta_mib", float("nan")):.0f} |'
        )
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='folder for the logs (created)')
    parser.add_argument('--only', default=','.join(BENCHMARKS), help='comma-separated names')
    parser.add_argument('--repo', default=ROOT, help='the checkout whose benchmarks run')
    parser.add_argument('--label', default='', help='prefix of the file names (e.g. before-)')
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
    machine_path = os.path.join(args.out, f'{args.label}machine.json')
    for name in names:
        record['runs'].append(run_benchmark(name, args.out, repo, args.label))
        with open(machine_path, 'w') as f:  # after each, so a run cut short keeps its record
            json.dump(record, f, indent=1)
    table = os.path.join(args.out, f'{args.label}train_step.json')
    if os.path.exists(table):
        print(f'\n{record["instruction_set"]}, {record["cpus"]} cpus, commit {record["commit"]}:')
        print(train_step_table(table))
    return 0 if all(r['returncode'] == 0 for r in record['runs']) else 1


if __name__ == '__main__':
    sys.exit(main())
