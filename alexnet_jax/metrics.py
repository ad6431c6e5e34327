"""What a run reports: console progress, TensorBoard events, metrics.jsonl, results.json.

Only process 0 writes; other processes get a writer that does nothing.
"""

import json
import logging
import math
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

log = logging.getLogger(__name__)


class Writer:
    """TensorBoard scalars and a JSON line per logged step, in the workdir."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self.workdir = epath.Path(workdir)
        if self.enabled:
            # Imported here: it pulls in TensorFlow and TensorBoard, which only the writing
            # process needs (the model and the train step run without them).
            from flax.metrics import tensorboard

            self.workdir.mkdir(parents=True, exist_ok=True)
            self._tb = tensorboard.SummaryWriter(str(self.workdir / 'tensorboard'))
            self._jsonl = (self.workdir / 'metrics.jsonl').open('a')

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        if self.enabled:
            (self.workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for key, value in scalars.items():
            self._tb.scalar(key, value, step)
        self._tb.flush()
        self._jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
        self._jsonl.flush()

    def write_results(self, results: dict[str, Any]) -> None:
        if self.enabled:
            path = self.workdir / 'results.json'
            tmp = path.parent / (path.name + '.tmp')
            tmp.write_text(json.dumps(results, indent=2))
            tmp.replace(path)  # atomic: a reader never sees half a file

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


class Progress:
    """Collects per-step metrics (left on the device until a log step) and prints progress."""

    def __init__(self, start: int, total: int, steps_per_epoch: int, batch_size: int, writer):
        self.total, self.steps_per_epoch, self.batch_size = total, steps_per_epoch, batch_size
        self.writer = writer
        self.pending: list[tuple[int, Any]] = []
        self.last: dict[str, float] = {}
        self._mark = (start, None)  # (step, time) of the last flush; None until the first
        self._timed_steps, self._timed_seconds = 0, 0.0
        self._bar = None
        if writer.enabled and sys.stderr.isatty():
            import tqdm

            self._bar = tqdm.tqdm(total=total, initial=start, unit='step', dynamic_ncols=True)

    def record(self, step: int, step_metrics: Any) -> None:
        self.pending.append((step, step_metrics))
        if self._bar is not None:
            self._bar.update(1)

    def flush(self, step: int) -> None:
        """Fetches the pending metrics, stops on a non-finite loss, logs the mean."""
        fetched = jax.device_get([m for _, m in self.pending])
        for (s, _), m in zip(self.pending, fetched, strict=True):
            if not math.isfinite(float(m['loss'])):
                raise FloatingPointError(
                    f'The training loss became {float(m["loss"])} at step {s}. The last good '
                    f'checkpoint is kept; lower config.learning_rate or check the data.'
                )
        now = time.perf_counter()
        mark_step, mark_time = self._mark
        scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        if mark_time is not None:  # the first window includes compilation: not timed
            seconds = now - mark_time
            self._timed_steps += step - mark_step
            self._timed_seconds += seconds
            scalars['images_per_sec'] = (step - mark_step) * self.batch_size / seconds
            scalars['step_time'] = seconds / (step - mark_step)
        self._mark = (step, now)
        self.pending.clear()
        self.last = scalars
        self.writer.write_scalars(step, {f'train_{k}': v for k, v in scalars.items()})
        self._print(step, scalars)

    def exclude(self, seconds: float) -> None:
        """Leaves time spent outside the step (evaluation, checkpoints) out of images/s."""
        step, mark_time = self._mark
        if mark_time is not None:
            self._mark = (step, mark_time + seconds)

    def images_per_sec(self) -> float:
        if self._timed_steps == 0:
            return float('nan')
        return self._timed_steps * self.batch_size / self._timed_seconds

    def _print(self, step: int, s: dict[str, float]) -> None:
        if not self.writer.enabled:
            return
        line = (
            f'step {step}/{self.total} epoch {step / self.steps_per_epoch:.2f} '
            f'loss {s["loss"]:.4f} top1_err {s["top1_error"]:.4f} lr {s["learning_rate"]:.3g}'
        )
        if 'images_per_sec' in s:
            left = (self.total - step) * s['step_time']
            line += f' {s["images_per_sec"]:.1f} img/s eta {_duration(left)}'
        if self._bar is not None:
            self._bar.write(line)
        else:
            log.info(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
