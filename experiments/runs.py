"""Reads a sweep's runs and measures each one.

:func:`collect` reads every run under a sweep directory (``sweep.json``'s runs, then any other
run directory: ``results.json``, ``metrics.jsonl`` or ``failed.json``) into :class:`RunRecord`s.
The rest measure one run: the final logged training error, the step at which the training error
reached a threshold (:func:`steps_to_threshold`; from the clean-train evaluation rows where the
run has them, else the smoothed logged training error), the best validation error, and a run's
final value of a claim's metric (:func:`metric_value`; the metrics are listed in
:mod:`experiments.claims`). :mod:`experiments.report` and :mod:`experiments.claims` build on
these.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from experiments import stats
from experiments import sweep as sweep_lib

FINAL_TRAIN_FRACTION = 0.1  # "final train error": mean of the logged windows in the last 10%
SMOOTH_WINDOWS = 3  # "steps to X% train error" from logged training error: 3 windows' mean
EVAL_PREFIXES = ('eval_', 'val_', 'train_clean_')  # a metrics.jsonl row with these: evaluation
CLEAN = 'train_clean_top1_error'
VAL = 'val_top1_error'


@dataclasses.dataclass
class RunRecord:
    name: str
    overrides: dict[str, Any]
    seed: int | None
    status: str  # done | failed | unfinished
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: list[dict[str, float]] = dataclasses.field(default_factory=list)  # train log lines
    evals: list[dict[str, float]] = dataclasses.field(default_factory=list)  # evaluation lines
    error: str = ''
    reused_from: str | None = None  # the other sweep's run it was copied from (sweep --reuse)

    @property
    def group(self) -> tuple:
        return tuple((k, hashable(v)) for k, v in self.overrides.items())

    @property
    def config(self) -> dict[str, Any] | None:
        """The resolved config results.json records, if it does."""
        config = self.results.get('config')
        return config if isinstance(config, dict) else None

    @property
    def pair_seed(self) -> Any:
        """The seed runs are paired by: run.json's, else the one in results.json's config."""
        if self.seed is not None:
            return self.seed
        return (self.config or {}).get('seed')


def hashable(value: Any) -> Any:
    """``value``, a list or dict as its sorted JSON text (to compare or key by)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value


def read_json(path: str) -> Any:
    """The JSON value in the file at ``path``."""
    with open(path) as f:
        return json.load(f)


def read_metrics(path: str) -> tuple[list[dict], list[dict]]:
    """(train lines, evaluation lines) of a metrics.jsonl. A train line has
    ``train_top1_error``, the last one per step winning (resumes); an evaluation line has any key
    starting with ``eval_``, ``val_`` or ``train_clean_``, the lines of one step merged (a later
    value of a key wins)."""
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash
                    continue
                if not isinstance(row, dict) or 'step' not in row:
                    continue
                if 'train_top1_error' in row:
                    train[int(row['step'])] = row
                if any(k.startswith(EVAL_PREFIXES) for k in row):
                    evals.setdefault(int(row['step']), {}).update(row)
    return [train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)]


def _run_entries(sweep_dir: str) -> list[dict[str, Any]]:
    """The runs the sweep defined (sweep.json), then any other run directory found."""
    entries: list[dict[str, Any]] = []
    path = os.path.join(sweep_dir, sweep_lib.SWEEP_JSON)
    if os.path.exists(path):
        entries = list(read_json(path)['runs'])
    known = {e['name'] for e in entries}
    for name in sorted(os.listdir(sweep_dir)):
        workdir = os.path.join(sweep_dir, name)
        if name in known or name.endswith(sweep_lib.COPYING) or not os.path.isdir(workdir):
            continue
        run_json = os.path.join(workdir, sweep_lib.RUN_JSON)
        if os.path.exists(run_json):
            entries.append(read_json(run_json))
        elif any(
            os.path.exists(os.path.join(workdir, f))
            for f in (sweep_lib.RESULTS_JSON, sweep_lib.FAILED_JSON, 'metrics.jsonl')
        ):
            entries.append({'name': name, 'overrides': {'run': name}, 'seed': None})
    return entries


def collect(sweep_dir: str) -> list[RunRecord]:
    """Every run of the sweep in ``sweep_dir``, finished, failed or not (yet) finished."""
    if not os.path.isdir(sweep_dir):
        raise FileNotFoundError(f'{sweep_dir} is not a directory.')
    records = []
    for entry in _run_entries(sweep_dir):
        workdir = os.path.join(sweep_dir, entry['name'])
        record = RunRecord(entry['name'], dict(entry['overrides']), entry.get('seed'), 'unfinished')
        record.train, record.evals = read_metrics(os.path.join(workdir, 'metrics.jsonl'))
        results, failed = (
            os.path.join(workdir, sweep_lib.RESULTS_JSON),
            os.path.join(workdir, sweep_lib.FAILED_JSON),
        )
        if os.path.exists(results):
            record.status, record.results = 'done', read_json(results)
            reused = os.path.join(workdir, sweep_lib.REUSED_JSON)
            if os.path.exists(reused):
                record.reused_from = read_json(reused)['from']
        elif os.path.exists(failed):
            record.status, record.error = 'failed', read_json(failed).get('error', '?')
        records.append(record)
    return records


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def final_train_error(record: RunRecord) -> float:
    """Mean logged training error over the last 10% of steps (at least the last window)."""
    if not record.train:
        return math.nan
    last = record.train[-1]['step']
    window = [r for r in record.train if r['step'] >= last * (1 - FINAL_TRAIN_FRACTION)]
    return float(np.mean([r['train_top1_error'] for r in window]))


def steps_to_error(record: RunRecord, target: float, smooth: int = SMOOTH_WINDOWS) -> int | None:
    """The first logged step whose training error, averaged with the ``smooth - 1`` logging
    windows before it, is at most ``target``; None if never."""
    errors = [row['train_top1_error'] for row in record.train]
    for i, row in enumerate(record.train):
        if np.mean(errors[max(0, i - smooth + 1) : i + 1]) <= target:
            return int(row['step'])
    return None


def curve(record: RunRecord, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over the run's evaluation rows that have it."""
    rows = [(int(r['step']), finite(r.get(key))) for r in record.evals]
    rows = [(s, v) for s, v in rows if v is not None]
    return [s for s, _ in rows], [v for _, v in rows]


def has_clean_curve(record: RunRecord) -> bool:
    return bool(curve(record, CLEAN)[0])


@dataclasses.dataclass(frozen=True)
class Reach:
    """When a run reached a training-error threshold: ``step`` (None: not by ``last``)."""

    step: float | None
    last: int  # the last step of the curve used
    source: str  # 'clean' (interpolated clean-train evaluations) | 'train' (logged, smoothed)


def steps_to_threshold(record: RunRecord, threshold: float, source: str | None = None) -> Reach:
    """The step at which ``record`` first reached training error <= ``threshold``.

    ``source='clean'``: the clean-train evaluation rows, linearly interpolated between the two
    evaluations around the crossing (:func:`experiments.stats.first_crossing`). ``'train'``: the
    logged training error, smoothed as :func:`steps_to_error`. None (default): 'clean' when the run
    has clean-train rows, else 'train'.
    """
    if source is None:
        source = 'clean' if has_clean_curve(record) else 'train'
    if source == 'clean':
        steps, errors = curve(record, CLEAN)
        return Reach(
            stats.first_crossing(steps, errors, threshold), steps[-1] if steps else 0, 'clean'
        )
    if source != 'train':
        raise ValueError(f"source must be 'clean', 'train' or None, got {source!r}.")
    step = steps_to_error(record, threshold)
    return Reach(None if step is None else float(step), last_step(record), 'train')


def best_validation(record: RunRecord) -> tuple[float, int, float | None] | None:
    """(minimum validation error over the evaluation rows, its step, its epoch if logged)."""
    best = None
    for row in record.evals:
        value = finite(row.get(VAL))
        if value is not None and (best is None or value < best[0]):
            best = (value, int(row['step']), finite(row.get('epoch')))
    return best


def metric_value(record: RunRecord, metric: str) -> float | None:
    """A run's final value of a claim's difference ``metric`` (see :mod:`experiments.claims`)."""
    if metric == 'gap':
        val, clean = finite(record.results.get(VAL)), finite(record.results.get(CLEAN))
        return None if val is None or clean is None else val - clean
    if metric == 'best_val_top1_error':
        best = best_validation(record)
        return None if best is None else best[0]
    return finite(record.results.get(metric))


def last_step(record: RunRecord) -> int:
    """The last step the run logged training error at (0 if none)."""
    return int(record.train[-1]['step']) if record.train else 0


def overrides_label(overrides: Mapping[str, Any]) -> str:
    """``k=v, k=v`` of a run's grid overrides (or a claim's arm), ``(base)`` when empty."""
    return ', '.join(f'{k}={v}' for k, v in overrides.items()) or '(base)'


def percent(fraction: float) -> str:
    """A training-error threshold as a percentage, e.g. ``20%``."""
    return f'{fraction * 100:.4g}%'
