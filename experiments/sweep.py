"""Runs a grid of configs one after another on this host, resumably.

    python -m experiments.sweep --sweep experiments/sweeps/relu_vs_tanh.py --workdir DIR
    python -m experiments.sweep --sweep ... --workdir DIR --dry-run  # list and check, no compute
    python -m experiments.sweep --sweep ... --workdir DIR --write-scripts  # run_all, SLURM

A sweep file is plain Python with these names (only ``BASE`` and ``grid`` are required)::

    BASE = 'configs/fashion_mnist.py'      # a config file with get_config()
    grid = {'activation': ['relu', 'tanh']}  # crossed; or a list of override dicts
    seeds = [0, 1]                          # config.seed of each repeat (default [0])
    budget = {'num_train_steps': 300}       # fixed overrides for every run
    report = {'target_train_error': [0.25], 'ratio': ('activation', 'tanh', 'relu')}
    # report: experiments.report's "steps to X% train error" columns and "tanh / relu" lines
    # report may also hold 'claims': [{...}, ...], checked per claim (schema: experiments/claims.py)

Every run's config is the base config with ``budget``, the grid point and the seed applied to the
LOCKED config, and is validated before the first run starts: a misspelt field, a value of the wrong
type, an empty grid or a claim that does not follow the schema fails the whole sweep with one
message and no compute. Runs go through ``alexnet_jax.train.train_and_evaluate``, the code behind
``alexnet_jax.main``, each in ``DIR/<run_name>/`` (named from its grid overrides and seed). A run
with ``results.json`` is skipped, a half-finished one resumes from its own checkpoint, and a failed
one gets ``failed.json`` (error and traceback) while the sweep goes on to the next run. Adding seeds
or grid values to a finished sweep runs only the new runs; run names do not include the budget, so
after changing it use a new DIR (a finished run whose config differs is kept, with a warning).

Sweeps that share an arm (the baseline of two ablations) train it once: with ``--reuse OTHER_DIR``
a run not yet started here whose whole config (seed included) equals a finished run's under
OTHER_DIR is copied from there (checkpoints left behind) with ``reused.json`` naming the source,
and the report lists it.

A session's machine does not outlive it, so finished runs are kept in the repository:
``--archive DEST`` copies each finished run's records (config, run, results and metrics; no
checkpoints or TensorBoard files, tens of kB a run; ``run.json`` names the commit that trained
it) to ``DEST/<run_name>/`` with ``archived.json`` naming its source, and does nothing else.
``--reuse DEST`` on the next machine then copies them in instead of training them again.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import importlib.util
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_JSON = 'sweep.json'  # the sweep's definition, for experiments.report
RUN_JSON = 'run.json'  # a run's overrides, seed and the commit of the code that trained it
FAILED_JSON = 'failed.json'
RESULTS_JSON = 'results.json'
REUSED_JSON = 'reused.json'  # a run copied from another sweep's identical run: its source
COPYING = '.copying'  # suffix of a reused run's directory while it is being copied

log = logging.getLogger('experiments.sweep')


class SweepError(ValueError):
    """A sweep that cannot run as written; raised before any run starts."""


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    overrides: dict[str, Any]  # the grid point (what the report groups by)
    seed: int
    config: ml_collections.ConfigDict

    def workdir(self, sweep_dir: str) -> str:
        return os.path.join(sweep_dir, self.name)


@dataclasses.dataclass(frozen=True)
class Sweep:
    path: str
    base: str
    points: list[dict[str, Any]]
    seeds: list[int]
    budget: dict[str, Any]
    report: dict[str, Any]

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]


def _load_module(path: str, name: str) -> Any:
    if not os.path.isfile(path):
        raise SweepError(f'{path} does not exist.')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sweep(path: str) -> Sweep:
    """Reads a sweep file; an empty or malformed grid is a :class:`SweepError`."""
    module = _load_module(path, f'_sweep_{os.path.splitext(os.path.basename(path))[0]}')
    for required in ('BASE', 'grid'):
        if not hasattr(module, required):
            raise SweepError(f'Sweep file {path} defines no {required!r}.')
    grid = module.grid
    if isinstance(grid, dict):
        empty = [k for k, v in grid.items() if not isinstance(v, list | tuple) or not v]
        if not grid or empty:
            raise SweepError(
                f'Sweep file {path}: empty grid ({", ".join(empty) or "no fields"}); every field '
                'needs a non-empty list of values.'
            )
        points = [
            dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())
        ]
    elif isinstance(grid, list | tuple) and grid and all(isinstance(p, dict) for p in grid):
        points = [dict(p) for p in grid]
    else:
        raise SweepError(
            f'Sweep file {path}: empty grid; `grid` must be a non-empty dict of field -> list of '
            f'values or a non-empty list of override dicts, got {grid!r}.'
        )
    seeds = list(getattr(module, 'seeds', [0]))
    if not seeds:
        raise SweepError(f'Sweep file {path}: `seeds` is empty.')
    base = module.BASE if os.path.isabs(module.BASE) else os.path.join(ROOT, module.BASE)
    return Sweep(
        path=path,
        base=os.path.relpath(base, ROOT) if base.startswith(ROOT + os.sep) else base,
        points=points,
        seeds=seeds,
        budget=dict(getattr(module, 'budget', {})),
        report=dict(getattr(module, 'report', {})),
    )


def load_base_config(base: str) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file (relative paths from the repository root), locked."""
    path = base if os.path.isabs(base) else os.path.join(ROOT, base)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)  # config files import `configs.default`
    config = _load_module(path, f'_config_{os.path.splitext(os.path.basename(path))[0]}')
    config = config.get_config()
    config.lock()
    return config


def run_name(overrides: dict[str, Any], seed: int) -> str:
    """A stable, readable directory name, e.g. ``activation=tanh__seed=0``."""
    parts = [f'{k}={_format_value(v)}' for k, v in overrides.items()] + [f'seed={seed}']
    return re.sub(r'[^A-Za-z0-9._=+-]', '-', '__'.join(parts))


def _format_value(value: Any) -> str:
    return repr(value) if isinstance(value, str) and not value else str(value)


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: dict[str, Any], where: str
) -> ml_collections.ConfigDict:
    """A copy of the locked ``config`` with ``overrides`` set; unknown fields raise SweepError."""
    config = config.copy_and_resolve_references()
    config.lock()
    for key, value in overrides.items():
        *parents, leaf = key.split('.')  # 'a.b' reaches into a nested ConfigDict
        try:
            node = config
            for parent in parents:
                node = getattr(node, parent)
            setattr(node, leaf, value)
        except (AttributeError, KeyError) as error:
            close = difflib.get_close_matches(key, list(config.keys()), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ''
            raise SweepError(
                f'{where}: unknown config field {key!r}{hint}; the config is locked, so a field '
                f'the base config does not define cannot be set.'
            ) from error
        except TypeError as error:
            raise SweepError(f'{where}: cannot set {key}={value!r}: {error}') from error
    return config


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``--set FIELD=VALUE`` items as overrides; a value is a Python literal or else a string."""
    sets = {}
    for item in items:
        field, sep, text = item.partition('=')
        if not sep or not field:
            raise SweepError(f'--set {item!r}: write FIELD=VALUE, e.g. --set dataset=prepared')
        try:
            sets[field] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            sets[field] = text
    return sets


def build_runs(sweep: Sweep) -> list[Run]:
    """Every run's config, validated; raises SweepError before anything runs."""
    from alexnet_jax.config_checks import ConfigError, validate_config
    from experiments.claims import ClaimError, parse_claim  # claims imports this module

    for claim in sweep.report.get('claims', []):
        try:
            parse_claim(claim)
        except ClaimError as error:
            name = claim.get('name', '(unnamed)') if isinstance(claim, dict) else claim
            raise SweepError(f'{sweep.path}: claim {name!r}: {error}') from None
    base = load_base_config(sweep.base)
    apply_overrides(base, sweep.budget, f'{sweep.path}: budget')
    runs, names = [], set()
    for point in sweep.points:
        for seed in sweep.seeds:
            name = run_name(point, seed)
            where = f'{sweep.path}: run {name}'
            if 'seed' in point or 'seed' in sweep.budget:
                raise SweepError(f'{where}: set seeds with `seeds = [...]`, not as a field.')
            config = apply_overrides(base, {**sweep.budget, **point, 'seed': seed}, where)
            try:
                validate_config(config)
            except ConfigError as error:
                raise SweepError(f'{where}: {error}') from None
            if name in names:
                raise SweepError(f'{where}: two grid points give the same run name.')
            names.add(name)
            runs.append(Run(name, point, seed, config))
    return runs


def run_status(run: Run, sweep_dir: str) -> str:
    workdir = run.workdir(sweep_dir)
    if os.path.exists(os.path.join(workdir, RESULTS_JSON)):
        return 'done'
    if os.path.exists(os.path.join(workdir, FAILED_JSON)):
        return 'failed'
    if os.path.isdir(os.path.join(workdir, 'checkpoints')):
        return 'partial'
    return 'pending'


def write_sweep_json(sweep: Sweep, runs: list[Run], sweep_dir: str) -> None:
    os.makedirs(sweep_dir, exist_ok=True)
    data = {
        'sweep': sweep.name,
        'sweep_file': sweep.path,
        'base': sweep.base,
        'seeds': sweep.seeds,
        'budget': sweep.budget,
        'report': sweep.report,
        'runs': [{'name': r.name, 'overrides': r.overrides, 'seed': r.seed} for r in runs],
    }
    _write_json(os.path.join(sweep_dir, SWEEP_JSON), data)


def _write_json(path: str, data: Any) -> None:
    tmp = f'{path}.{os.getpid()}.tmp'  # two processes writing one file never share a temp
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


def find_finished_twin(run: Run, other_dirs: Sequence[str]) -> str | None:
    """A finished run under one of ``other_dirs`` with exactly ``run``'s config, if any.

    Finished means ``results.json`` written and the workdir's lock released (a run still
    closing its logs, or one that died holding the lock, is not copied).
    """
    from alexnet_jax.workdir_lock import LOCK_NAME  # imports JAX: not before runtime.configure

    wanted = json.loads(run.config.to_json_best_effort())
    for other in other_dirs:
        for entry in sorted(os.listdir(other)):
            workdir = os.path.join(other, entry)
            config = os.path.join(workdir, 'config.json')
            done = os.path.exists(os.path.join(workdir, RESULTS_JSON))
            locked = os.path.exists(os.path.join(workdir, LOCK_NAME))
            if entry.endswith(COPYING) or not done or locked or not os.path.exists(config):
                continue
            with open(config) as f:
                if json.load(f) == wanted:
                    return workdir
    return None


def reuse_run(run: Run, source: str, sweep_dir: str) -> None:
    """Copies the finished ``source`` (all but its checkpoints) in as ``run``, saying so.

    The copy is made beside the run's directory and renamed into place, so a copy cut short
    leaves no run that looks finished. The checkpoints stay in ``source``, which ``reused.json``
    names: give that directory to figures, evaluation or prediction (an archived run has none).
    """
    from alexnet_jax.workdir_lock import LOCK_NAME, PRIVATE_PATTERN

    workdir = run.workdir(sweep_dir)
    partial = workdir + COPYING
    shutil.rmtree(partial, ignore_errors=True)
    try:
        shutil.copytree(
            source,
            partial,
            ignore=shutil.ignore_patterns('checkpoints', LOCK_NAME, PRIVATE_PATTERN),
        )
        trained_by = None  # the commit that trained the source, where it says
        if os.path.exists(os.path.join(source, RUN_JSON)):
            with open(os.path.join(source, RUN_JSON)) as f:
                trained_by = json.load(f).get('commit')
        _write_json(
            os.path.join(partial, RUN_JSON),
            {'name': run.name, 'overrides': run.overrides, 'seed': run.seed, 'commit': trained_by},
        )
        _write_json(os.path.join(partial, REUSED_JSON), {'from': os.path.abspath(source)})
        os.rename(partial, workdir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


ARCHIVED_FILES = ('config.json', RUN_JSON, RESULTS_JSON, 'metrics.jsonl')
ARCHIVED_JSON = 'archived.json'


def archive_finished(sweep_dir: str, dest: str) -> list[str]:
    """Copies the records of each finished run in ``sweep_dir`` not yet in ``dest``.

    Finished as for ``--reuse``: ``results.json`` written, lock released. Each copy is made
    beside its place and renamed in, so a cut leaves no half archive. Returns the names copied.
    """
    from alexnet_jax.workdir_lock import LOCK_NAME

    copied = []
    for entry in sorted(os.listdir(sweep_dir)):
        if entry.endswith(COPYING):  # a copy still being made (or left half-made)
            continue
        workdir = os.path.join(sweep_dir, entry)
        target = os.path.join(dest, entry)
        done = all(os.path.exists(os.path.join(workdir, f)) for f in ARCHIVED_FILES)
        if not done or os.path.exists(os.path.join(workdir, LOCK_NAME)) or os.path.exists(target):
            continue
        partial = target + COPYING
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        for name in ARCHIVED_FILES:
            shutil.copy2(os.path.join(workdir, name), partial)
        source = os.path.join(workdir, REUSED_JSON)
        if os.path.exists(source):  # itself a copy: the run it came from trained it
            with open(source) as f:
                origin = json.load(f)['from']
        else:
            origin = os.path.abspath(workdir)
        _write_json(os.path.join(partial, ARCHIVED_JSON), {'from': origin})
        os.rename(partial, target)
        copied.append(entry)
    return copied


def _git_commit() -> str | None:
    """HEAD of the checkout this code runs from (the code that trains), ``-dirty`` if it has
    uncommitted changes; None outside a git checkout."""
    import subprocess

    try:
        out = subprocess.run(
            ['git', '-C', ROOT, 'describe', '--always', '--dirty', '--abbrev=40'],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def _remove_stale_copies(sweep_dir: str, older_than: float = 600.0) -> None:
    """Half-made copies left by a sweep that was stopped while copying (a copy takes seconds:
    one younger than ``older_than`` seconds may be another process's, still being made)."""
    if os.path.isdir(sweep_dir):
        for entry in os.listdir(sweep_dir):
            path = os.path.join(sweep_dir, entry)
            if entry.endswith(COPYING) and time.time() - os.path.getmtime(path) > older_than:
                shutil.rmtree(path, ignore_errors=True)


def execute(runs: list[Run], sweep_dir: str, reuse: Sequence[str] = ()) -> dict[str, str]:
    """Trains every unfinished run in order, or copies its finished twin from ``reuse``.

    Returns name -> done | skipped | reused | busy | failed | stopped (busy: another process
    holds the run's lock, so several processes can work through one sweep). A run not started
    yet whose config matches a finished one under a ``reuse`` directory is copied instead of
    trained; a copy that fails (disk full, the source gone) is said in the log and the run is
    trained.
    """
    from alexnet_jax import runtime

    runtime.configure()  # before JAX starts: the settings alexnet_jax.main gives a run
    from alexnet_jax import preemption, train
    from alexnet_jax.workdir_lock import WorkdirLockedError

    _remove_stale_copies(sweep_dir)
    commit = _git_commit()  # the code that trains, in each run.json
    outcome: dict[str, str] = {}
    caught = len(preemption.signals_caught())
    for i, run in enumerate(runs, start=1):
        late = preemption.signals_caught()[caught:]
        if late:  # caught as the last run was finishing (or failing): stop before the next
            log.warning(
                '%s arrived as the last run ended: stopping; rerun the sweep to go on.', late[0]
            )
            break
        workdir = run.workdir(sweep_dir)
        if run_status(run, sweep_dir) == 'done':
            log.info('[%d/%d] %s: finished before, skipped.', i, len(runs), run.name)
            _warn_if_config_changed(run, workdir)
            outcome[run.name] = 'skipped'
            continue
        twin = find_finished_twin(run, reuse) if reuse and not os.path.exists(workdir) else None
        if twin:
            try:
                reuse_run(run, twin, sweep_dir)
            except (OSError, shutil.Error) as error:
                log.warning(
                    '%s: copying %s failed (%s); training it instead.', run.name, twin, error
                )
            else:
                log.info(
                    '[%d/%d] %s: the same config finished in %s; copied.',
                    i,
                    len(runs),
                    run.name,
                    twin,
                )
                outcome[run.name] = 'reused'
                continue
        os.makedirs(workdir, exist_ok=True)
        failed = os.path.join(workdir, FAILED_JSON)
        if os.path.exists(failed):
            os.remove(failed)  # a new attempt
        _write_json(
            os.path.join(workdir, RUN_JSON),
            {'name': run.name, 'overrides': run.overrides, 'seed': run.seed, 'commit': commit},
        )
        log.info('[%d/%d] %s: starting in %s.', i, len(runs), run.name, workdir)
        started = time.time()
        try:
            results = train.train_and_evaluate(run.config, workdir)
        except WorkdirLockedError as error:  # another process trains it: theirs, not failed
            log.info(
                '[%d/%d] %s: another process is training it (%s); next.',
                i,
                len(runs),
                run.name,
                error,
            )
            outcome[run.name] = 'busy'
            continue
        except Exception as error:  # noqa: BLE001 - recorded, and the sweep goes on
            _write_json(
                failed,
                {
                    'name': run.name,
                    'error': f'{type(error).__name__}: {error}',
                    'traceback': traceback.format_exc(),
                    'seconds': time.time() - started,
                },
            )
            log.error(
                '[%d/%d] %s FAILED: %s: %s', i, len(runs), run.name, type(error).__name__, error
            )
            outcome[run.name] = 'failed'
            continue
        if 'stopped_by' in results:  # preempted: the checkpoint is saved; rerun to resume
            log.warning(
                '%s stopped by %s: rerun the sweep to resume.', run.name, results['stopped_by']
            )
            outcome[run.name] = 'stopped'
            break
        log.info(
            '[%d/%d] %s: top-1 error %.4f in %.0f s.',
            i,
            len(runs),
            run.name,
            results.get('eval_top1_error', float('nan')),
            time.time() - started,
        )
        outcome[run.name] = 'done'
    return outcome


def _warn_if_config_changed(run: Run, workdir: str) -> None:
    """A finished run is kept even if the sweep file changed since; say which fields differ."""
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)
    new = json.loads(run.config.to_json_best_effort())
    changed = sorted(k for k in new if old.get(k) != new[k])
    if changed:
        log.warning(
            '%s finished with other values of %s than the sweep now sets; delete %s to rerun it.',
            run.name,
            ', '.join(changed),
            workdir,
        )


def command_line(sweep: Sweep, run: Run, sweep_dir: str, python: str = 'python') -> str:
    """The ``alexnet_jax.main`` command that trains ``run`` (budget, grid point and seed)."""
    workdir = os.path.abspath(run.workdir(sweep_dir))
    flags = [f'--config={sweep.base}', f'--workdir={workdir}']
    flags += [
        f'--config.{k}={v}' for k, v in {**sweep.budget, **run.overrides, 'seed': run.seed}.items()
    ]
    return f'{python} -m alexnet_jax.main ' + ' '.join(shlex.quote(f) for f in flags)


def write_scripts(sweep: Sweep, runs: list[Run], sweep_dir: str) -> tuple[str, str]:
    """``run_all.sh`` (one line per run, finished runs skipped) and a SLURM array script."""
    os.makedirs(sweep_dir, exist_ok=True)
    lines = [
        f'[ -f {shlex.quote(os.path.abspath(os.path.join(r.workdir(sweep_dir), RESULTS_JSON)))} ] '
        f'|| {command_line(sweep, r, sweep_dir, "${PYTHON:-python}")}'
        for r in runs
    ]
    header = [
        '#!/bin/bash',
        f'# Sweep {sweep.name} ({sweep.path}): {len(runs)} runs, one per line, in order.',
        '# A line whose run has results.json is skipped; a half-finished run resumes.',
        f'cd {shlex.quote(ROOT)} || exit 1',
    ]
    run_all = os.path.join(sweep_dir, 'run_all.sh')
    with open(run_all, 'w') as f:
        f.write('\n'.join(header + lines) + '\n')
    slurm = os.path.join(sweep_dir, 'slurm_array.sh')
    body = [
        '#!/bin/bash',
        f'#SBATCH --job-name={sweep.name}',
        f'#SBATCH --array=0-{len(runs) - 1}',
        f'#SBATCH --output={os.path.abspath(sweep_dir)}/slurm-%A_%a.out',
        '#SBATCH --ntasks=1',
        f'# Task i runs RUNS[i], the i-th run line of run_all.sh: {sweep.path}',
        'set -euo pipefail',
        f'cd {shlex.quote(ROOT)}',
        'RUNS=(',
        *[f'  {shlex.quote(line)}' for line in lines],
        ')',
        'eval "${RUNS[$SLURM_ARRAY_TASK_ID]}"',
    ]
    with open(slurm, 'w') as f:
        f.write('\n'.join(body) + '\n')
    for path in (run_all, slurm):
        os.chmod(path, 0o755)
    return run_all, slurm


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sweep', required=True, help='experiments/sweeps/<name>.py')
    parser.add_argument('--workdir', required=True, help='the sweep directory (one subdir a run)')
    parser.add_argument('--dry-run', action='store_true', help='list and check the runs only')
    parser.add_argument(
        '--write-scripts', action='store_true', help='write run_all.sh and a SLURM array'
    )
    parser.add_argument(
        '--reuse',
        action='append',
        default=[],
        metavar='OTHER_DIR',
        help="copy a run from another sweep's directory where it finished with the same config",
    )
    parser.add_argument(
        '--set',
        action='append',
        default=[],
        metavar='FIELD=VALUE',
        help="a field set in every run, on top of the sweep file's budget (e.g. --set "
        'dataset=prepared --set dataset_path=DIR on a machine without TensorFlow); use a '
        'directory of its own, as the configs differ',
    )
    parser.add_argument(
        '--archive',
        metavar='DEST',
        help="copy finished runs' records (no checkpoints) to DEST/<run>, then stop",
    )
    args = parser.parse_args(argv)
    if args.archive:
        if not os.path.isdir(args.workdir):
            print(f'error: --workdir {args.workdir}: no such sweep directory', file=sys.stderr)
            return 2
        copied = archive_finished(args.workdir, args.archive)
        print(f'{len(copied)} finished runs archived to {args.archive}: {", ".join(copied)}')
        return 0
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    logging.getLogger('absl').setLevel(logging.WARNING)  # orbax's per-save chatter
    try:
        missing = [d for d in args.reuse if not os.path.isdir(d)]
        if missing:
            raise SweepError(f"--reuse {missing[0]}: no such directory (a finished sweep's DIR).")
        sweep = load_sweep(args.sweep)
        if args.set:
            sweep = dataclasses.replace(sweep, budget={**sweep.budget, **parse_sets(args.set)})
        runs = build_runs(sweep)
    except SweepError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    if args.dry_run:
        for run in runs:
            print(f'{run_status(run, args.workdir):8s} {run.name}')
        print(f'{len(runs)} runs of {sweep.base} in {args.workdir}; nothing run (--dry-run).')
        return 0
    write_sweep_json(sweep, runs, args.workdir)
    if args.write_scripts:
        for path in write_scripts(sweep, runs, args.workdir):
            print(path)
        return 0
    from alexnet_jax import preemption

    caught = len(preemption.signals_caught())
    outcome = execute(runs, args.workdir, args.reuse)
    kinds = ('done', 'skipped', 'reused', 'busy', 'failed')
    counts = {k: sum(v == k for v in outcome.values()) for k in kinds}
    print(
        f'Sweep {sweep.name}: {counts["done"]} run, {counts["skipped"]} skipped (finished before), '
        f'{counts["reused"]} copied from --reuse, {counts["busy"]} left to another process, '
        f'{counts["failed"]} failed, of {len(runs)}. Report: python -m experiments.report '
        f'{args.workdir}'
    )
    if 'stopped' in outcome.values() or len(preemption.signals_caught()) > caught:
        return 3  # stopped by a signal: rerun to go on
    return 1 if counts['failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
