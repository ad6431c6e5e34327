"""Which glibc malloc setting should a CPU training step run under? Time, page faults, peak RSS.

XLA:CPU allocates every step's temporary buffer afresh (hundreds of MB for AlexNet at batch 32).
Eleven settings, each given to a fresh process through its environment (glibc reads
``GLIBC_TUNABLES`` when a process starts):

- ``default``: glibc's defaults. Blocks this large are mapped anew and unmapped on free, so a
  step faults in its temporary buffer 4 KiB at a time.
- ``keep``: freed memory kept in one heap, never trimmed, nothing mapped (``mmap_max=0``,
  ``trim_threshold`` at its maximum, ``arena_max=1``, as ``xla_cpu.keep_host_memory`` sets
  them), steps dispatched ahead: what ``main.py`` did before.
- ``keep+sync``: the same, one step at a time (``jax_cpu_enable_async_dispatch`` off): what
  ``main.py`` does with the ImageNet configs (``cpu_dispatch_ahead=False``). Like training, the
  step is compiled before its first call and the memory freed meanwhile handed back
  (``steps.compile_ahead``; every setting but ``main+first-call`` does this).
- ``main``: the process set up exactly as ``main.py`` sets it for the ImageNet configs: glibc's
  tcache off at start (the tunable ``main.py`` restarts itself with), then
  ``runtime.configure(keep_host_memory=True, dispatch_ahead=False)`` (the ``keep`` values,
  applied by ``mallopt`` once Python runs, not by glibc at start).
- ``keep+sync+notcache``, ``keep+sync+nofast``, ``keep+sync+merge``: ``keep+sync`` with glibc's
  tcache off, its fast bins off, or both: which one keeps XLA's freed scratch block reusable
  (the tcache; RESULTS.md, issue 19).
- ``main+first-call``: ``main``, the step compiled by its first call (as before
  ``compile_ahead``).
- ``huge``: glibc's defaults with transparent huge pages for the blocks it maps
  (``glibc.malloc.hugetlb=1``): tried, not used.
- ``jemalloc`` / ``tcmalloc``: another allocator preloaded (``LD_PRELOAD``; Debian's
  ``libjemalloc2`` / ``libtcmalloc-minimal4``), one step at a time; the glibc values do not
  apply. Tried, not used (RESULTS.md, issue 19).

Each process builds the training step of ``train_step.py`` (same state, batch and settings),
runs its first step and a few more, then times ``--steps`` steps in a row (waited for after the
last, as in training) and reports ms a step, minor page faults a step, and its peak RSS less its
RSS after imports, and the size of the step's scratch block as XLA planned it
(``memory_analysis().temp_size_in_bytes``). Settings alternate within each round; the table
gives the median over rounds and the range.

    python -m experiments.benchmarks.host_malloc [--variants paper,owt] [--rounds 3] [--steps 10] \
        [--settings main,main+first-call]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)
from alexnet_jax.xla_cpu import NO_TCACHE  # noqa: E402  (the tunable main.py restarts with)

KEEP = ':'.join(
    (
        'glibc.malloc.mmap_max=0',
        'glibc.malloc.trim_threshold=2147483647',
        'glibc.malloc.arena_max=1',
    )
)
# Set (to anything) for synchronous dispatch on the CPU (jax_cpu_enable_async_dispatch off).
SYNC_ENV = 'HOST_MALLOC_SYNC_DISPATCH'
# Set (to anything) to have the step compiled by its first call, not ahead of it.
FIRST_CALL_ENV = 'HOST_MALLOC_FIRST_CALL_COMPILES'
# Set (to anything) to set the process up as main.py does (runtime.configure keeps host memory).
MAIN_ENV = 'HOST_MALLOC_AS_MAIN'
# name -> environment variables of the process
SETTINGS = {
    'default': {},
    'keep': {'GLIBC_TUNABLES': KEEP},
    'keep+sync': {'GLIBC_TUNABLES': KEEP, SYNC_ENV: '1'},
    'huge': {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'},
    'main': {MAIN_ENV: '1', SYNC_ENV: '1', 'GLIBC_TUNABLES': NO_TCACHE},
    'keep+sync+notcache': {'GLIBC_TUNABLES': f'{KEEP}:{NO_TCACHE}', SYNC_ENV: '1'},
    'keep+sync+nofast': {'GLIBC_TUNABLES': KEEP + ':glibc.malloc.mxfast=0', SYNC_ENV: '1'},
    'keep+sync+merge': {
        'GLIBC_TUNABLES': f'{KEEP}:{NO_TCACHE}:glibc.malloc.mxfast=0',
        SYNC_ENV: '1',
    },
    'jemalloc': {'LD_PRELOAD': 'libjemalloc.so.2', SYNC_ENV: '1'},
    'tcmalloc': {'LD_PRELOAD': 'libtcmalloc_minimal.so.4', SYNC_ENV: '1'},
    'main+first-call': {
        MAIN_ENV: '1',
        SYNC_ENV: '1',
        'GLIBC_TUNABLES': NO_TCACHE,
        FIRST_CALL_ENV: '1',
    },
}
WARMUP_STEPS = 5


def child(variant: str, steps: int, batch: int) -> None:
    """One setting, one variant: prints one JSON line of measurements."""
    preload = os.environ.get('LD_PRELOAD')
    with open('/proc/self/maps') as f:
        if preload and preload not in f.read():  # ld.so only warns and goes on without it
            raise SystemExit(
                f'{preload} was not loaded: install it (Debian: apt-get install libjemalloc2 '
                'libtcmalloc-minimal4) or leave its setting out of --settings'
            )
    from alexnet_jax import runtime

    if os.environ.get(MAIN_ENV):
        runtime.configure(keep_host_memory=True, dispatch_ahead=False)
    else:
        runtime.configure()
    import jax

    if os.environ.get(SYNC_ENV):
        jax.config.update('jax_cpu_enable_async_dispatch', False)
    from experiments.benchmarks import train_step
    from experiments.benchmarks.host_memory import peak_rss_mib

    ahead = not os.environ.get(FIRST_CALL_ENV)
    runner = train_step.JaxRunner(
        argparse.Namespace(batch=batch, half=False, compile_ahead=ahead), variant
    )
    runner.first_step()
    for _ in range(WARMUP_STEPS):
        runner.run_step(wait=True)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    timed = train_step.timed_steps(runner, steps)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    peak = peak_rss_mib() - runner.rss_base
    # After the peak is read: the step's one scratch block, as XLA planned it.
    compiled = runner.step.lower(runner.state, runner.batch, runner.rng).compile()
    result = {
        'ms_per_step': 1000 * timed['time'],
        'faults_per_step': faults / steps,
        'peak_rss_delta_mib': peak,
        'scratch_bytes': compiled.memory_analysis().temp_size_in_bytes,
    }
    print(json.dumps(result), flush=True)


def _measure(setting: str, variant: str, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', 'LD_PRELOAD')}
    env.update(SETTINGS[setting])
    command = [sys.executable, '-m', 'experiments.benchmarks.host_malloc', '--child', variant]
    command += ['--steps', str(args.steps), '--batch', str(args.batch)]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f'{setting} {variant}: exit {out.returncode}\n{out.stderr[-2000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cell(values: list[float]) -> str:
    return f'{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})'


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--variants', default='paper,owt')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--settings', default=','.join(SETTINGS), help='which, comma-separated')
    parser.add_argument('--json', help='write the measurements here')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.steps, args.batch)
        return
    with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
        thp = f.read().strip()
    print(f'glibc {platform.libc_ver()[1]}, transparent huge pages: {thp}; batch {args.batch}')
    settings = args.settings.split(',')
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f'--settings: unknown {unknown}; choose from {list(SETTINGS)}')
    results: dict[str, dict[str, list[dict]]] = {}
    for variant in args.variants.split(','):
        runs = results.setdefault(variant, {s: [] for s in settings})
        for r in range(args.rounds):
            for setting in settings:
                runs[setting].append(_measure(setting, variant, args))
                print(f'{variant} round {r + 1} {setting}: {runs[setting][-1]}', flush=True)
    print('\n| variant | malloc | ms a step | page faults a step | peak RSS MiB |')
    print('|---|---|---:|---:|---:|')
    for variant, runs in results.items():
        for setting, measured in runs.items():
            cells = [
                _cell([m[key] for m in measured])
                for key in ('ms_per_step', 'faults_per_step', 'peak_rss_delta_mib')
            ]
            print(f'| {variant} | {setting} | ' + ' | '.join(cells) + ' |')
    print(
        f'median (range) over {args.rounds} rounds, settings alternated; {args.steps} steps '
        f'timed after {WARMUP_STEPS + 1}; peak RSS less the RSS after imports'
    )
    for variant, runs in results.items():
        scratch = {m['scratch_bytes'] for measured in runs.values() for m in measured}
        print(f'{variant}: XLA scratch block (memory_analysis) {sorted(scratch)} bytes')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'settings': SETTINGS, 'thp': thp, 'results': results}, f, indent=1)


if __name__ == '__main__':
    main()
