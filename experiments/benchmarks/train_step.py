"""Images/s of a full training step: this project's ``pmap``-ed step against the same PyTorch net.

Our side is exactly what training runs: ``steps.pmap_steps(config, stats)`` on the
``configs/imagenet.py`` config with ``dataset='synthetic'`` (one host batch made by numpy and
placed once, so the step is measured, not the input pipeline), state created by
``steps.create_train_state`` and placed by ``parallel.replicate``. The step includes the on-device
preprocessing (uint8 -> float, PCA colour noise, mean-image subtraction), the forward and backward
pass, the ``pmean`` and Section 5's SGD update (momentum 0.9, weight decay 5e-4). Its worker
process starts as ``main.py`` does: ``runtime.configure(keep_host_memory=True)`` first (on CPU,
glibc keeps freed memory for the next step, and XLA:CPU's YNNPACK fusions are on).

The PyTorch side is the same architecture written here: grouped convolutions (``groups=2``) for
``paper``, ``nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2)`` (PyTorch divides alpha by the
size, so the paper's 1e-4 is 5e-4 there), dropout 0.5 where the variant has it, the same batch,
float32, ``torch.optim.SGD(momentum=0.9, weight_decay=5e-4)`` on the kernels (biases not decayed,
as here). Its input is a float32 batch made once. Its process keeps glibc's defaults unless
``--torch-keep-host-memory`` gives it our malloc settings too.

Each framework runs in its own worker process (clean peak memory, no shared thread pools); the
parent alternates rounds between the two so that load from other processes hits both alike, and
reports the median round (a round is ``--steps`` steps in a row, waited for after the last).
Per variant: img/s of both, ratio ours/torch; then the median ratio, the compile time of our
first step, the peak memory of each (RSS high-water mark minus the RSS after imports; on GPU the
allocator's peak), and the achieved FLOP/s against a measured matmul peak (bf16 with --half).

    python experiments/benchmarks/train_step.py                       # CPU, batch 32, 3 variants
    python experiments/benchmarks/train_step.py --variants owt --repeats 5 --skip-torch
    python experiments/benchmarks/train_step.py --batch 256 --half --torch-channels-last \\
        --torch-compile --overlap-compile --peak-size 8192 --steps 20  # on a GPU: gpu.sh

Training FLOPs per image are 3x the forward multiply-adds x 2 (alexnet-spec.md's table).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
VARIANTS = ('paper', 'single_tower', 'owt')
IMAGE_SIZE = {'paper': 227, 'single_tower': 227, 'owt': 224}
# Forward multiply-adds per image (alexnet-spec.md); a training step is ~3x the forward pass.
FORWARD_MACS = {'paper': 724.4e6, 'single_tower': 1135.3e6, 'owt': 714.2e6}
MARK = '@@'  # worker replies on stdout start with this; everything else is passed through


def _rss_mib() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _reply(obj: dict) -> None:
    sys.__stdout__.write(MARK + json.dumps(obj) + '\n')
    sys.__stdout__.flush()


# --- JAX worker ---


class JaxRunner:
    def __init__(self, args: argparse.Namespace, variant: str):
        # runtime.configure() ran first (see worker()): XLA:CPU's YNNPACK fusions are on, exactly
        # as a training run gets them; no other flag is set.
        import jax

        from alexnet_jax import dataset_stats, input_pipeline, models, parallel, steps
        from alexnet_jax.synthetic_data import synthetic_train
        from configs import imagenet

        self.jax = jax
        config = imagenet.get_config()
        config.dataset = 'synthetic'
        config.model = variant
        config.image_size = IMAGE_SIZE[variant]
        config.batch_size = args.batch
        config.half_precision = args.half
        self.rss_base = _rss_mib()
        devices = jax.local_device_count()
        stats = dataset_stats.load_stats(config)
        model = models.create_model(config)
        model = model.clone(bn_axis_name=steps.AXIS)
        shape = (config.image_size, config.image_size, 3)
        state = steps.create_train_state(config, model, shape, steps=1)
        self.state = parallel.replicate(state)
        per_device = input_pipeline.per_device_batch(config.batch_size, devices, 1)
        batch = next(synthetic_train(config, devices, per_device, 0, 0))
        self.batch = parallel.shard(batch)
        self.rng = jax.random.key(config.seed + 1)
        self.step, _ = steps.pmap_steps(config, stats)
        self.device = str(jax.devices()[0].device_kind)
        self.half = args.half

    def first_step(self) -> dict:
        durations: dict[str, float] = {}

        def listener(event: str, duration: float, **_) -> None:
            if 'compile' in event or 'trace' in event or 'lower' in event:
                durations[event] = durations.get(event, 0.0) + duration

        self.jax.monitoring.register_event_duration_secs_listener(listener)
        start = time.perf_counter()
        self._run(wait=True)
        first = time.perf_counter() - start
        self.jax.monitoring.unregister_event_duration_listener(listener)
        backend = sum(v for k, v in durations.items() if 'backend_compile' in k)
        return {'first_step_s': first, 'compile_s': backend, 'compile_events': durations}

    def _run(self, wait: bool) -> None:
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
        out = {'peak_rss_delta_mib': _peak_rss_mib() - self.rss_base}
        if 'peak_bytes_in_use' in stats:
            out['device_peak_mib'] = stats['peak_bytes_in_use'] / 2**20
        return out


# --- PyTorch worker ---


def torch_alexnet(variant: str):
    """The variant in PyTorch, NCHW; the same layers and hyper-parameters as models.py."""
    from torch import nn

    def lrn() -> nn.Module:
        # Section 3.3: k = 2, n = 5, alpha = 1e-4 (PyTorch divides alpha by n), beta = 0.75.
        return nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)

    if variant == 'owt':
        widths, c1, groups, norm = (64, 192, 384, 256, 256), (11, 4, 2), 1, False
    else:
        widths, c1, groups, norm = (96, 256, 384, 384, 256), (11, 4, 0), 2, True
        groups = 2 if variant == 'paper' else 1
    w1, w2, w3, w4, w5 = widths
    layers = [nn.Conv2d(3, w1, c1[0], c1[1], c1[2]), nn.ReLU(inplace=True)]
    layers += [lrn()] if norm else []
    layers += [nn.MaxPool2d(3, 2), nn.Conv2d(w1, w2, 5, padding=2, groups=groups)]
    layers += [nn.ReLU(inplace=True)] + ([lrn()] if norm else [])
    layers += [nn.MaxPool2d(3, 2), nn.Conv2d(w2, w3, 3, padding=1), nn.ReLU(inplace=True)]
    layers += [nn.Conv2d(w3, w4, 3, padding=1, groups=groups), nn.ReLU(inplace=True)]
    layers += [nn.Conv2d(w4, w5, 3, padding=1, groups=groups), nn.ReLU(inplace=True)]
    layers += [nn.MaxPool2d(3, 2), nn.Flatten()]
    fc6, fc7 = nn.Linear(w5 * 36, 4096), nn.Linear(4096, 4096)
    if variant == 'owt':  # torchvision drops the inputs of fc6 and fc7
        head = [nn.Dropout(0.5), fc6, nn.ReLU(inplace=True), nn.Dropout(0.5), fc7]
        head += [nn.ReLU(inplace=True)]
    else:  # Section 4.2: the outputs of fc6 and fc7
        head = [fc6, nn.ReLU(inplace=True), nn.Dropout(0.5), fc7, nn.ReLU(inplace=True)]
        head += [nn.Dropout(0.5)]
    return nn.Sequential(*layers, *head, nn.Linear(4096, 1000))


class TorchRunner:
    def __init__(self, args: argparse.Namespace, variant: str):
        import torch

        self.torch = torch
        self.rss_base = _rss_mib()
        self.dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
        # cuDNN picks the fastest algorithm per convolution shape (fixed shapes here).
        torch.backends.cudnn.benchmark = True
        torch.manual_seed(0)
        model = torch_alexnet(variant).to(self.dev)
        fmt = torch.channels_last if args.torch_channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        kernels = [p for p in model.parameters() if p.ndim > 1]
        biases = [p for p in model.parameters() if p.ndim <= 1]
        self.opt = torch.optim.SGD(
            [{'params': kernels, 'weight_decay': 5e-4}, {'params': biases, 'weight_decay': 0.0}],
            lr=0.01,
            momentum=0.9,
        )
        self.model = torch.compile(model) if args.torch_compile else model
        self.model.train()
        size = IMAGE_SIZE[variant]
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(args.batch, 3, size, size, generator=gen)
        self.images = images.to(self.dev).contiguous(memory_format=fmt)
        self.labels = torch.randint(0, 1000, (args.batch,), generator=gen).to(self.dev)
        self.half = args.half
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.device = torch.cuda.get_device_name() if self.dev.type == 'cuda' else 'cpu'

    def _run(self, wait: bool) -> None:
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.half):
            loss = self.loss_fn(self.model(self.images), self.labels)
        loss.backward()
        self.opt.step()
        if wait:
            loss.item()  # waits for the step (and the GPU)

    def first_step(self) -> dict:
        start = time.perf_counter()
        self._run(wait=True)
        return {'first_step_s': time.perf_counter() - start}

    def memory(self) -> dict:
        out = {'peak_rss_delta_mib': _peak_rss_mib() - self.rss_base}
        if self.dev.type == 'cuda':
            out['device_peak_mib'] = self.torch.cuda.max_memory_allocated() / 2**20
        return out


def timed_steps(runner: 'JaxRunner | TorchRunner', n: int) -> dict:
    """Wall and process CPU seconds per step of ``n`` steps in a row.

    Only the last step is waited for, as in training: on a GPU the host queues the next step
    while the device runs this one (waiting after each would add the launch latency to every
    step). CPU time is steadier under load on a CPU.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        runner._run(wait=i == n - 1)
    return {'time': (time.perf_counter() - start) / n, 'cpu': (time.process_time() - start_cpu) / n}


def worker(args: argparse.Namespace) -> None:
    """Serves the parent's commands, one JSON line each, until 'quit'."""
    sys.path.insert(0, ROOT)
    os.chdir(ROOT)
    sys.stdout = sys.stderr  # keep stdout for replies
    # First thing in the process, as main.py does for a training run. The malloc settings on
    # our side only, unless asked: PyTorch's default is glibc's default.
    from alexnet_jax import runtime, xla_cpu

    keep = args.worker == 'jax' or args.torch_keep_host_memory
    if args.worker == 'jax':
        keeps_memory = runtime.configure(keep_host_memory=keep).keeps_host_memory
    else:
        keeps_memory = xla_cpu.keep_host_memory() if keep else False
    runner_cls = JaxRunner if args.worker == 'jax' else TorchRunner
    runner = runner_cls(args, args.variant)
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
    def __init__(self, kind: str, variant: str, args: argparse.Namespace):
        cmd = [sys.executable, os.path.abspath(__file__), '--worker', kind, '--variant', variant]
        cmd += ['--batch', str(args.batch)]
        cmd += ['--half'] * args.half + ['--torch-channels-last'] * args.torch_channels_last
        cmd += ['--torch-compile'] * args.torch_compile
        cmd += ['--torch-keep-host-memory'] * args.torch_keep_host_memory
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def read(self) -> dict:
        """The next reply: 'ready' first, then one per command sent."""
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
            sys.stdout.write(line)
        raise RuntimeError(f'worker exited with code {self.proc.wait()}')

    def send(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + '\n')
        self.proc.stdin.flush()

    def ask(self, **cmd) -> dict:
        self.send(**cmd)
        return self.read()

    def close(self) -> None:
        self.proc.stdin.write(json.dumps({'op': 'quit'}) + '\n')
        self.proc.stdin.close()
        self.proc.wait()


def bench_variant(variant: str, args: argparse.Namespace) -> dict:
    result: dict = {'variant': variant}
    ours = Worker('jax', variant, args)
    # With --overlap-compile both workers start and compile their first step at once (saves
    # minutes of torch.compile on a GPU lease); otherwise PyTorch starts after our first step, so
    # that our compile time is measured on an idle machine.
    overlap = args.overlap_compile and not args.skip_torch
    theirs = Worker('torch', variant, args) if overlap else None
    ready = ours.read()
    result['device'], result['keeps_host_memory'] = ready['device'], ready['keeps_host_memory']
    ours.send(op='first')
    if not overlap:
        result['jax_first'] = ours.read()
    if not args.skip_torch:
        theirs = theirs or Worker('torch', variant, args)
        ready = theirs.read()
        result['torch_device'] = ready['device']
        result['torch_keeps_host_memory'] = ready['keeps_host_memory']
        result['torch_first'] = theirs.ask(op='first')
    if overlap:
        result['jax_first'] = ours.read()
    workers = [w for w in (ours, theirs) if w]
    for w in workers:
        w.ask(op='steps', n=args.warmup)
    times: dict[Worker, list[float]] = {w: [] for w in workers}
    for _ in range(args.repeats):  # alternate, so that outside load hits both alike
        for w in workers:
            times[w].append(w.ask(op='steps', n=args.steps)['time'])
    # Memory before the matmul peak, whose buffers would otherwise count.
    result['jax_memory'] = ours.ask(op='memory')
    if theirs:
        result['torch_memory'] = theirs.ask(op='memory')
        theirs.close()
    result['peak_gflops'] = ours.ask(op='peak', size=args.peak_size, repeats=5)['gflops']
    ours.close()
    jax_times, torch_times = times[ours], times.get(theirs, [])
    result['jax_step_s'] = statistics.median(jax_times)
    result['jax_img_s'] = args.batch / result['jax_step_s']
    if torch_times:
        result['torch_step_s'] = statistics.median(torch_times)
        result['torch_img_s'] = args.batch / result['torch_step_s']
        result['ratio'] = result['jax_img_s'] / result['torch_img_s']
    step_flops = 3 * 2 * FORWARD_MACS[variant] * args.batch
    result['jax_gflops'] = step_flops / result['jax_step_s'] / 1e9
    if torch_times:
        result['torch_gflops'] = step_flops / result['torch_step_s'] / 1e9
    return result


def report(results: list[dict], args: argparse.Namespace) -> None:
    print()
    print(f'batch {args.batch}, {"bf16" if args.half else "fp32"}, device: {results[0]["device"]}')
    print(f'load average at the end: {os.getloadavg()[0]:.2f} (1 min)')
    first = results[0]
    print(
        'host memory kept between steps (alexnet_jax/xla_cpu.py): '
        f'ours {first["keeps_host_memory"]}, torch {first.get("torch_keeps_host_memory")}'
    )
    head = f'{"variant":<13}{"ours img/s":>11}{"torch img/s":>12}{"ratio":>7}'
    head += f'{"compile s":>10}{"ours MiB":>9}{"torch MiB":>10}{"ours %pk":>9}{"torch %pk":>10}'
    print(head)
    for r in results:
        line = f'{r["variant"]:<13}{r["jax_img_s"]:>11.2f}'
        line += f'{r.get("torch_img_s", float("nan")):>12.2f}{r.get("ratio", float("nan")):>7.2f}'
        line += f'{r["jax_first"]["compile_s"]:>10.1f}'
        jm, tm = r['jax_memory'], r.get('torch_memory', {})
        line += f'{jm.get("device_peak_mib", jm["peak_rss_delta_mib"]):>9.0f}'
        line += f'{tm.get("device_peak_mib", tm.get("peak_rss_delta_mib", float("nan"))):>10.0f}'
        line += f'{100 * r["jax_gflops"] / r["peak_gflops"]:>9.1f}'
        line += f'{100 * r.get("torch_gflops", float("nan")) / r["peak_gflops"]:>10.1f}'
        print(line)
    for r in results:
        print(
            f'{r["variant"]}: ours {r["jax_step_s"] * 1e3:.0f} ms/step '
            f'({r["jax_gflops"]:.1f} GFLOP/s), torch '
            f'{r.get("torch_step_s", float("nan")) * 1e3:.0f} ms/step '
            f'({r.get("torch_gflops", float("nan")):.1f} GFLOP/s); matmul peak '
            f'{r["peak_gflops"]:.1f} GFLOP/s; first step ours '
            f'{r["jax_first"]["first_step_s"]:.1f} s'
            f' (XLA compile {r["jax_first"]["compile_s"]:.1f} s), torch '
            f'{r.get("torch_first", {}).get("first_step_s", float("nan")):.1f} s'
        )
    ratios = [r['ratio'] for r in results if 'ratio' in r]
    if ratios:
        print(f'median ratio (ours/torch): {statistics.median(ratios):.2f}')
    print('memory: peak RSS minus RSS after imports (device allocator peak on GPU), MiB')
    print('%pk: achieved FLOP/s (3 x 2 x forward MACs per image) / measured matmul peak')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--variants', default=','.join(VARIANTS))
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=3, help='alternating rounds')
    parser.add_argument('--steps', type=int, default=2, help='timed steps per round')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps after the first')
    parser.add_argument('--skip-torch', action='store_true')
    parser.add_argument('--half', action='store_true', help='bfloat16 compute (both)')
    parser.add_argument('--torch-channels-last', action='store_true')
    parser.add_argument('--torch-compile', action='store_true')
    parser.add_argument(
        '--overlap-compile',
        action='store_true',
        help='start both workers and compile their first steps at the same time',
    )
    parser.add_argument(
        '--torch-keep-host-memory',
        action='store_true',
        help="give PyTorch's worker the malloc settings ours gets (alexnet_jax/xla_cpu.py)",
    )
    parser.add_argument('--peak-size', type=int, default=2048, help='n of the n^3 matmul')
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--worker', choices=('jax', 'torch'), help=argparse.SUPPRESS)
    parser.add_argument('--variant', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    variants = [v for v in args.variants.split(',') if v]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f'unknown variant {v!r}; choose from {", ".join(VARIANTS)}')
    print(f'load average at the start: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cpus')
    results = []
    start = time.perf_counter()
    for v in variants:
        results.append(bench_variant(v, args))
        r = results[-1]
        print(
            f'{v}: ours {r["jax_img_s"]:.2f} img/s, torch {r.get("torch_img_s", float("nan")):.2f}'
            f' img/s, load {os.getloadavg()[0]:.2f}, {time.perf_counter() - start:.0f} s so far',
            flush=True,
        )
        if args.json:  # after each variant, so that a run cut short keeps what it measured
            with open(args.json, 'w') as f:
                json.dump(results, f, indent=1)
    report(results, args)


if __name__ == '__main__':
    main()
