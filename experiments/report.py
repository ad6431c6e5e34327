"""Collects a sweep's runs into a markdown table and PNG plots.

    python -m experiments.report DIR [--target-error 0.25 ...] [--no-plots]

Reads every run under DIR (``results.json``, ``metrics.jsonl``, or ``failed.json``), groups the
runs by their grid overrides and reports over seeds (mean ± std): the final test top-1 error, the
final training top-1 error, the gap between them, and the first logged step at which the
training error (smoothed over three logging windows) reached each requested target. Writes
``DIR/report.md``, ``DIR/learning_curves.png`` (training error against step, one line per run)
and ``DIR/test_error.png`` (final test error per group, std error bars); prints the markdown.

The training error is the one the loop logs: the mean over the steps of each logging window, on
augmented images with dropout on, so it can sit above the test error early in training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments import sweep as sweep_lib

FINAL_TRAIN_FRACTION = 0.1  # "final train error": mean of the logged windows in the last 10%
SMOOTH_WINDOWS = 3  # "steps to X% train error": on the mean of 3 consecutive logged windows


@dataclasses.dataclass
class RunRecord:
    name: str
    overrides: dict[str, Any]
    seed: int | None
    status: str  # done | failed | unfinished
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: list[dict[str, float]] = dataclasses.field(default_factory=list)  # train log lines
    evals: list[dict[str, float]] = dataclasses.field(default_factory=list)  # eval lines
    error: str = ''

    @property
    def group(self) -> tuple:
        return tuple((k, _hashable(v)) for k, v in self.overrides.items())


def _hashable(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def read_metrics(path: str) -> tuple[list[dict], list[dict]]:
    """(train lines, eval lines) of a metrics.jsonl, the last line per step winning (resumes)."""
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
                if 'train_top1_error' in row:
                    train[int(row['step'])] = row
                if 'eval_top1_error' in row:
                    evals[int(row['step'])] = row
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


@dataclasses.dataclass
class Group:
    overrides: dict[str, Any]
    runs: list[RunRecord]

    @property
    def done(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status == 'done']

    def values(self, fn) -> list[float]:
        return [fn(r) for r in self.done]


def group_runs(records: list[RunRecord]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for record in records:
        groups.setdefault(record.group, Group(record.overrides, [])).runs.append(record)
    return list(groups.values())


def _mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return '–'
    mean = float(np.mean(values)) * scale
    if len(values) == 1:
        return f'{mean:.{digits}f}'
    std = float(np.std(values, ddof=1)) * scale
    return f'{mean:.{digits}f} ± {std:.{digits}f}'


def _steps_cell(group: Group, target: float) -> str:
    steps = [steps_to_error(r, target) for r in group.done]
    reached = [s for s in steps if s is not None]
    if not steps:
        return '–'
    if not reached:
        last = max((r.train[-1]['step'] for r in group.done if r.train), default=0)
        return f'> {last}'
    cell = _mean_std(reached, scale=1.0, digits=0)
    return cell if len(reached) == len(steps) else f'{cell} ({len(reached)}/{len(steps)} reached)'


def mean_steps(group: Group, target: float) -> float | None:
    steps = [steps_to_error(r, target) for r in group.done]
    if not steps or any(s is None for s in steps):
        return None
    return float(np.mean(steps))


def _label(overrides: dict[str, Any]) -> str:
    return ', '.join(f'{k}={v}' for k, v in overrides.items()) or '(base)'


def markdown_table(groups: list[Group], targets: Sequence[float]) -> str:
    fields: list[str] = []
    for group in groups:
        fields += [k for k in group.overrides if k not in fields]
    header = [
        *fields,
        'seeds',
        'test top-1 err %',
        'final train err %',
        'gap test − train (pp)',
        *[f'steps to {t:.0%} train err' for t in targets],
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
            last = max((r.train[-1]['step'] for r in pick[slow].done if r.train), default=0)
            text = f'more than {last / b:.2f}x ({field}={slow} did not reach it in every run)'
        else:
            text = f'n/a ({field}={fast} did not reach it in every run)'
        lines.append(
            f'- Steps to {target:.0%} training error, {field}={slow} / {field}={fast}: {text}'
        )
    return lines


def plot_learning_curves(
    groups: list[Group], path: str, targets: Sequence[float] = (), title: str = ''
) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    styles = ['-', '--', ':', '-.']
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, group in enumerate(groups):
        colour = colours[i % len(colours)]
        for j, run in enumerate(group.runs):
            if not run.train:
                continue
            steps = [r['step'] for r in run.train]
            errors = [r['train_top1_error'] for r in run.train]
            label = f'{_label(group.overrides)}, seed {run.seed}'
            ax.plot(steps, errors, styles[j % 4], color=colour, lw=1.2, label=label)
            if run.evals:
                ax.plot(
                    [e['step'] for e in run.evals],
                    [e['eval_top1_error'] for e in run.evals],
                    'o',
                    color=colour,
                    ms=5,
                    mfc='none',
                )
    for target in targets:
        ax.axhline(target, color='grey', lw=0.8, ls=':')
    ax.set_xlabel('step')
    ax.set_ylabel('top-1 error (lines: train, circles: test)')
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title or 'Training error')
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_test_errors(groups: list[Group], path: str, title: str = '') -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    shown = [g for g in groups if g.done]
    errors = [[r.results['eval_top1_error'] * 100 for r in g.done] for g in shown]
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
        f'{FINAL_TRAIN_FRACTION:.0%} of steps. Steps to X%: first logged step at which the '
        f'mean training error of that logging window and the {SMOOTH_WINDOWS - 1} before it is '
        f'at most X. Mean ± std over seeds.',
        '',
    ]
    if options.get('ratio'):
        lines += [*ratio_lines(groups, options['ratio'], targets), '']
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
            groups, os.path.join(sweep_dir, 'learning_curves.png'), targets, f'{name}: train error'
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
