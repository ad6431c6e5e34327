"""Collects a sweep's runs into a markdown table, claim verdicts and PNG plots.

    python -m experiments.report DIR [--target-error 0.25 ...] [--no-plots]

Reads every run under DIR (``results.json``, ``metrics.jsonl``, or ``failed.json``), groups the
runs by their grid overrides and reports over seeds (mean ± std): the final test top-1 error, the
final training top-1 error, the gap between them, where the runs have them the final validation
error, the final clean-train error, the gap between those two and the best validation error (and
its step), and the step at which the training error reached each requested target. Then one block
per claim of the sweep file (section "Claims", below). Writes ``DIR/report.md``,
``DIR/learning_curves.png`` (error against step, one set of lines per run) and
``DIR/test_error.png`` (final test error per group, std error bars); prints the markdown.

The training error the loop logs is the mean over the steps of each logging window, on augmented
images with dropout on, so it can sit above the test error early in training. The clean-train
error (``train_clean_*`` evaluation rows) is measured in eval mode (no dropout, no augmentation,
centre crop) on a fixed subset of training images; the validation error (``val_*``) on a split
held out of the training set; the test error (``eval_*``) on the test split.

Steps to X% training error: from the clean-train evaluation rows when the run has them, the step
at which the curve first reaches <= X, linearly interpolated between the two evaluations around
the crossing (:func:`experiments.stats.first_crossing`); for runs without them (older runs), the
first logged step at which the mean logged training error of that window and the
``SMOOTH_WINDOWS - 1`` before it is at most X. Never reached: censored, "> last step".

Claims
------
The sweep file's ``report`` dict may hold ``'claims'``, a list of dicts, each one of:

- a difference claim::

    {'name': 'overlapping pooling lowers test error (paper: 0.4 pp top-1)',
     'metric': 'eval_top1_error',
     'baseline': {'pooling': 'non_overlapping'},
     'arm': {'pooling': 'overlapping'},
     'expect': 'lower'}

  ``metric``: a numeric key of results.json (``eval_top1_error``, ``val_top1_error``,
  ``train_clean_top1_error``, ``eval_top5_error``, ``val_loss``, ...), ``'gap'`` (final
  ``val_top1_error - train_clean_top1_error``) or ``'best_val_top1_error'`` (the minimum of the
  validation-error evaluation rows; its step, and epoch where the rows log one, is reported
  too). Errors and the gap are reported
  in percentage points, other metrics in their own units.
- a steps claim: ``'metric': 'steps_ratio'`` with ``'thresholds': [0.3, 0.2]`` (default: the
  report's ``target_train_error``), or ``'metric': 'steps_to:0.2'`` (one threshold): the steps to
  each training-error threshold, as above, compared as the ratio arm / baseline.
- ``{'name': ..., 'not_tested': 'reason'}``: reported as "not tested here (reason)".

``baseline`` and ``arm`` select runs: a run belongs to an arm when its grid overrides contain all
of the arm's key/values (so in a crossed grid an arm may span several groups). ``expect`` is
``'lower'`` or ``'higher'``: the direction the claim predicts for arm against baseline. An
optional ``'note'`` is printed under the claim. Any other key makes the claim "not tested here
(bad claim: ...)", as does a missing ``name``, ``metric``, ``baseline``, ``arm`` or ``expect``.

Runs are paired by seed (when an arm spans several groups, by seed and the grid fields the
claim does not name), only finished runs. Per pair the difference arm - baseline (or the ratio
arm / baseline); reported: n pairs, the mean difference with its 95% Student-t interval (n - 1
degrees of freedom) and the minimum detectable effect of the design (80% power, two-sided
alpha = 0.05: (t_{0.975,n-1} + t_{0.80,n-1}) * sd / sqrt(n), sd of the differences), see
:mod:`experiments.stats`. Ratios: the geometric mean with the t interval on the log ratios; pairs
in which one side never reached the threshold are censored, left out of the ratio and counted.
The verdict words are fixed: ``holds`` (the interval excludes 0, or 1 for a ratio, on the
expected side), ``reversed`` (it excludes it on the other side), ``not resolved at this power
(±X pp)`` (X the interval's half-width; for a ratio, its interval), ``not tested here (reason)``
(the sweep file says so, fewer than 2 pairs, or the metric is missing). Under each claim: runs
left unpaired (name and seed), runs of the arms without results, and "arms also differ in: field
(baseline vs arm)" for every resolved config field (results.json's ``config``; the grid overrides
for runs without it) in which paired runs differ, other than ``seed``, the fields the claim names
and the bookkeeping fields in ``BOOKKEEPING_FIELDS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from experiments import stats
from experiments import sweep as sweep_lib

FINAL_TRAIN_FRACTION = 0.1  # "final train error": mean of the logged windows in the last 10%
SMOOTH_WINDOWS = 3  # "steps to X% train error" from logged training error: 3 windows' mean
EVAL_PREFIXES = ('eval_', 'val_', 'train_clean_')  # a metrics.jsonl row with these: evaluation
# Config fields that say where things are kept or how often progress is saved and shown, not
# what is trained: arms differing only in these are not flagged.
BOOKKEEPING_FIELDS = frozenset(
    {
        'data_dir',
        'manual_dir',
        'checkpoint_every_steps',
        'keep_checkpoints',
        'log_every_seconds',
        'prefetch_batches',
    }
)
CLAIM_KEYS = frozenset({'name', 'metric', 'baseline', 'arm', 'expect', 'thresholds', 'note'})
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

    @property
    def group(self) -> tuple:
        return tuple((k, _hashable(v)) for k, v in self.overrides.items())

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


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value


def _read_json(path: str) -> Any:
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
        entries = list(_read_json(path)['runs'])
    known = {e['name'] for e in entries}
    for name in sorted(os.listdir(sweep_dir)):
        workdir = os.path.join(sweep_dir, name)
        if name in known or not os.path.isdir(workdir):
            continue
        run_json = os.path.join(workdir, sweep_lib.RUN_JSON)
        if os.path.exists(run_json):
            entries.append(_read_json(run_json))
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
            record.status, record.results = 'done', _read_json(results)
        elif os.path.exists(failed):
            record.status, record.error = 'failed', _read_json(failed).get('error', '?')
        records.append(record)
    return records


def _finite(value: Any) -> float | None:
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
    rows = [(int(r['step']), _finite(r.get(key))) for r in record.evals]
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
    return Reach(None if step is None else float(step), _last_step(record), 'train')


def best_validation(record: RunRecord) -> tuple[float, int, float | None] | None:
    """(minimum validation error over the evaluation rows, its step, its epoch if logged)."""
    best = None
    for row in record.evals:
        value = _finite(row.get(VAL))
        if value is not None and (best is None or value < best[0]):
            best = (value, int(row['step']), _finite(row.get('epoch')))
    return best


def metric_value(record: RunRecord, metric: str) -> float | None:
    """A run's final value of a claim's difference ``metric`` (see the module docstring)."""
    if metric == 'gap':
        val, clean = _finite(record.results.get(VAL)), _finite(record.results.get(CLEAN))
        return None if val is None or clean is None else val - clean
    if metric == 'best_val_top1_error':
        best = best_validation(record)
        return None if best is None else best[0]
    return _finite(record.results.get(metric))


@dataclasses.dataclass
class Group:
    overrides: dict[str, Any]
    runs: list[RunRecord]

    @property
    def done(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status == 'done']

    def values(self, fn: Callable[[RunRecord], Any]) -> list[float]:
        return [fn(r) for r in self.done]


def group_runs(records: list[RunRecord]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for record in records:
        groups.setdefault(record.group, Group(record.overrides, [])).runs.append(record)
    return list(groups.values())


def _mean_std(values: Sequence[float | None], scale: float = 100.0, digits: int = 2) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return '–'
    mean = float(np.mean(values)) * scale
    if len(values) == 1:
        return f'{mean:.{digits}f}'
    std = float(np.std(values, ddof=1)) * scale
    return f'{mean:.{digits}f} ± {std:.{digits}f}'


def _steps_cell(group: Group, target: float) -> str:
    reaches = [steps_to_threshold(r, target) for r in group.done]
    reached = [r.step for r in reaches if r.step is not None]
    if not reaches:
        return '–'
    if not reached:
        return f'> {max(r.last for r in reaches)}'
    cell = _mean_std(reached, scale=1.0, digits=0)
    return (
        cell if len(reached) == len(reaches) else f'{cell} ({len(reached)}/{len(reaches)} reached)'
    )


def mean_steps(group: Group, target: float) -> float | None:
    steps = [steps_to_threshold(r, target).step for r in group.done]
    if not steps or any(s is None for s in steps):
        return None
    return float(np.mean(steps))


def _best_val_cell(group: Group) -> str:
    best = [b for b in (best_validation(r) for r in group.done) if b is not None]
    if not best:
        return '–'
    return f'{_mean_std([b[0] for b in best])} (step {_mean_std([b[1] for b in best], 1.0, 0)})'


def _percent(fraction: float) -> str:
    return f'{fraction * 100:.4g}%'


def _label(overrides: Mapping[str, Any]) -> str:
    return ', '.join(f'{k}={v}' for k, v in overrides.items()) or '(base)'


def markdown_table(groups: list[Group], targets: Sequence[float]) -> str:
    fields: list[str] = []
    for group in groups:
        fields += [k for k in group.overrides if k not in fields]
    done = [r for g in groups for r in g.done]
    has_val = any(_finite(r.results.get(VAL)) is not None for r in done)
    has_clean = any(_finite(r.results.get(CLEAN)) is not None for r in done)
    has_best = any(best_validation(r) is not None for r in done)
    header = [
        *fields,
        'seeds',
        'test top-1 err %',
        'final train err %',
        'gap test − train (pp)',
        *(['val err %'] if has_val else []),
        *(['clean train err %'] if has_clean else []),
        *(['gap val − clean train (pp)'] if has_val and has_clean else []),
        *(['best val err % (step)'] if has_best else []),
        *[f'steps to {_percent(t)} train err' for t in targets],
        'img/s',
    ]
    rows = []
    for g in groups:
        failed = sum(r.status == 'failed' for r in g.runs)
        unfinished = sum(r.status == 'unfinished' for r in g.runs)
        seeds = f'{len(g.done)}' + (f' (+{failed} failed)' if failed else '')
        seeds += f' (+{unfinished} unfinished)' if unfinished else ''
        rows.append(
            [
                *[str(g.overrides.get(k, '')) for k in fields],
                seeds,
                _mean_std(g.values(lambda r: r.results.get('eval_top1_error', math.nan))),
                _mean_std(g.values(final_train_error)),
                _mean_std(
                    g.values(
                        lambda r: r.results.get('eval_top1_error', math.nan) - final_train_error(r)
                    )
                ),
                *([_mean_std(g.values(lambda r: _finite(r.results.get(VAL))))] if has_val else []),
                *(
                    [_mean_std(g.values(lambda r: _finite(r.results.get(CLEAN))))]
                    if has_clean
                    else []
                ),
                *(
                    [_mean_std(g.values(lambda r: metric_value(r, 'gap')))]
                    if has_val and has_clean
                    else []
                ),
                *([_best_val_cell(g)] if has_best else []),
                *[_steps_cell(g, t) for t in targets],
                _mean_std(g.values(lambda r: r.results.get('images_per_sec', math.nan)), 1.0, 0),
            ]
        )
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return '\n'.join(lines)


def ratio_lines(groups: list[Group], ratio: Sequence[Any], targets: Sequence[float]) -> list[str]:
    """'tanh needs r x the steps of relu' for each target, from ``report['ratio']``."""
    field, slow, fast = ratio
    pick = {
        value: next((g for g in groups if g.overrides.get(field) == value), None)
        for value in (slow, fast)
    }
    lines = []
    for target in targets:
        if pick[slow] is None or pick[fast] is None or not pick[slow].done:
            continue
        a, b = mean_steps(pick[slow], target), mean_steps(pick[fast], target)
        if a is not None and b:
            text = f'{a / b:.2f}x'
        elif b and a is None:
            last = max(steps_to_threshold(r, target).last for r in pick[slow].done)
            text = f'more than {last / b:.2f}x ({field}={slow} did not reach it in every run)'
        else:
            text = f'n/a ({field}={fast} did not reach it in every run)'
        lines.append(
            f'- Steps to {target:.0%} training error, {field}={slow} / {field}={fast}: {text}'
        )
    return lines


# --- Claims ---------------------------------------------------------------------------------


class ClaimError(ValueError):
    """A claim in the sweep file's report dict that cannot be checked as written."""


@dataclasses.dataclass
class Comparison:
    """One tested quantity of a claim: a metric, or the steps to one threshold."""

    label: str  # e.g. '`eval_top1_error`' or 'steps to 20% train error'
    verdict: str  # the full verdict words
    paired: stats.PairedSummary | None = None  # difference claims
    ratio: stats.RatioSummary | None = None  # steps claims
    details: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ClaimResult:
    name: str
    metric: str = ''
    baseline: dict[str, Any] = dataclasses.field(default_factory=dict)
    arm: dict[str, Any] = dataclasses.field(default_factory=dict)
    expect: str = ''
    not_tested: str | None = None  # the reason, when the claim as a whole is not tested
    comparisons: list[Comparison] = dataclasses.field(default_factory=list)
    pairs: list[tuple[RunRecord, RunRecord]] = dataclasses.field(default_factory=list)
    unpaired: list[RunRecord] = dataclasses.field(default_factory=list)
    without_results: list[RunRecord] = dataclasses.field(default_factory=list)
    differences: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    note: str = ''

    @property
    def verdicts(self) -> list[str]:
        if self.not_tested is not None:
            return [_not_tested(self.not_tested)]
        return [c.verdict for c in self.comparisons]


def _not_tested(reason: str) -> str:
    return f'{stats.NOT_TESTED} ({reason})'


def parse_claim(claim: Any) -> dict[str, Any]:
    """The claim dict, checked against the schema of the module docstring; else ClaimError."""
    if not isinstance(claim, Mapping):
        raise ClaimError(f'a claim must be a dict, got {claim!r}')
    if 'not_tested' in claim:
        extra = set(claim) - {'name', 'not_tested', 'note'}
        if extra:
            raise ClaimError(f'a not_tested claim takes only name and note, got {sorted(extra)}')
        return dict(claim)
    unknown = sorted(set(claim) - CLAIM_KEYS)
    if unknown:
        raise ClaimError(f'unknown key(s) {unknown}; known: {sorted(CLAIM_KEYS | {"not_tested"})}')
    missing = [k for k in ('name', 'metric', 'baseline', 'arm', 'expect') if k not in claim]
    if missing:
        raise ClaimError(f'missing {missing}')
    if claim['expect'] not in ('lower', 'higher'):
        raise ClaimError(f"expect must be 'lower' or 'higher', got {claim['expect']!r}")
    for side in ('baseline', 'arm'):
        if not isinstance(claim[side], Mapping) or not claim[side]:
            raise ClaimError(f'{side} must be a non-empty dict of grid field -> value')
    if dict(claim['baseline']) == dict(claim['arm']):
        raise ClaimError('baseline and arm are the same')
    metric = claim['metric']
    if not isinstance(metric, str) or not metric:
        raise ClaimError(f'metric must be a non-empty string, got {metric!r}')
    if metric.startswith('steps_to:'):
        try:
            float(metric.split(':', 1)[1])
        except ValueError:
            raise ClaimError(
                f'{metric!r}: steps_to:X needs a number X, e.g. steps_to:0.2'
            ) from None
    if 'thresholds' in claim:
        if metric != 'steps_ratio':
            raise ClaimError('thresholds go with metric steps_ratio only')
        wanted = claim['thresholds']
        wanted = [wanted] if isinstance(wanted, int | float) else wanted
        if not isinstance(wanted, list | tuple) or not all(
            isinstance(t, int | float) and not isinstance(t, bool) for t in wanted
        ):
            raise ClaimError(f'thresholds must be a number or a list of numbers, got {wanted!r}')
    return dict(claim)


def _matches(record: RunRecord, selector: Mapping[str, Any]) -> bool:
    return all(
        k in record.overrides and _hashable(record.overrides[k]) == _hashable(v)
        for k, v in selector.items()
    )


def pair_runs(
    baseline: Sequence[RunRecord], arm: Sequence[RunRecord], named: set[str]
) -> tuple[list[tuple[RunRecord, RunRecord]], list[RunRecord]]:
    """((baseline run, arm run) pairs, runs left unpaired), of finished runs, by seed.

    When a side has two runs of one seed (the arm spans several groups of a crossed grid), the
    runs are paired by seed and the grid fields not in ``named`` instead. A run whose key is
    taken by an earlier run of its side is left unpaired.
    """

    def context(run: RunRecord) -> tuple:
        return tuple(sorted((k, _hashable(v)) for k, v in run.overrides.items() if k not in named))

    seeds_b = [r.pair_seed for r in baseline]
    seeds_a = [r.pair_seed for r in arm]
    by_context = len(set(seeds_b)) < len(seeds_b) or len(set(seeds_a)) < len(seeds_a)

    def key(run: RunRecord) -> Any:
        return (run.pair_seed, context(run)) if by_context else run.pair_seed

    unpaired: list[RunRecord] = []
    keyed_b: dict[Any, RunRecord] = {}
    for run in baseline:
        if key(run) in keyed_b or run.pair_seed is None:
            unpaired.append(run)
        else:
            keyed_b[key(run)] = run
    pairs, used = [], set()
    for run in arm:
        k = key(run)
        if run.pair_seed is not None and k in keyed_b and k not in used:
            pairs.append((keyed_b[k], run))
            used.add(k)
        else:
            unpaired.append(run)
    unpaired += [run for k, run in keyed_b.items() if k not in used]
    return pairs, unpaired


def _flatten(config: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, f'{prefix}{k}.'))
        else:
            flat[f'{prefix}{k}'] = v
    return flat


_UNSET = '(unset)'


def config_differences(
    pairs: Sequence[tuple[RunRecord, RunRecord]], named: set[str]
) -> dict[str, tuple[str, str]]:
    """field -> (baseline value(s), arm value(s)) for every config field in which a pair's runs
    differ, other than ``seed``, the ``named`` fields and ``BOOKKEEPING_FIELDS``. Compares
    results.json's resolved ``config`` when every run has one, else the grid overrides."""
    runs = [r for pair in pairs for r in pair]
    full = bool(runs) and all(r.config is not None for r in runs)

    def fields(run: RunRecord) -> dict[str, Any]:
        return _flatten(run.config) if full else _flatten(run.overrides)

    skip = named | BOOKKEEPING_FIELDS | {'seed'}
    found: dict[str, tuple[list[str], list[str]]] = {}
    for base, arm in pairs:
        fb, fa = fields(base), fields(arm)
        for field in sorted(set(fb) | set(fa)):
            if field in skip:
                continue
            vb, va = fb.get(field, _UNSET), fa.get(field, _UNSET)
            if _hashable(vb) != _hashable(va):
                seen = found.setdefault(field, ([], []))
                for values, value in ((seen[0], vb), (seen[1], va)):
                    text = value if value is _UNSET else json.dumps(value, default=str)
                    if text not in values:
                        values.append(text)
    return {f: ('/'.join(b), '/'.join(a)) for f, (b, a) in found.items()}


def _is_error_metric(metric: str) -> bool:
    return metric == 'gap' or metric.endswith('_error')


def _format_amount(value: float, metric: str) -> str:
    if _is_error_metric(metric):
        return f'{value * 100:+.2f} pp'
    return f'{value:+.4g}'


def _format_width(value: float, metric: str) -> str:
    return f'±{value * 100:.2f} pp' if _is_error_metric(metric) else f'±{value:.4g}'


METRIC_NAMES = {
    'eval_top1_error': 'final test top-1 error',
    'eval_top5_error': 'final test top-5 error',
    VAL: 'final validation top-1 error',
    CLEAN: 'final clean-train top-1 error',
    'gap': 'generalisation gap, final validation − clean-train top-1 error',
    'best_val_top1_error': 'best validation top-1 error over the evaluations',
}


def compare_difference(
    pairs: Sequence[tuple[RunRecord, RunRecord]], metric: str, expect: str
) -> Comparison:
    """The paired difference arm − baseline of ``metric``, its interval, MDE and verdict."""
    label = f'`{metric}`' + (f' ({METRIC_NAMES[metric]})' if metric in METRIC_NAMES else '')
    values = [(metric_value(b, metric), metric_value(a, metric)) for b, a in pairs]
    usable = [(vb, va) for vb, va in values if vb is not None and va is not None]
    details = []
    if len(usable) < len(values):
        details.append(f'{len(values) - len(usable)} pair(s) without `{metric}` left out')
    if not usable:
        return Comparison(label, _not_tested(f'no pair of runs has `{metric}`'), details=details)
    summary = stats.paired_summary([va - vb for vb, va in usable])
    if metric == 'best_val_top1_error':
        best = [(best_validation(b), best_validation(a)) for b, a in pairs]
        best = [(bb, ba) for bb, ba in best if bb is not None and ba is not None]
        text = (
            f'best at step (mean over runs): baseline {np.mean([bb[1] for bb, _ in best]):.0f}, '
            f'arm {np.mean([ba[1] for _, ba in best]):.0f}'
        )
        if all(bb[2] is not None and ba[2] is not None for bb, ba in best):
            text += (
                f' (epoch {np.mean([bb[2] for bb, _ in best]):.2f}, '
                f'{np.mean([ba[2] for _, ba in best]):.2f})'
            )
        details.append(text)
    if summary.n < 2:
        text = _not_tested(
            f'fewer than 2 pairs: 1 pair, difference {_format_amount(summary.mean, metric)}'
        )
        return Comparison(label, text, paired=summary, details=details)
    word = stats.verdict(summary.low, summary.high, expect)
    if word == stats.NOT_RESOLVED:
        word = f'{word} ({_format_width(summary.half_width, metric)})'
    return Comparison(label, word, paired=summary, details=details)


def compare_steps(
    pairs: Sequence[tuple[RunRecord, RunRecord]], threshold: float, expect: str
) -> Comparison:
    """The ratio arm / baseline of the steps to ``threshold`` training error, per pair; censored
    pairs (a side that never reached it, or reached it at step 0) are left out and counted."""
    runs = [r for pair in pairs for r in pair]
    source = 'clean' if runs and all(has_clean_curve(r) for r in runs) else 'train'
    where = (
        'clean-train evaluations, interpolated'
        if source == 'clean'
        else f'logged training error, mean of {SMOOTH_WINDOWS} windows'
    )
    label = f'steps to {_percent(threshold)} train error ({where})'
    ratios, censored = [], {'baseline': [], 'arm': [], 'both': [], 'step 0': []}
    for base, arm in pairs:
        rb, ra = (
            steps_to_threshold(base, threshold, source),
            steps_to_threshold(arm, threshold, source),
        )
        if rb.step is None and ra.step is None:
            censored['both'].append(f'seed {base.pair_seed}')
        elif rb.step is None:
            censored['baseline'].append(f'seed {base.pair_seed} (> {rb.last})')
        elif ra.step is None:
            censored['arm'].append(f'seed {arm.pair_seed} (> {ra.last})')
        elif rb.step <= 0 or ra.step <= 0:
            censored['step 0'].append(f'seed {base.pair_seed}')
        else:
            ratios.append(ra.step / rb.step)
    details = []
    count = sum(len(v) for v in censored.values())
    if count:
        parts = [
            f'{what}: {", ".join(seeds)}'
            for what, seeds in (
                ('baseline never reached', censored['baseline']),
                ('arm never reached', censored['arm']),
                ('neither reached', censored['both']),
                ('reached at step 0', censored['step 0']),
            )
            if seeds
        ]
        details.append(f'{count} censored pair(s) left out of the ratio ({"; ".join(parts)})')
    if not ratios:
        return Comparison(
            label, _not_tested('no pair in which both runs reached it'), details=details
        )
    summary = stats.ratio_summary(ratios)
    if summary.n < 2:
        text = _not_tested(f'fewer than 2 uncensored pairs: 1 pair, ratio {summary.ratio:.3g}')
        return Comparison(label, text, ratio=summary, details=details)
    word = stats.verdict(summary.low, summary.high, expect, null=1.0)
    if word == stats.NOT_RESOLVED:
        word = f'{word} (ratio 95% CI [{summary.low:.3g}, {summary.high:.3g}])'
    return Comparison(label, word, ratio=summary, details=details)


def check_claim(
    claim: Any, records: Sequence[RunRecord], targets: Sequence[float] = ()
) -> ClaimResult:
    """One claim of ``report['claims']`` checked against the runs (module docstring)."""
    name = str(claim.get('name', '(unnamed claim)')) if isinstance(claim, Mapping) else '?'
    try:
        claim = parse_claim(claim)
    except ClaimError as error:
        return ClaimResult(name, not_tested=f'bad claim: {error}')
    if 'not_tested' in claim:
        return ClaimResult(name, not_tested=str(claim['not_tested']), note=claim.get('note', ''))
    result = ClaimResult(
        name,
        metric=claim['metric'],
        baseline=dict(claim['baseline']),
        arm=dict(claim['arm']),
        expect=claim['expect'],
        note=str(claim.get('note', '')),
    )
    base_runs = [r for r in records if _matches(r, result.baseline)]
    arm_runs = [r for r in records if _matches(r, result.arm)]
    both = {r.name for r in base_runs} & {r.name for r in arm_runs}
    if both:
        result.not_tested = f'runs match both baseline and arm: {", ".join(sorted(both))}'
        return result
    for side, runs in (('baseline', base_runs), ('arm', arm_runs)):
        if not runs:
            selector = _label(getattr(result, side))
            result.not_tested = f'no run matches the {side} {selector}'
            return result
    result.without_results = [r for r in base_runs + arm_runs if r.status != 'done']
    named = set(result.baseline) | set(result.arm)
    result.pairs, result.unpaired = pair_runs(
        [r for r in base_runs if r.status == 'done'],
        [r for r in arm_runs if r.status == 'done'],
        named,
    )
    result.differences = config_differences(result.pairs, named)
    if not result.pairs:
        result.not_tested = 'no pair of finished runs with the same seed'
        return result
    metric = result.metric
    if metric == 'steps_ratio' or metric.startswith('steps_to:'):
        if metric == 'steps_ratio':
            wanted = claim.get('thresholds', list(targets))
            thresholds = [wanted] if isinstance(wanted, int | float) else list(wanted)
        else:
            thresholds = [float(metric.split(':', 1)[1])]
        if not thresholds:
            result.not_tested = 'no thresholds: give the claim thresholds or target_train_error'
            return result
        result.comparisons = [compare_steps(result.pairs, t, result.expect) for t in thresholds]
    else:
        result.comparisons = [compare_difference(result.pairs, metric, result.expect)]
    return result


def _run_list(runs: Sequence[RunRecord], with_status: bool = False) -> str:
    return ', '.join(
        f'`{r.name}` (seed {r.pair_seed}' + (f', {r.status})' if with_status else ')') for r in runs
    )


def claim_lines(result: ClaimResult) -> list[str]:
    """The markdown block of one checked claim."""
    lines = [f'### {result.name}', '']
    if result.note:
        lines.append(f'- Note: {result.note}')
    if result.metric:
        lines.append(
            f'- Metric `{result.metric}`, arm `{_label(result.arm)}` against baseline '
            f'`{_label(result.baseline)}`, expected {result.expect}; {len(result.pairs)} '
            'pair(s) by seed.'
        )
    if result.not_tested is not None:
        lines.append(f'- Verdict: **{_not_tested(result.not_tested)}**')
    for comparison in result.comparisons:
        lines.append(f'- {comparison.label}:')
        if comparison.paired is not None and comparison.paired.n >= 2:
            p = comparison.paired
            lines.append(
                f'  - n = {p.n} pairs; mean paired difference (arm − baseline) '
                f'{_format_amount(p.mean, result.metric)} [95% CI '
                f'{_format_amount(p.low, result.metric)}, {_format_amount(p.high, result.metric)}]'
                f'; MDE (80% power, two-sided α = 0.05) '
                f'{_format_width(p.mde, result.metric).lstrip("±")}'
            )
        if comparison.ratio is not None and comparison.ratio.n >= 2:
            r = comparison.ratio
            lines.append(
                f'  - n = {r.n} pairs; geometric-mean ratio arm / baseline {r.ratio:.3g}× '
                f'[95% CI {r.low:.3g}, {r.high:.3g}]; MDE (80% power, two-sided α = 0.05) '
                f'×{r.mde:.3g} or ÷{r.mde:.3g}'
            )
        lines += [f'  - {d}' for d in comparison.details]
        lines.append(f'  - Verdict: **{comparison.verdict}**')
    if result.unpaired:
        lines.append(
            f'- Unpaired runs (no run of the same seed in the other arm): '
            f'{_run_list(result.unpaired)}'
        )
    if result.without_results:
        lines.append(f'- Runs without results: {_run_list(result.without_results, True)}')
    if result.differences:
        text = '; '.join(f'{f} ({b} vs {a})' for f, (b, a) in result.differences.items())
        lines.append(f'- Flag: arms also differ in: {text}')
    lines.append('')
    return lines


def claims_section(
    claims: Sequence[Any], records: Sequence[RunRecord], targets: Sequence[float]
) -> tuple[list[str], list[ClaimResult]]:
    """The "## Claims" markdown lines and the checked claims."""
    results = [check_claim(c, records, targets) for c in claims]
    lines = [
        '## Claims',
        '',
        'Runs paired by seed; per pair arm − baseline (steps: arm / baseline). Mean with its 95% '
        'Student-t interval (n − 1 df; ratios: geometric mean, t interval on the log ratios); '
        'MDE: the smallest true effect this design detects with 80% power at two-sided α = 0.05, '
        '(t₀.₉₇₅ + t₀.₈₀)·sd/√n. Verdicts: holds (the interval excludes 0, or 1, in the claimed '
        'direction), reversed (in the other), not resolved at this power, not tested here.',
        '',
    ]
    for result in results:
        lines += claim_lines(result)
    return lines, results


# --- Plots ----------------------------------------------------------------------------------


def plot_learning_curves(
    groups: list[Group], path: str, targets: Sequence[float] = (), title: str = ''
) -> None:
    """Error against step: logged training error (solid), clean-train error (dashed) and
    validation error (dotted) where the runs have them, test evaluations (circles)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    kinds = {'train': False, CLEAN: False, VAL: False, 'eval_top1_error': False}
    for i, group in enumerate(groups):
        colour = colours[i % len(colours)]
        labelled = False
        for run in group.runs:
            label = None if labelled else _label(group.overrides)
            if run.train:
                steps = [r['step'] for r in run.train]
                errors = [r['train_top1_error'] for r in run.train]
                ax.plot(steps, errors, '-', color=colour, lw=1.2, label=label)
                labelled, label, kinds['train'] = True, None, True
            for key, style in ((CLEAN, '--'), (VAL, ':')):
                steps, errors = curve(run, key)
                if steps:
                    ax.plot(steps, errors, style, color=colour, lw=1.4, label=label)
                    labelled, label, kinds[key] = True, None, True
            steps, errors = curve(run, 'eval_top1_error')
            if steps:
                ax.plot(steps, errors, 'o', color=colour, ms=5, mfc='none', label=label)
                labelled, kinds['eval_top1_error'] = True, True
    for target in targets:
        ax.axhline(target, color='grey', lw=0.8, ls=':')
    handles, _ = ax.get_legend_handles_labels()
    keys = [
        ('train', dict(ls='-'), 'train (logged)'),
        (CLEAN, dict(ls='--'), 'clean train'),
        (VAL, dict(ls=':'), 'validation'),
        ('eval_top1_error', dict(ls='none', marker='o', mfc='none'), 'test'),
    ]
    handles += [Line2D([], [], color='black', label=text, **kw) for k, kw, text in keys if kinds[k]]
    ax.set_xlabel('step')
    ax.set_ylabel('top-1 error')
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title or 'Training error')
    if handles:
        ax.legend(handles=handles, fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_test_errors(groups: list[Group], path: str, title: str = '') -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    def test_errors(group: Group) -> list[float]:
        return [
            v * 100
            for v in (_finite(r.results.get('eval_top1_error')) for r in group.done)
            if v is not None
        ]

    shown = [g for g in groups if test_errors(g)]
    errors = [test_errors(g) for g in shown]
    means = [float(np.mean(e)) for e in errors]
    stds = [float(np.std(e, ddof=1)) if len(e) > 1 else 0.0 for e in errors]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(shown) + 1.5), 3.8), dpi=100)
    ax.bar(range(len(shown)), means, yerr=stds, capsize=5, color='tab:blue', alpha=0.8)
    for x, e in enumerate(errors):
        ax.plot([x] * len(e), e, 'k.', ms=6)
        text = f'{means[x]:.2f}' + (f' ± {stds[x]:.2f}' if len(e) > 1 else '')
        ax.annotate(
            text,
            (x, means[x] + stds[x]),
            xytext=(0, 4),
            textcoords='offset points',
            ha='center',
            fontsize=8,
        )
    ax.set_xticks(range(len(shown)), [_label(g.overrides) for g in shown], fontsize=8)
    ax.set_ylabel('test top-1 error (%)')
    ax.set_ylim(0, 1.15 * max(max(e) for e in errors) if errors else 1)  # room for the labels
    ax.set_title(title or 'Final test error (mean ± std over seeds, dots: runs)')
    ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_report(sweep_dir: str, targets: Sequence[float] | None = None, plots: bool = True) -> str:
    """The markdown report of ``sweep_dir`` (also written to ``report.md``), plots alongside."""
    records = collect(sweep_dir)
    if not records:
        raise FileNotFoundError(f'No runs in {sweep_dir}: run python -m experiments.sweep first.')
    meta_path = os.path.join(sweep_dir, sweep_lib.SWEEP_JSON)
    meta = _read_json(meta_path) if os.path.exists(meta_path) else {}
    options = meta.get('report', {})
    if targets is None:
        wanted = options.get('target_train_error', [])
        targets = [wanted] if isinstance(wanted, int | float) else list(wanted)
    groups = group_runs(records)
    name = meta.get('sweep', os.path.basename(os.path.normpath(sweep_dir)))
    lines = [f'## Sweep `{name}`', '']
    if meta:
        lines += [
            f'Base `{meta["base"]}`, seeds {meta["seeds"]}, budget `{json.dumps(meta["budget"])}`.',
            '',
        ]
    lines += [markdown_table(groups, targets), '']
    lines += [
        f'Test error: final evaluation on the whole test split. Final train error: mean logged '
        f'training error (augmented batches, dropout on) over the last '
        f'{FINAL_TRAIN_FRACTION:.0%} of steps. Val / clean train err: final evaluation on the '
        f'held-out validation split / on a fixed subset of training images in eval mode. Steps '
        f'to X%: from the clean-train evaluations where the run has them, the step at which '
        f'that error first reaches X, interpolated linearly between two evaluations; else the '
        f'first logged step at which the mean training error of that logging window and the '
        f'{SMOOTH_WINDOWS - 1} before it is at most X. Mean ± std over seeds.',
        '',
    ]
    if options.get('ratio'):
        lines += [*ratio_lines(groups, options['ratio'], targets), '']
    if options.get('claims'):
        claim_text, _ = claims_section(list(options['claims']), records, targets)
        lines += claim_text
    failed = [r for r in records if r.status == 'failed']
    if failed:
        lines += ['### Failed runs', '']
        lines += [f'- `{r.name}`: {r.error.splitlines()[0] if r.error else "?"}' for r in failed]
        lines.append('')
    unfinished = [r for r in records if r.status == 'unfinished']
    if unfinished:
        lines += ['Not finished (rerun the sweep to resume): ']
        lines += [f'- `{r.name}` (logged up to step {_last_step(r)})' for r in unfinished]
        lines.append('')
    if plots:
        plot_learning_curves(
            groups, os.path.join(sweep_dir, 'learning_curves.png'), targets, f'{name}: error'
        )
        if any(g.done for g in groups):
            plot_test_errors(
                groups, os.path.join(sweep_dir, 'test_error.png'), f'{name}: test error'
            )
            lines += ['![test error](test_error.png)', '']
        lines += ['![learning curves](learning_curves.png)', '']
    text = '\n'.join(lines)
    with open(os.path.join(sweep_dir, 'report.md'), 'w') as f:
        f.write(text)
    return text


def _last_step(record: RunRecord) -> int:
    return int(record.train[-1]['step']) if record.train else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('sweep_dir', help='the --workdir of python -m experiments.sweep')
    parser.add_argument(
        '--target-error',
        type=float,
        nargs='+',
        default=None,
        help='training-error targets for the "steps to X" columns, e.g. 0.25 (default: the '
        "sweep file's report['target_train_error'])",
    )
    parser.add_argument('--no-plots', action='store_true', help='the markdown only')
    args = parser.parse_args(argv)
    try:
        text = build_report(args.sweep_dir, args.target_error, plots=not args.no_plots)
    except FileNotFoundError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
