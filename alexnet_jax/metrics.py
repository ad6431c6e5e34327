"""What a run reports: console progress, TensorBoard events, metrics.jsonl, results.json.

Only process 0 writes; other processes get a writer that does nothing.
"""

import json
import logging
import math
import sys
import time
from collections.abc import Callable
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
        self._tb = None
        if self.enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = (self.workdir / 'metrics.jsonl').open('a')
            try:
                # Imported here: it pulls in TensorFlow and TensorBoard, which only the writing
                # process needs (the model and the train step run without them).
                from flax.metrics import tensorboard

                self._tb = tensorboard.SummaryWriter(str(self.workdir / 'tensorboard'))
            except Exception as e:  # noqa: BLE001 - any TensorFlow trouble: the run goes on
                log.warning(
                    'No TensorBoard events for this run (%s: %s); metrics.jsonl has every '
                    'scalar. Install tensorflow-cpu (requirements.txt) for TensorBoard.',
                    type(e).__name__,
                    e,
                )

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        if self.enabled:
            (self.workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.scalar(key, value, step)
            self._tb.flush()
        row = json_safe({'step': step, **scalars})
        self._jsonl.write(json.dumps(row, allow_nan=False) + '\n')
        self._jsonl.flush()

    def write_results(self, results: dict[str, Any]) -> None:
        """``results.json``, atomically; a non-finite number is written as ``null`` (JSON)."""
        if self.enabled:
            path = self.results_path
            tmp = path.parent / (path.name + '.tmp')
            tmp.write_text(json.dumps(json_safe(results), indent=2, allow_nan=False))
            tmp.replace(path)  # atomic: a reader never sees half a file

    @property
    def results_path(self) -> epath.Path:
        return self.workdir / 'results.json'

    def close(self) -> None:
        if self.enabled:
            if self._tb is not None:
                self._tb.close()
            self._jsonl.close()


def read_results(workdir: str) -> dict[str, Any] | None:
    """The ``results.json`` of a finished run in ``workdir``, if there is one."""
    try:
        return json.loads((epath.Path(workdir) / 'results.json').read_text())
    except (OSError, ValueError):
        return None


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by ``None``, which JSON can hold."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _is_tty() -> bool:
    return sys.stderr.isatty()


class Progress:
    """Per-step metrics, left on the device until a log line; progress on the console.

    A line (step, epoch, loss, images/s, ETA) every ``log_every_steps`` steps or every
    ``log_every_seconds``, whichever comes first, so logs under a scheduler move too. On a
    terminal a bar follows the steps the devices have *finished* (not those dispatched), with
    the last loss and images/s. Each step's ``finite`` flag is kept until :meth:`check_finite`
    fetches it: no host sync per step.
    """

    def __init__(
        self,
        config: Any,
        start: int,
        total: int,
        steps_per_epoch: int,
        writer: Writer,
    ):
        self.total, self.steps_per_epoch = total, steps_per_epoch
        self.batch_size = config.batch_size
        self.every_steps, self.every_seconds = config.log_every_steps, config.log_every_seconds
        self.writer = writer
        self.pending: list[tuple[int, Any]] = []  # (step, device metrics) since the last line
        self.last: dict[str, float] = {}
        self._checked = start  # steps up to here are known finite
        self._start = start
        self._line = (start, time.perf_counter())  # (step, time) of the last line
        self._timed_from: tuple[int, float] | None = None  # after the first (compiling) step
        self._excluded = 0.0
        self._shown = start  # steps the bar shows as finished
        self._bar = None
        if writer.enabled and _is_tty():
            import tqdm

            self._bar = tqdm.tqdm(
                total=total,
                initial=start,
                unit='step',
                dynamic_ncols=True,
                smoothing=0.1,
                miniters=1,
            )
            # Our log lines above the bar, not glued onto it.
            self._handler = _AboveTheBar()
            self._handler.setFormatter(logging.Formatter('%(levelname).1s %(message)s'))
            _PROJECT_LOG.addHandler(self._handler)
            _PROJECT_LOG.propagate = False

    def record(self, step: int, step_metrics: Any) -> None:
        self.pending.append((step, step_metrics))
        if self._timed_from is None:  # the first step compiles: time from its end
            jax.block_until_ready(step_metrics)
            self._timed_from = (step, time.perf_counter())
            self._line = self._timed_from
        if self._bar is not None:
            self._advance_bar()

    def _show_done(self, done: int) -> None:
        if self._bar is not None and done > self._shown:
            self._bar.update(done - self._shown)
            self._shown = done

    def _advance_bar(self) -> None:
        done = self._shown
        for step, m in self.pending:
            if step <= done:
                continue
            if not m['loss'].is_ready():
                break
            done = step
        self._show_done(done)

    def due(self, step: int) -> bool:
        """Whether a line is due at ``step``: by steps, by time, or at the end."""
        if step % self.every_steps == 0 or step == self.total:
            return True
        return time.perf_counter() - self._line[1] - self._excluded >= self.every_seconds

    def check_finite(self) -> int | None:
        """The first step since the last check whose loss or parameters are not finite."""
        unchecked = [(s, m['finite']) for s, m in self.pending if s > self._checked]
        flags = jax.device_get([f for _, f in unchecked])
        for (step, _), finite in zip(unchecked, flags, strict=True):
            if not bool(finite):
                return step
            self._checked = step
        return None

    def flush(self, step: int) -> None:
        """Fetches the pending metrics and writes their mean as one row and one line."""
        fetched = jax.device_get([m for _, m in self.pending])
        if not fetched:
            return
        now = time.perf_counter()
        scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0] if k != 'finite'}
        line_step, line_time = self._line
        seconds = now - line_time - self._excluded
        if self._timed_from is not None and step > line_step and seconds > 0:
            scalars['images_per_sec'] = (step - line_step) * self.batch_size / seconds
            scalars['step_time'] = seconds / (step - line_step)
        self._line, self._excluded = (step, now), 0.0
        self._show_done(step)  # fetched: the devices have finished these steps
        self.pending.clear()
        self._checked = max(self._checked, step)
        self.last = scalars
        self.writer.write_scalars(step, {f'train_{k}': v for k, v in scalars.items()})
        self._print(step, scalars)

    def exclude(self, seconds: float) -> None:
        """Leaves time spent outside the step (evaluation, checkpoints) out of images/s."""
        self._excluded += seconds
        if self._timed_from is not None:
            step, began = self._timed_from
            self._timed_from = (step, began + seconds)

    def images_per_sec(self) -> float | None:
        """Over every step after the first (which compiles); None if there was no other."""
        if self._timed_from is None or self._line[0] <= self._timed_from[0]:
            return None
        step, began = self._timed_from
        return (self._line[0] - step) * self.batch_size / (self._line[1] - began)

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
            self._shown_postfix(s)
            self._bar.write(line)
        else:
            log.info(line)

    def _shown_postfix(self, s: dict[str, float]) -> None:
        postfix = {'loss': f'{s["loss"]:.4f}'}
        if 'images_per_sec' in s:
            postfix['img/s'] = f'{s["images_per_sec"]:.1f}'
        self._bar.set_postfix(postfix, refresh=False)

    def eval_progress(self, total_images: int) -> Callable[[int], None]:
        """A callback taking the images evaluated so far: a bar on a terminal, else lines."""
        if not self.writer.enabled:
            return lambda done: None
        if self._bar is not None:
            import tqdm

            bar = tqdm.tqdm(total=total_images, unit='img', leave=False, desc='eval')

            def show(done: int) -> None:
                bar.update(done - bar.n)
                if done >= total_images:
                    bar.close()

            return show
        last = [time.perf_counter()]

        def report(done: int) -> None:
            if time.perf_counter() - last[0] >= self.every_seconds:
                log.info('eval: %d/%d images', min(done, total_images), total_images)
                last[0] = time.perf_counter()

        return report

    def close(self) -> None:
        if self._bar is not None:
            _PROJECT_LOG.removeHandler(self._handler)
            _PROJECT_LOG.propagate = True
            self._bar.close()


_PROJECT_LOG = logging.getLogger('alexnet_jax')


class _AboveTheBar(logging.Handler):
    """Writes log records through tqdm, which prints them above its bar."""

    def emit(self, record: logging.LogRecord) -> None:
        import tqdm

        tqdm.tqdm.write(self.format(record), file=sys.stderr)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
