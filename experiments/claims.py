"""Checks a sweep file's claims against its runs: paired intervals, MDE, verdicts.

    report = {..., 'claims': [{'name': ..., 'metric': ..., 'baseline': ..., 'arm': ..., ...}]}

:mod:`experiments.report` writes one block per claim (:func:`claims_section`);
:mod:`experiments.sweep` checks every claim with :func:`parse_claim` before any run starts.

Schema
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
  each training-error threshold (:func:`experiments.runs.steps_to_threshold`; the "steps to
  X%" of :mod:`experiments.report`), compared as the ratio arm / baseline.
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

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments import stats
from experiments.runs import (
    CLEAN,
    SMOOTH_WINDOWS,
    VAL,
    RunRecord,
    best_validation,
    has_clean_curve,
    hashable,
    metric_value,
    overrides_label,
    percent,
    steps_to_threshold,
)

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
        k in record.overrides and hashable(record.overrides[k]) == hashable(v)
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
        return tuple(sorted((k, hashable(v)) for k, v in run.overrides.items() if k not in named))

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
            if hashable(vb) != hashable(va):
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
    label = f'steps to {percent(threshold)} train error ({where})'
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
            selector = overrides_label(getattr(result, side))
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
            f'- Metric `{result.metric}`, arm `{overrides_label(result.arm)}` against baseline '
            f'`{overrides_label(result.baseline)}`, expected {result.expect}; {len(result.pairs)} '
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
