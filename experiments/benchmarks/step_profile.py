"""Where a training step's device time goes, from JAX's profiler: the step's kernels, ranked.

The step of ``train_step.py``'s ``JaxRunner`` (the one training runs) is compiled, warmed up,
then ``--steps`` steps run under ``jax.profiler.trace``. From the trace's Perfetto export this
prints, per step: the wall time, the time the device was busy (the union of its kernels), and
the kernels and XLA ops that took the most device time, each with its share. The raw trace
(``trace.json.gz``, readable in ui.perfetto.dev) and the compiled step's HLO (which names each
fusion's instructions) are kept in ``--out``, so the table can be redone offline:

    python experiments/benchmarks/step_profile.py --variant owt --batch 256 --half --out DIR
    python experiments/benchmarks/step_profile.py --trace DIR/trace.json.gz --steps 5

``--kernels`` swaps kernels as ``step_parts.py`` does (e.g. ``s2d``). On CPU the trace has no
device lanes (XLA:CPU's work shows on host threads), so only the wall time is printed.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)


def device_lanes(events: list[dict]) -> dict[tuple[int, int], str]:
    """(pid, tid) -> 'process / thread' for every thread of a device process (/device:...)."""
    processes, threads = {}, {}
    for e in events:
        if e.get('ph') != 'M':
            continue
        if e.get('name') == 'process_name':
            processes[e['pid']] = e['args']['name']
        elif e.get('name') == 'thread_name':
            threads[e['pid'], e['tid']] = e['args']['name']
    return {
        key: f'{processes[key[0]]} / {name}'
        for key, name in threads.items()
        if processes.get(key[0], '').startswith('/device:')
    }


def busy_time(spans: list[tuple[float, float]]) -> float:
    """The length of the union of [start, end) spans (overlapping streams counted once)."""
    total, end = 0.0, float('-inf')
    for start, stop in sorted(spans):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def summarize(trace_path: str, steps: int, top: int = 25) -> str:
    """Markdown tables of the device time in a Perfetto trace of ``steps`` steps."""
    with gzip.open(trace_path, 'rt') as f:
        trace = json.load(f)
    events = trace['traceEvents'] if isinstance(trace, dict) else trace
    lanes = device_lanes(events)
    if not lanes:
        return 'no device lanes in the trace (a CPU run): see the wall time above'
    by_lane: dict[str, list[dict]] = collections.defaultdict(list)
    for e in events:
        if e.get('ph') == 'X' and (e.get('pid'), e.get('tid')) in lanes:
            e['ts'], e['dur'] = float(e.get('ts', 0)), float(e.get('dur', 0))
            by_lane[lanes[e['pid'], e['tid']]].append(e)
    lines = ['| device lane | events | busy ms per step |', '|---|---:|---:|']
    for lane, es in sorted(by_lane.items()):
        busy = busy_time([(e['ts'], e['ts'] + e['dur']) for e in es]) / 1e3 / steps
        lines.append(f'| {lane} | {len(es)} | {busy:.3f} |')
    # Kernels: the lanes of the device's streams, not the summaries XLA derives from them (XLA
    # Ops, XLA Modules, Steps); where no lane is named a stream, every lane but those.
    kernel_lanes = [lane for lane in by_lane if 'Stream' in lane] or [
        lane for lane in by_lane if not any(w in lane for w in ('XLA', 'Steps', 'Modules'))
    ]
    kernels = [e for lane in kernel_lanes for e in by_lane[lane]]
    busy = busy_time([(e['ts'], e['ts'] + e['dur']) for e in kernels]) / 1e3 / steps
    lines.append(f'\nkernels busy {busy:.3f} ms per step (union over streams)')
    for title, key in (
        ('kernel', lambda e: e['name']),
        ('XLA op (hlo_op of the kernel)', lambda e: e.get('args', {}).get('hlo_op', '?')),
    ):
        totals: dict[str, float] = collections.defaultdict(float)
        counts: collections.Counter = collections.Counter()
        for e in kernels:
            totals[key(e)] += e['dur']
            counts[key(e)] += 1
        whole = sum(totals.values()) or 1.0
        lines += [
            f'\n| {title} | calls per step | ms per step | share |',
            '|---|---:|---:|---:|',
        ]
        for name, us in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(
                f'| `{name[:110]}` | {counts[name] / steps:g} | {us / 1e3 / steps:.3f} '
                f'| {100 * us / whole:.1f}% |'
            )
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--variant', default='owt')
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--half', action='store_true', help='bfloat16 compute')
    parser.add_argument('--steps', type=int, default=5, help='profiled steps')
    parser.add_argument('--kernels', default='', help="step_parts.py's kernel swaps, e.g. s2d")
    parser.add_argument('--out', help='keep the trace and the HLO here')
    parser.add_argument('--trace', help='only summarise this trace.json.gz')
    parser.add_argument('--top', type=int, default=25)
    args = parser.parse_args()
    if args.trace:
        print(summarize(args.trace, args.steps, args.top))
        return

    from alexnet_jax import runtime

    runtime.configure(keep_host_memory=True, dispatch_ahead=False)  # as train_step's worker
    import jax

    from experiments.benchmarks.step_parts import PARTS
    from experiments.benchmarks.train_step import JaxRunner

    kernels = {}
    for key in filter(None, args.kernels.split(',')):
        if key not in PARTS or not PARTS[key][2]:
            swaps = [k for k, part in PARTS.items() if part[2]]
            parser.error(f'--kernels {key}: not a kernel swap; choose from {swaps}')
        kernels.update(PARTS[key][2])
    runner = JaxRunner(args, args.variant, kernels=kernels)
    for i in range(5):  # compile, then warm up
        runner.run_step(wait=i == 4)
    walls = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(args.steps):
            runner.run_step(wait=i == args.steps - 1)
        walls.append((time.perf_counter() - start) / args.steps)
    out = args.out or tempfile.mkdtemp()
    os.makedirs(out, exist_ok=True)
    where = tempfile.mkdtemp()
    with jax.profiler.trace(where, create_perfetto_trace=True):
        for i in range(args.steps):
            runner.run_step(wait=i == args.steps - 1)
    # The Perfetto export, else the profiler's own Chrome-trace export (the same JSON events);
    # only that one file is kept (the XPlane protobuf can be large).
    found = [
        path
        for pattern in ('perfetto_trace.json.gz', '*.trace.json.gz')
        for path in glob.glob(os.path.join(where, '**', pattern), recursive=True)
    ]
    if not found:
        raise SystemExit(f'the profiler wrote no JSON trace in {where}')
    trace = os.path.join(out, 'trace.json.gz')
    shutil.copy(found[0], trace)
    shutil.rmtree(where)
    print(
        f'{args.variant}, batch {args.batch}, {"bf16" if args.half else "fp32"}, '
        f'{jax.devices()[0].device_kind}, jax {jax.__version__}, kernels swapped: '
        f'{args.kernels or "none"}; wall {statistics.median(walls) * 1e3:.3f} ms per step '
        f'(median of 5 rounds of {args.steps}, {min(walls) * 1e3:.3f}-{max(walls) * 1e3:.3f}); '
        f'trace and HLO in {out}',
        flush=True,
    )
    print(summarize(trace, args.steps, args.top), flush=True)
    # The compiled step's HLO names what each fusion in the trace computes.
    compiled = runner.step.lower(runner.state, runner.batch, runner.rng).compile()
    with gzip.open(os.path.join(out, 'step.hlo.txt.gz'), 'wt') as f:
        f.write(compiled.as_text())


if __name__ == '__main__':
    main()
