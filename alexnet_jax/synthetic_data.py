"""Synthetic data as a dataset object: uint8 noise made on the host, for throughput and loop
tests without I/O. Its statistics are exact (discrete uniform pixels), so nothing is computed.
"""

from __future__ import annotations

from collections.abc import Iterator

import ml_collections
import numpy as np

from alexnet_jax.data_types import DatasetInfo, HostArrays, Stats

_POOL = 4  # distinct host batches, cycled


def _batch(config, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    s = config.image_size
    return {
        'image': rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
        'label': rng.integers(0, config.num_classes, (n,), dtype=np.int32),
        'crop_yx': np.zeros((n, 2), np.int32),
        'flip': np.zeros((n,), bool),
    }


def synthetic_train(
    config, devices: int, per_device: int, start_step: int, pi: int
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite [devices, per_device, ...] batches cycling through a small pre-made pool."""
    rng = np.random.default_rng([config.seed, pi])
    pool = [
        {
            k: v.reshape((devices, per_device) + v.shape[1:])
            for k, v in _batch(config, rng, devices * per_device).items()
        }
        for _ in range(_POOL)
    ]
    step = start_step
    while True:
        yield pool[step % _POOL]
        step += 1


def synthetic_eval_examples(
    config, pi: int, pc: int, n: int | None = None, stream: int = 1
) -> Iterator[dict[str, np.ndarray]]:
    """This host's share of ``n`` (default `synthetic_num_eval`) examples, in small chunks;
    ``stream`` tells the evaluated splits' images apart."""
    n = config.synthetic_num_eval if n is None else n
    chunk = 256 if config.eval_crops == 1 else 32
    lo, hi = n * pi // pc, n * (pi + 1) // pc
    rng = np.random.default_rng([config.seed, pi, stream])
    pool = _batch(config, rng, min(chunk, max(hi - lo, 1)))
    for start in range(lo, hi, chunk):
        take = min(chunk, hi - start)
        batch = {k: v[:take] for k, v in pool.items()}
        if config.eval_crops == 10:
            batch['image'] = np.repeat(batch['image'][:, None], 10, axis=1)
            batch['crop_yx'] = np.zeros((take, 10, 2), np.int32)
            batch['flip'] = np.zeros((take, 10), bool)
        yield batch


# The random stream of each evaluated split's images (the test split keeps the one it always had).
_EVAL_STREAMS = {'test': 1, 'validation': 2, 'train_clean': 3}


class Synthetic:
    """`synthetic_num_train` / `synthetic_num_eval` random images of the model's input size.

    Nothing is held out of the endless training stream: the validation and clean-training
    splits are images of their own, at most `synthetic_num_eval` of each.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def info(self) -> DatasetInfo:
        c = self.config
        s = c.image_size
        names = [f'class_{i}' for i in range(c.num_classes)]
        return DatasetInfo(
            c.synthetic_num_train,
            c.synthetic_num_eval,
            len(names),
            (s, s, 3),
            names,
            0,
            (s, s),
            min(c.validation_examples, c.synthetic_num_eval),
            min(c.train_clean_examples, c.synthetic_num_eval),
        )

    def source(self, split: str, *, process_index: int = 0, process_count: int = 1) -> HostArrays:
        c, pi, pc = self.config, process_index, process_count
        n = self.info().count(split)
        stream = _EVAL_STREAMS.get(split, 1)
        return HostArrays(
            n,
            lambda devices, per_device, start: synthetic_train(c, devices, per_device, start, pi),
            lambda: synthetic_eval_examples(c, pi, pc, n, stream),
        )

    def stats(self) -> Stats:
        s, var = self.config.image_size, (256.0**2 - 1) / 12.0  # discrete uniform on 0..255
        return Stats(
            np.full((s, s, 3), 127.5, np.float32),
            np.full(3, 127.5, np.float32),
            np.full(3, np.sqrt(var), np.float32),
            np.full(3, var / 255.0**2, np.float32),
            np.eye(3, dtype=np.float32),
        )

    def base_shape(self) -> tuple[int, int, int]:
        s = self.config.image_size
        return (s, s, 3)

    def complete_config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        return config
