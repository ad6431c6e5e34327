"""Collects a sweep's runs into a markdown table, claim verdicts and PNG plots.

    python -m experiments.report DIR [--target-error 0.25 ...] [--no-plots]

Reads every run under DIR (``results.json``, ``metrics.jsonl``, or ``failed.json``), groups the
runs by their grid overrides and reports over seeds (mean ± std): the final test top-1 error, the
final training top-1 error, the gap between them, where the runs have them the final validation
error, the final clean-train error, the gap between those two and the best validation error (and
its step), and the step at which the training error reached each requested target. Then one block
per claim of the sweep file's ``report['claims']`` (the claim schema, pairing and verdicts:
:mod:`experiments.claims`). Writes ``DIR/report.md``, ``DIR/learning_curves.png`` (error against
step, one set of lines per run) and ``DIR/test_error.png`` (final test error per group, std error
bars); prints the markdown. Reading the runs and measuring each one: :mod:`experiments.runs`.

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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from experiments import sweep as sweep_lib
from experiments.claims import claims_section
from experiments.runs import (
    CLEAN,
    FINAL_TRAIN_FRACTION,
    SMOOTH_WINDOWS,
    VAL,
    RunRecord,
    best_validation,
    collect,
    curve,
    final_train_error,
    finite,
    last_step,
    metric_value,
    overrides_label,
    percent,
    read_json,
    steps_to_threshold,
)


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


def markdown_table(groups: list[Group], targets: Sequence[float]) -> str:
    fields: list[str] = []
    for group in groups:
        fields += [k for k in group.overrides if k not in fields]
    done = [r for g in groups for r in g.done]
    has_val = any(finite(r.results.get(VAL)) is not None for r in done)
    has_clean = any(finite(r.results.get(CLEAN)) is not None for r in done)
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
        *[f'steps to {percent(t)} train err' for t in targets],
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
                *([_mean_std(g.values(lambda r: finite(r.results.get(VAL))))] if has_val else []),
                *(
                    [_mean_std(g.values(lambda r: finite(r.results.get(CLEAN))))]
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
            label = None if labelled else overrides_label(group.overrides)
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
            for v in (finite(r.results.get('eval_top1_error')) for r in group.done)
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
    ax.set_xticks(range(len(shown)), [overrides_label(g.overrides) for g in shown], fontsize=8)
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
    meta = read_json(meta_path) if os.path.exists(meta_path) else {}
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
    reused = [r for r in records if r.reused_from]
    if reused:
        lines += ['### Copied runs (`--reuse`)', '']
        lines += ['The same config finished in another sweep; its checkpoints are there.', '']
        lines += [f'- `{r.name}` from `{r.reused_from}`' for r in reused]
        lines.append('')
    failed = [r for r in records if r.status == 'failed']
    if failed:
        lines += ['### Failed runs', '']
        lines += [f'- `{r.name}`: {r.error.splitlines()[0] if r.error else "?"}' for r in failed]
        lines.append('')
    unfinished = [r for r in records if r.status == 'unfinished']
    if unfinished:
        lines += ['Not finished (rerun the sweep to resume): ']
        lines += [f'- `{r.name}` (logged up to step {last_step(r)})' for r in unfinished]
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
