"""Images/s of a full training step: this project's ``pmap``-ed step against the same PyTorch net.

Our side is exactly what training runs: ``steps.pmap_steps(config, stats)`` on the
``configs/imagenet.py`` config with ``dataset='synthetic'`` (one host batch made by numpy and
placed once, so the step is measured, not the input pipeline), state created by
``steps.create_train_state`` and placed by ``parallel.replicate``. The step includes the on-device
preprocessing (uint8 -> float, PCA colour noise, mean-image subtraction), the forward and backward
pass, the ``pmean`` and Section 5's SGD update (momentum 0.9, weight decay 5e-4). Its worker
process starts as ``main.py`` does with the ImageNet configs: glibc's tcache off (the tunable
``main.py`` restarts itself with, ``xla_cpu.NO_TCACHE``), then ``runtime.configure(
keep_host_memory=True, dispatch_ahead=False)`` first (on CPU, glibc keeps freed memory for the
next step, one step runs at a time, and XLA:CPU's YNNPACK fusions are on).

The PyTorch side is the same architecture, written in ``torch_peer.py``: grouped convolutions
(``groups=2``) for ``paper``, ``nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2)`` (PyTorch
divides alpha by the size, so the paper's 1e-4 is 5e-4 there), dropout 0.5 where the variant has it,
the same batch, ``torch.optim.SGD(momentum=0.9, weight_decay=5e-4)`` on the kernels (biases not
decayed, as here). Its input is a batch made once. It runs in one or more *settings* (``--torch``),
each a row of the table: a preset (``eager``: PyTorch's defaults; ``best-cpu``; ``best-gpu``) or
flags joined by '+' (``cl`` channels-last, ``compile`` / ``autotune`` torch.compile of the forward
pass and loss in the default / max-autotune mode, ``foreach`` / ``fused`` SGD, ``malloc`` our malloc
settings, the tcache tunable included). PyTorch at its best is the fastest setting of each run,
per variant; the presets are what measured fastest here (RESULTS.md, issue 19).

Each side runs in its own worker process (clean peak memory, no shared thread pools); the
parent alternates rounds between them so that load from other processes hits all alike, and
reports the median round (a round is ``--steps`` steps in a row, waited for after the last) and
each round's ratio. Per variant and side: img/s, ratio ours/theirs, the first step's wall time
(tracing and compiling included, on both sides), the peak memory (RSS high-water mark minus the
RSS after imports; on GPU the allocator's peak), and the achieved FLOP/s against a measured
matmul peak (bf16 with --half).

    python experiments/benchmarks/train_step.py                # CPU, batch 32, 3 variants
    python experiments/benchmarks/train_step.py --variants owt --torch eager,cl+fused+malloc
    python experiments/benchmarks/train_step.py --batch 256 --half --torch best-gpu,eager \\
        --overlap-compile --peak-size 8192 --steps 20  # on a GPU: gpu.sh

Training FLOPs: 2 per multiply-add, of the forward pass (alexnet-spec.md's table), the kernel
gradients and the input gradients, less conv1's input gradient (``train_flops``).
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)  # run as a script too

from alexnet_jax import xla_cpu  # noqa: E402
from experiments.benchmarks.host_memory import peak_rss_mib, rss_mib  # noqa: E402
from experiments.benchmarks.torch_peer import (  # noqa: E402
    TORCH_FLAGS,
    TORCH_PRESETS,
    TorchRunner,
    torch_flags,
)

VARIANTS = ('paper', 'single_tower', 'owt')
IMAGE_SIZE = {'paper': 227, 'single_tower': 227, 'owt': 224}
# Forward multiply-adds per image (alexnet-spec.md); a training step is ~3x the forward pass.
FORWARD_MACS = {'paper': 724.4e6, 'single_tower': 1135.3e6, 'owt': 714.2e6}
# conv1's multiply-adds (55 x 55 outputs x kernels x 11 x 11 x 3), whose input gradient no one runs.
CONV1_MACS = {
    'paper': 55 * 55 * 96 * 363,
    'single_tower': 55 * 55 * 96 * 363,
    'owt': 55 * 55 * 64 * 363,
}
MARK = '@@'  # worker replies on stdout start with this; everything else is passed through


def _reply(obj: dict) -> None:
    sys.__stdout__.write(MARK + json.dumps(obj) + '\n')
    sys.__stdout__.flush()


# --- JAX worker ---


class JaxRunner:
    def __init__(
        self,
        args: argparse.Namespace,
        variant: str,
        kernels: dict | None = None,
        **overrides: object,
    ):
        """The variant's training step as main.py builds it; ``overrides`` set config fields and
        ``kernels`` replaces some of the backend's kernels (``layers.Kernels`` fields; an A/B)."""
        # runtime.configure() ran first (see worker()): XLA:CPU's YNNPACK fusions are on, exactly
        # as a training run gets them; no other flag is set.
        import jax

        from alexnet_jax import dataset_stats, input_pipeline, layers, models, parallel, steps
        from alexnet_jax.synthetic_data import synthetic_train
        from configs import imagenet

        # --jax-conv lax (an A/B): XLA's own grouped convolution, as before issue 19 on GPU.
        if getattr(args, 'jax_conv', 'auto') == 'lax':
            kernels = {'conv': jax.lax.conv_general_dilated, **(kernels or {})}
        chosen = layers.kernels_for(jax.default_backend())
        chosen = dataclasses.replace(chosen, **kernels) if kernels else chosen
        self.jax = jax
        config = imagenet.get_config()
        config.dataset = 'synthetic'
        config.model = variant
        config.image_size = IMAGE_SIZE[variant]
        config.batch_size = args.batch
        config.half_precision = args.half
        config.update(overrides)
        self.config = config
        self.rss_base = rss_mib()
        devices = jax.local_device_count()
        stats = dataset_stats.load_stats(config)
        model = models.create_model(config, kernels=chosen)
        model = model.clone(bn_axis_name=steps.AXIS)
        shape = (config.image_size, config.image_size, 3)
        state = steps.create_train_state(config, model, shape, steps=1)
        self.state = parallel.replicate(state)
        per_device = input_pipeline.per_device_batch(config.batch_size, devices, 1)
        batch = next(synthetic_train(config, devices, per_device, 0, 0))
        self.batch = parallel.shard(batch)
        self.rng = jax.random.key(config.seed + 1)
        self.step, self.eval_step = steps.pmap_steps(config, stats)
        self.device = str(jax.devices()[0].device_kind)
        self.half = args.half
        self.steps = steps
        self.compile_ahead = getattr(args, 'compile_ahead', True)

    def first_step(self) -> dict:
        durations: dict[str, float] = {}

        def listener(event: str, duration: float, **_) -> None:
            if 'compile' in event or 'trace' in event or 'lower' in event:
                durations[event] = durations.get(event, 0.0) + duration

        self.jax.monitoring.register_event_duration_secs_listener(listener)
        start = time.perf_counter()
        if self.compile_ahead:  # as training does (train.py); on CPU only
            self.steps.compile_ahead(self.step, self.state, self.batch, self.rng)
        self.run_step(wait=True)
        first = time.perf_counter() - start
        self.jax.monitoring.unregister_event_duration_listener(listener)
        backend = sum(v for k, v in durations.items() if 'backend_compile' in k)
        return {'first_step_s': first, 'compile_s': backend, 'compile_events': durations}

    def run_step(self, wait: bool) -> None:
        self.state, metrics = self.step(self.state, self.batch, self.rng)
        if wait:
            self.jax.block_until_ready((self.state, metrics))

    def matmul_peak(self, n: int, repeats: int) -> float:
        """Best fp32 (or bf16 with --half) GFLOP/s of an n x n x n jnp matmul."""
        jnp = self.jax.numpy
        dtype = jnp.bfloat16 if self.half else jnp.float32
        a = self.jax.random.normal(self.jax.random.key(0), (n, n), dtype)
        f = self.jax.jit(lambda a: a @ a)
        f(a).block_until_ready()
        best = float('inf')
        for _ in range(repeats):
            start = time.perf_counter()
            f(a).block_until_ready()
            best = min(best, time.perf_counter() - start)
        return 2 * n**3 / best / 1e9

    def memory(self) -> dict:
        stats = self.jax.devices()[0].memory_stats() or {}
        out = {'peak_rss_delta_mib': peak_rss_mib() - self.rss_base}
        if 'peak_bytes_in_use' in stats:
            out['device_peak_mib'] = stats['peak_bytes_in_use'] / 2**20
        return out


def timed_steps(runner: 'JaxRunner | TorchRunner', n: int) -> dict:
    """Wall and process CPU seconds per step of ``n`` steps in a row.

    Only the last step is waited for, as in training: on a GPU the host queues the next step
    while the device runs this one (waiting after each would add the launch latency to every
    step). CPU time is steadier under load on a CPU.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        runner.run_step(wait=i == n - 1)
    return {'time': (time.perf_counter() - start) / n, 'cpu': (time.process_time() - start_cpu) / n}


def worker(args: argparse.Namespace) -> None:
    """Serves the parent's commands, one JSON line each, until 'quit'."""
    os.chdir(ROOT)
    sys.stdout = sys.stderr  # keep stdout for replies
    # First thing in the process, as main.py does for a training run. PyTorch gets our malloc
    # settings only with the 'malloc' flag: its default is glibc's default.
    from alexnet_jax import runtime, xla_cpu

    if args.worker == 'jax':
        # As main.py with the ImageNet configs (cpu_dispatch_ahead False).
        settings = runtime.configure(keep_host_memory=True, dispatch_ahead=False)
        keeps_memory = settings.keeps_host_memory
        runner = JaxRunner(args, args.variant)
    else:
        flags = torch_flags(args.worker.removeprefix('torch:'))
        keeps_memory = xla_cpu.keep_host_memory() if 'malloc' in flags else False
        runner = TorchRunner(args, args.variant, flags, IMAGE_SIZE[args.variant])
    _reply({'ready': True, 'device': runner.device, 'keeps_host_memory': keeps_memory})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd['op'] == 'first':
            _reply(runner.first_step())
        elif cmd['op'] == 'steps':
            _reply(timed_steps(runner, cmd['n']))
        elif cmd['op'] == 'peak':
            _reply({'gflops': runner.matmul_peak(cmd['size'], cmd['repeats'])})
        elif cmd['op'] == 'memory':
            _reply(runner.memory())
        elif cmd['op'] == 'quit':
            return


# --- parent ---


class Worker:
    """One framework in its own process: 'jax', or 'torch:SETTING'."""

    def __init__(self, kind: str, variant: str, args: argparse.Namespace):
        self.kind = kind
        cmd = [sys.executable, os.path.abspath(__file__), '--worker', kind, '--variant', variant]
        cmd += ['--batch', str(args.batch)] + ['--half'] * args.half
        cmd += ['--jax-conv', args.jax_conv]
        # The malloc tunable main.py restarts itself with: ours, and PyTorch with 'malloc'.
        mine = kind == 'jax' or 'malloc' in torch_flags(kind.removeprefix('torch:'))
        env = xla_cpu.with_malloc_tunables(os.environ) if mine else None
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def read(self) -> dict:
        """The next reply: 'ready' first, then one per command sent."""
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
            sys.stdout.write(line)
        raise RuntimeError(f'{self.kind} worker exited with code {self.proc.wait()}')

    def send(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + '\n')
        self.proc.stdin.flush()

    def ask(self, **cmd) -> dict:
        self.send(**cmd)
        return self.read()

    def close(self) -> None:
        self.send(op='quit')
        self.proc.stdin.close()
        self.proc.wait()


def train_flops(variant: str, batch: int) -> float:
    """FLOPs of one training step: forward, kernel gradient and input gradient of every layer
    (each as many multiply-adds as the forward), less conv1's input gradient, which neither side
    computes (the images need none)."""
    return 2 * (3 * FORWARD_MACS[variant] - CONV1_MACS[variant]) * batch


def bench_variant(variant: str, args: argparse.Namespace) -> dict:
    """Ours and each PyTorch setting on one variant, their timed rounds alternated."""
    kinds = ['jax'] + [f'torch:{t}' for t in args.torch]
    # With --overlap-compile every worker starts and compiles its first step at once (saves
    # minutes of torch.compile on a GPU lease); otherwise each starts after the last one's first
    # step, so that every first step (compile time) is measured on an otherwise idle machine.
    rows: dict[str, dict] = {}
    workers: list[Worker] = []
    failed: dict[str, str] = {}  # a PyTorch setting that does not build here costs only its row

    def guard(w: Worker, step) -> None:
        if w.kind in failed:
            return
        try:
            step()
        except RuntimeError as e:
            if w.kind == 'jax':
                raise
            failed[w.kind] = str(e)
            print(f'{variant}: {w.kind} failed, left out: {e}', flush=True)

    def ready(w: Worker) -> None:
        rows[w.kind] = w.read()
        w.send(op='first')

    def first(w: Worker) -> None:
        rows[w.kind]['first'] = w.read()

    for kind in kinds:
        workers.append(Worker(kind, variant, args))
        if not args.overlap_compile:
            guard(workers[-1], lambda w=workers[-1]: ready(w))
            guard(workers[-1], lambda w=workers[-1]: first(w))
    if args.overlap_compile:  # every first step is sent before any is waited for
        for w in workers:
            guard(w, lambda w=w: ready(w))
        for w in workers:
            guard(w, lambda w=w: first(w))
    for w in workers:
        if w.kind in failed:
            rows.pop(w.kind, None)
            w.proc.kill()
    workers = [w for w in workers if w.kind not in failed]
    if args.warmup:
        for w in workers:
            w.ask(op='steps', n=args.warmup)
    times: dict[str, list[float]] = {w.kind: [] for w in workers}
    for _ in range(args.repeats):  # alternate, so that outside load hits all alike
        for w in workers:
            times[w.kind].append(w.ask(op='steps', n=args.steps)['time'])
    for w in workers:  # memory before the matmul peak, whose buffers would otherwise count
        rows[w.kind]['memory'] = w.ask(op='memory')
    peak = workers[0].ask(op='peak', size=args.peak_size, repeats=5)['gflops']
    for w in workers:
        w.close()
    flops = train_flops(variant, args.batch)
    for kind, row in rows.items():
        row['step_s'] = statistics.median(times[kind])
        row['step_s_all'] = times[kind]
        row['img_s'] = args.batch / row['step_s']
        row['gflops'] = flops / row['step_s'] / 1e9
        row['pct_peak'] = 100 * row['gflops'] / peak
        if args.mfu_peak_tflops:
            row['mfu_pct'] = 100 * row['gflops'] / (args.mfu_peak_tflops * 1e3)
        if kind != 'jax':
            row['flags'] = torch_flags(kind.removeprefix('torch:'))
            row['ratio'] = rows['jax']['img_s'] / row['img_s']  # ours / theirs
            # Per round: each round's two times come from the same stretch of load.
            row['ratio_rounds'] = [t / o for o, t in zip(times['jax'], times[kind], strict=True)]
    return {
        'variant': variant,
        'batch': args.batch,
        'half': args.half,
        'peak_gflops': peak,
        'rows': rows,
        'failed': failed,
    }


def memory_mib(row: dict) -> float:
    """A side's peak memory: the device allocator's on a GPU, else the host's RSS."""
    memory = row['memory']
    return memory.get('device_peak_mib', memory['peak_rss_delta_mib'])


def table(results: list[dict]) -> str:
    """Markdown: a row per variant and framework setting; ratio = our img/s over the row's."""
    mfu = any('mfu_pct' in row for r in results for row in r['rows'].values())
    lines = [
        '| variant | side | img/s | ours / this | rounds (min-max ratio) | first step s | MiB '
        '| % of matmul peak |' + (' MFU % |' if mfu else ''),
        '|---|---|---:|---:|---|---:|---:|---:|' + ('---:|' if mfu else ''),
    ]
    for r in results:
        for kind, row in r['rows'].items():
            name = 'ours' if kind == 'jax' else f'PyTorch {kind.removeprefix("torch:")}'
            if kind != 'jax':
                name += f' ({"+".join(row["flags"]) or "defaults"})'
            ratio = rounds = ''
            if 'ratio' in row:
                ratio = f'{row["ratio"]:.2f}'
                rounds = f'{min(row["ratio_rounds"]):.2f}-{max(row["ratio_rounds"]):.2f}'
            lines.append(
                f'| {r["variant"]} | {name} | {row["img_s"]:.1f} | {ratio} | {rounds} '
                f'| {row["first"]["first_step_s"]:.1f} | {memory_mib(row):.0f} '
                f'| {row["pct_peak"]:.1f} |' + (f' {row["mfu_pct"]:.1f} |' if mfu else '')
            )
        for kind, error in r.get('failed', {}).items():
            lines.append(
                f'| {r["variant"]} | PyTorch {kind.removeprefix("torch:")} | failed: '
                f'{error[:80]} | | | | | |' + (' |' if mfu else '')
            )
    return '\n'.join(lines)


def report(results: list[dict], args: argparse.Namespace) -> None:
    first = results[0]
    device = first['rows']['jax']['device']
    print(f'\nbatch {args.batch}, {"bf16" if args.half else "fp32"}, device: {device}')
    print(f'load average at the end: {os.getloadavg()[0]:.2f} (1 min)')
    print(table(results))
    for r in results:
        ours = r['rows']['jax']
        print(
            f'{r["variant"]}: ours {ours["step_s"] * 1e3:.0f} ms/step, first step '
            f'{ours["first"]["first_step_s"]:.1f} s (of it XLA backend compile '
            f'{ours["first"]["compile_s"]:.1f} s); matmul peak {r["peak_gflops"]:.1f} GFLOP/s'
        )
    for setting in args.torch:
        ratios = [
            r['rows'][f'torch:{setting}']['ratio']
            for r in results
            if f'torch:{setting}' in r['rows']
        ]
        if ratios:
            print(f'median ratio (ours / PyTorch {setting}): {statistics.median(ratios):.2f}')
    best = []  # PyTorch at its best: its fastest setting of this run, per variant
    for r in results:
        theirs = [row for kind, row in r['rows'].items() if kind != 'jax']
        if theirs:
            best.append(min(row['ratio'] for row in theirs))
    if best:
        print(
            f'median ratio (ours / PyTorch at its best per variant): {statistics.median(best):.2f}'
        )
    print(
        'img/s: median of the rounds; ratio: ours / this side; MiB: peak RSS minus RSS after '
        'imports (device allocator peak on GPU); % of matmul peak: FLOPs per step (forward, both '
        "gradients, not conv1's input gradient) per second over the measured matmul peak"
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be 1 or more, got {value}')
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--variants', default=','.join(VARIANTS))
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--repeats', type=_positive, default=5, help='alternating rounds')
    parser.add_argument('--steps', type=_positive, default=2, help='timed steps per round')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps after the first')
    parser.add_argument(
        '--torch',
        default='best-cpu,eager',
        help='PyTorch settings to run, comma-separated: presets '
        f'{", ".join(f"{k} ({v or chr(34) * 2})" for k, v in TORCH_PRESETS.items())}, or flags '
        f'{", ".join(TORCH_FLAGS)} joined by "+"; empty: ours only',
    )
    parser.add_argument('--half', action='store_true', help='bfloat16 compute (both)')
    parser.add_argument(
        '--overlap-compile',
        action='store_true',
        help='start every worker and compile their first steps at the same time',
    )
    parser.add_argument('--peak-size', type=int, default=2048, help='n of the n^3 matmul')
    parser.add_argument(
        '--mfu-peak-tflops',
        type=float,
        default=0.0,
        help="a datasheet's dense peak (989 for an H100/H200 SXM in bf16): adds an MFU column",
    )
    parser.add_argument(
        '--jax-conv',
        choices=('auto', 'lax'),
        default='auto',
        help="our convolutions: the backend's (auto) or lax's own grouped one (lax), for an A/B",
    )
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    parser.add_argument('--variant', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    args.torch = [t for t in args.torch.split(',') if t]
    for setting in args.torch:
        try:
            torch_flags(setting)
        except ValueError as e:
            parser.error(str(e))
    variants = [v for v in args.variants.split(',') if v]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f'unknown variant {v!r}; choose from {", ".join(VARIANTS)}')
    print(f'load average at the start: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cpus')
    results = []
    start = time.perf_counter()
    for v in variants:
        results.append(bench_variant(v, args))
        rates = ', '.join(f'{k} {row["img_s"]:.2f}' for k, row in results[-1]['rows'].items())
        print(
            f'{v}: img/s {rates}; load {os.getloadavg()[0]:.2f}, '
            f'{time.perf_counter() - start:.0f} s so far',
            flush=True,
        )
        if args.json:  # after each variant, so that a run cut short keeps what it measured
            with open(args.json, 'w') as f:
                json.dump(results, f, indent=1)
    report(results, args)


if __name__ == '__main__':
    main()
