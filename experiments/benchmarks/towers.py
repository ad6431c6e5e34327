"""Train-step images/s: Section 3.2's towers (model parallel) against plain data parallelism.

Both rows train the same grouped `paper` net (227x227, 1000 classes, dropout on) on the same
global batch of synthetic uint8 images over the same fake CPU devices:

  data_parallel  every device holds the whole net and 1/D of the batch (steps.data_parallel)
  towers         device pairs hold one tower each, D/2 pairs split the batch (towers.placement)

The step is compiled first and then timed over several rounds, the two placements alternating so
that other load on the machine hits both alike; the median round counts. Wall-clock images/s
and images per CPU-second of the process (all threads) are printed, then towers / data_parallel.

    python experiments/benchmarks/towers.py                      # 2 devices, batch 16
    python experiments/benchmarks/towers.py --devices 4 --batch 32 --rounds 5
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--devices', type=int, default=2, help='fake CPU devices (even)')
    parser.add_argument('--batch', type=int, default=16, help='global batch per step')
    parser.add_argument('--steps', type=int, default=2, help='timed steps per round')
    parser.add_argument('--rounds', type=int, default=3, help='alternating rounds')
    return parser.parse_args()


sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))

from alexnet_jax import runtime  # noqa: E402

ARGS = _args() if __name__ == '__main__' else None
if ARGS is not None:  # before jax is imported
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # fake CPU devices, even on a GPU host
    os.environ['XLA_FLAGS'] = (
        os.environ.get('XLA_FLAGS', '') + f' --xla_force_host_platform_device_count={ARGS.devices}'
    )
    # XLA's flags and kept host memory, one step at a time, as a training run with
    # configs/imagenet.py sets them (not its restart with glibc's tcache off).
    runtime.configure(keep_host_memory=True, dispatch_ahead=False)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax import dataset_stats, models, steps, towers  # noqa: E402
from configs import imagenet  # noqa: E402


def _config(batch: int):
    c = imagenet.get_config()
    c.dataset = 'synthetic'
    c.batch_size = batch
    return c


def _batch(config, devices: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = config.batch_size
    host = {
        'image': rng.integers(0, 256, (n, 227, 227, 3), dtype=np.uint8),
        'label': rng.integers(0, config.num_classes, (n,), dtype=np.int32),
    }
    return {k: v.reshape(devices, n // devices, *v.shape[1:]) for k, v in host.items()}


class Runner:
    """One placement, its state and batch in place, its step compiled; ``time`` runs a round."""

    def __init__(self, name: str, placement: steps.Placement, host_state, config):
        self.name, self.placement = name, placement
        self.state = placement.place_state(jax.tree.map(np.array, host_state))
        self.batch = placement.place_batch(_batch(config, placement.data_devices))
        self.rng = jax.random.key(0)
        started = time.perf_counter()
        self._steps(1)
        self.compile_s = time.perf_counter() - started
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def _steps(self, n: int) -> None:
        for _ in range(n):
            self.state, metrics = self.placement.train_step(self.state, self.batch, self.rng)
        jax.block_until_ready((self.state, metrics))

    def time(self, steps: int) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self._steps(steps)
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)


def main(args: argparse.Namespace) -> None:
    config = _config(args.batch)
    stats = dataset_stats.load_stats(config)
    model = models.create_model(config)
    host_state = jax.device_get(steps.create_train_state(config, model, (227, 227, 3), 100))
    runners = [
        Runner('data_parallel', steps.data_parallel(config, stats), host_state, config),
        Runner('towers', towers.placement(config, stats), host_state, config),
    ]
    for _ in range(args.rounds):
        for runner in runners:
            runner.time(args.steps)
    images = args.batch * args.steps
    print(
        f'{jax.device_count()} {jax.devices()[0].platform} devices, {os.cpu_count()} cores, '
        f'global batch {args.batch}, {args.rounds} rounds of {args.steps} steps (median)'
    )
    print('| placement | layout | compile s | img/s | img per CPU-s |')
    print('|---|---|---:|---:|---:|')
    rates = {}
    for r in runners:
        layout = f'{r.placement.data_devices} data' + (' x 2 towers' if r.name == 'towers' else '')
        rate = images / statistics.median(r.wall)
        per_cpu = images / statistics.median(r.cpu)
        rates[r.name] = rate
        print(f'| {r.name} | {layout} | {r.compile_s:.1f} | {rate:.2f} | {per_cpu:.2f} |')
    print(f'| towers / data_parallel | | | {rates["towers"] / rates["data_parallel"]:.2f}x | |')


if __name__ == '__main__':
    main(ARGS)
