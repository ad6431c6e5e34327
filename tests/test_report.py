"""experiments.claims (paired intervals, MDE, steps to thresholds, verdicts), experiments.runs,
experiments.report and experiments.stats, on sweep directories written the way
experiments.sweep writes them."""

import json
import math
import os

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments import report, stats, sweep
from experiments.claims import check_claim
from experiments.runs import (
    RunRecord,
    best_validation,
    collect,
    read_metrics,
    steps_to_error,
    steps_to_threshold,
)

BASE_CONFIG = {
    'dataset': 'fashion_mnist',
    'model': 'small',
    'pooling': 'overlapping',
    'activation': 'relu',
    'dropout_rate': 0.5,
    'weight_decay': 0.0005,
    'num_train_steps': 400,
    'data_dir': '/data/a',
    'seed': 0,
}


def _write(path, data):
    with open(path, 'w') as f:
        json.dump(data, f)


def make_sweep(tmp_path, runs, report_options=None, name='fake'):
    """A sweep directory as experiments.sweep leaves it: sweep.json, and per run run.json,
    metrics.jsonl and results.json (or failed.json). ``runs``: dicts with overrides, seed,
    results (None: failed), metrics (rows) and config (extra resolved-config fields, or False
    for an old run whose results.json has no config)."""
    sweep_dir = tmp_path / name
    sweep_dir.mkdir()
    entries = []
    for run in runs:
        run_name = sweep.run_name(run['overrides'], run['seed'])
        entries.append({'name': run_name, 'overrides': run['overrides'], 'seed': run['seed']})
        workdir = sweep_dir / run_name
        workdir.mkdir()
        _write(workdir / sweep.RUN_JSON, entries[-1])
        with open(workdir / 'metrics.jsonl', 'w') as f:
            for row in run.get('metrics', []):
                f.write(json.dumps(row) + '\n')
        if run.get('results') is None:
            _write(workdir / sweep.FAILED_JSON, {'name': run_name, 'error': 'ValueError: boom'})
            continue
        results = dict(run['results'])
        if run.get('config') is not False:
            config = {**BASE_CONFIG, **run['overrides'], **run.get('config', {})}
            results['config'] = {**config, 'seed': run['seed']}
        _write(workdir / sweep.RESULTS_JSON, results)
    seeds = sorted({r['seed'] for r in runs})
    meta = {
        'sweep': name,
        'sweep_file': f'experiments/sweeps/{name}.py',
        'base': 'configs/fashion_mnist.py',
        'seeds': seeds,
        'budget': {'num_train_steps': 400},
        'report': report_options or {},
        'runs': entries,
    }
    _write(sweep_dir / sweep.SWEEP_JSON, meta)
    return str(sweep_dir)


def final_run(overrides, seed, test_error, **extra):
    """A finished run with a final test error (and any other results.json values)."""
    rows = [
        {'step': 200, 'train_top1_error': 0.6, 'loss': 1.0},
        {'step': 400, 'train_top1_error': 0.4, 'loss': 0.8},
        {'step': 400, 'eval_top1_error': test_error, 'eval_count': 100},
    ]
    results = {'step': 400, 'eval_top1_error': test_error, 'images_per_sec': 100.0, **extra}
    return {'overrides': overrides, 'seed': seed, 'results': results, 'metrics': rows}


POOLING_CLAIM = {
    'name': 'overlapping pooling raises test error',
    'metric': 'eval_top1_error',
    'baseline': {'pooling': 'non_overlapping'},
    'arm': {'pooling': 'overlapping'},
    'expect': 'higher',
}


def paired_sweep(tmp_path, difference, noise, seeds=range(6), rng_seed=0, claims=()):
    rng = np.random.default_rng(rng_seed)
    base = 0.30 + rng.normal(0.0, 0.01, len(seeds))
    other = base + difference + rng.normal(0.0, noise, len(seeds))
    runs = [
        final_run({'pooling': 'non_overlapping'}, s, float(e))
        for s, e in zip(seeds, base, strict=True)
    ]
    runs += [
        final_run({'pooling': 'overlapping'}, s, float(e))
        for s, e in zip(seeds, other, strict=True)
    ]
    sweep_dir = make_sweep(tmp_path, runs, {'claims': list(claims)})
    return sweep_dir, base, other


def test_paired_interval_is_scipy_ttest_rel_and_the_verdict_follows_the_expected_side(tmp_path):
    lower = {**POOLING_CLAIM, 'name': 'overlapping pooling lowers test error', 'expect': 'lower'}
    sweep_dir, base, other = paired_sweep(tmp_path, 0.02, 0.002, claims=[POOLING_CLAIM, lower])
    records = collect(sweep_dir)
    result = check_claim(POOLING_CLAIM, records)
    (comparison,) = result.comparisons
    expected = scipy_stats.ttest_rel(other, base).confidence_interval(0.95)
    assert comparison.paired.n == 6
    assert comparison.paired.mean == pytest.approx(np.mean(other - base), abs=1e-12)
    assert comparison.paired.low == pytest.approx(expected.low, abs=1e-12)
    assert comparison.paired.high == pytest.approx(expected.high, abs=1e-12)
    assert expected.low > 0  # the premise: the interval excludes 0 on the 'higher' side
    assert comparison.verdict == 'holds'
    assert check_claim(lower, records).verdicts == ['reversed']
    assert not result.unpaired and not result.differences

    text = report.build_report(sweep_dir, plots=False)
    claims = text.split('## Claims', 1)[1]
    assert '### overlapping pooling raises test error' in claims
    assert 'n = 6 pairs' in claims and '**holds**' in claims and '**reversed**' in claims
    mean_pp = np.mean(other - base) * 100
    assert f'{mean_pp:+.2f} pp [95% CI {expected.low * 100:+.2f} pp' in claims


def test_a_difference_hidden_in_noise_is_not_resolved_with_the_interval_half_width(tmp_path):
    sweep_dir, base, other = paired_sweep(tmp_path, 0.002, 0.05, rng_seed=1)
    result = check_claim(POOLING_CLAIM, collect(sweep_dir))
    diffs = other - base
    n = len(diffs)
    half = scipy_stats.t.ppf(0.975, n - 1) * np.std(diffs, ddof=1) / math.sqrt(n)
    assert abs(np.mean(diffs)) < half  # the premise: the interval contains 0
    assert result.verdicts == [f'not resolved at this power (±{half * 100:.2f} pp)']
    assert result.comparisons[0].paired.half_width == pytest.approx(half, rel=1e-12)


def test_mde_is_the_t_formula_and_has_80_percent_power():
    sd, n = 0.013, 10
    tq = scipy_stats.t.ppf
    expected = (tq(0.975, n - 1) + tq(0.8, n - 1)) * sd / math.sqrt(n)
    assert stats.minimum_detectable_effect(sd, n) == pytest.approx(expected, rel=1e-12)
    diffs = np.random.default_rng(3).normal(0.0, sd, n)
    summary = stats.paired_summary(diffs)
    assert summary.mde == pytest.approx(
        stats.minimum_detectable_effect(np.std(diffs, ddof=1), n), rel=1e-12
    )
    assert math.isnan(stats.minimum_detectable_effect(sd, 1))
    assert math.isnan(stats.paired_summary([0.1]).low)

    # Monte Carlo: paired t-tests of n differences whose true mean is the MDE reject H0 at
    # two-sided alpha = 0.05 about 80% of the time (the exact noncentral-t power is 0.799).
    trials = 4000
    samples = np.random.default_rng(0).normal(expected, sd, (trials, n))
    t_stat = samples.mean(1) / (samples.std(1, ddof=1) / math.sqrt(n))
    rejected = np.mean(np.abs(t_stat) > tq(0.975, n - 1))
    assert rejected == pytest.approx(0.8, abs=0.03)


def test_verdict_words():
    assert stats.verdict(0.1, 0.3, 'higher') == 'holds'
    assert stats.verdict(0.1, 0.3, 'lower') == 'reversed'
    assert stats.verdict(-0.3, -0.1, 'lower') == 'holds'
    assert stats.verdict(-0.1, 0.3, 'higher') == 'not resolved at this power'
    assert stats.verdict(0.0, 0.0, 'higher') == 'not resolved at this power'
    assert stats.verdict(1.2, 1.5, 'higher', null=1.0) == 'holds'
    with pytest.raises(ValueError, match='expect'):
        stats.verdict(0.1, 0.2, 'more')


def clean_curve_rows(tau, every, last, clean=True):
    """Evaluation rows of clean-train error exp(-t / tau) every ``every`` steps, with a training
    row at each evaluation (the logged error, above the clean one)."""
    rows = []
    for step in range(0, last + 1, every):
        error = math.exp(-step / tau)
        rows.append({'step': step, 'train_top1_error': min(1.0, error + 0.1), 'loss': 1.0})
        if clean:
            rows.append({'step': step, 'train_clean_top1_error': error, 'val_top1_error': error})
    return rows


def interpolation_bound(tau, every):
    """Largest step error of linear interpolation of exp(-t / tau) sampled every K steps: the
    chord lies at most K^2 / 8 * max|e''| = K^2 e(s0) / (8 tau^2) above the curve, and falls at
    least e(s1) / tau per step, so it crosses at most K^2 exp(K / tau) / (8 tau) steps late."""
    return every**2 * math.exp(every / tau) / (8 * tau)


def test_steps_to_a_threshold_interpolate_the_clean_curve_and_censor_when_never_reached():
    tau, every, last = 100.0, 10, 400
    record = RunRecord('r', {}, 0, 'done')
    record.train, record.evals = _split(clean_curve_rows(tau, every, last))
    for threshold in (0.5, 0.2, 0.05, 0.02):
        reach = steps_to_threshold(record, threshold)
        exact = tau * math.log(1 / threshold)
        assert reach.source == 'clean'
        # The chord of a convex curve lies above it: the interpolated crossing is not early.
        assert 0 <= reach.step - exact <= interpolation_bound(tau, every)
    never = steps_to_threshold(record, 0.01)  # exp(-4) = 0.018 at the last step
    assert never.step is None and never.last == last
    assert steps_to_threshold(record, 1.0).step == 0  # reached at the first evaluation

    old = RunRecord('old', {}, 0, 'done')
    old.train, old.evals = _split(clean_curve_rows(tau, every, last, clean=False))
    fallback = steps_to_threshold(old, 0.3)
    assert fallback.source == 'train' and fallback.step == steps_to_error(old, 0.3)


def _split(rows):
    train = [r for r in rows if 'train_top1_error' in r]
    evals = [r for r in rows if 'train_clean_top1_error' in r]
    return train, evals


def steps_sweep(tmp_path, taus, seeds=(0, 1, 2), every=10, last=1000, clean=True):
    runs = []
    for activation, tau in taus.items():
        for seed in seeds:
            rows = clean_curve_rows(tau, every, last, clean)
            results = {'step': last, 'eval_top1_error': 0.2}
            runs.append(
                {'overrides': {'activation': activation}, 'seed': seed, 'results': results,
                 'metrics': rows}
            )  # fmt: skip
    return make_sweep(tmp_path, runs, {'target_train_error': [0.3]})


TANH_CLAIM = {
    'name': 'tanh takes more steps than ReLU',
    'metric': 'steps_ratio',
    'thresholds': [0.3, 0.2, 0.001],
    'baseline': {'activation': 'relu'},
    'arm': {'activation': 'tanh'},
    'expect': 'higher',
}


def test_steps_ratio_of_a_three_times_slower_arm_is_three_with_a_degenerate_interval(tmp_path):
    tau, every = 50.0, 10
    sweep_dir = steps_sweep(tmp_path, {'relu': tau, 'tanh': 3 * tau}, every=every)
    records = collect(sweep_dir)
    result = check_claim(TANH_CLAIM, records)
    assert len(result.pairs) == 3
    for threshold, comparison in zip((0.3, 0.2), result.comparisons[:2], strict=True):
        exact = tau * math.log(1 / threshold)
        low = 3 * exact / (exact + interpolation_bound(tau, every))
        high = (3 * exact + interpolation_bound(3 * tau, every)) / exact
        ratio = comparison.ratio
        assert ratio.n == 3 and low <= ratio.ratio <= high
        assert ratio.log.sd == 0 and ratio.low == ratio.high == pytest.approx(ratio.ratio)
        assert ratio.mde == 1.0
        assert comparison.verdict == 'holds'
        assert 'clean-train evaluations' in comparison.label
    # 0.001: relu reaches it at step 345, tanh (1036) not by step 1000: every pair censored.
    censored = result.comparisons[2]
    assert censored.label.startswith('steps to 0.1% train error')
    assert censored.verdict == 'not tested here (no pair in which both runs reached it)'
    assert censored.details == [
        '3 censored pair(s) left out of the ratio '
        '(arm never reached: seed 0 (> 1000), seed 1 (> 1000), seed 2 (> 1000))'
    ]
    reversed_claim = {**TANH_CLAIM, 'expect': 'lower', 'metric': 'steps_to:0.2'}
    del reversed_claim['thresholds']
    assert check_claim(reversed_claim, records).verdicts == ['reversed']

    text = report.build_report(sweep_dir, plots=False)  # the table's cell: interpolated steps
    step = steps_to_threshold(records[0], 0.3).step  # 50 ln(1 / 0.3) = 60.2, checked above
    assert '| relu | 3 |' in text and f'| {step:.0f} ± 0 |' in text


def test_steps_ratio_falls_back_to_the_logged_training_error(tmp_path):
    sweep_dir = steps_sweep(tmp_path, {'relu': 50.0, 'tanh': 150.0}, clean=False)
    claim = {**TANH_CLAIM, 'thresholds': [0.3]}
    (comparison,) = check_claim(claim, collect(sweep_dir)).comparisons
    assert 'logged training error' in comparison.label

    def first_smoothed_step(tau):  # the logged error, mean of 3 windows, first step <= 0.3
        steps = np.arange(0, 1001, 10)
        logged = np.minimum(1.0, np.exp(-steps / tau) + 0.1)
        smoothed = [logged[max(0, i - 2) : i + 1].mean() for i in range(len(steps))]
        return steps[np.argmax(np.asarray(smoothed) <= 0.3)]

    expected = first_smoothed_step(150.0) / first_smoothed_step(50.0)
    assert comparison.ratio.ratio == pytest.approx(expected, rel=1e-12)


def test_unequal_seeds_are_paired_where_possible_and_other_differences_flagged(tmp_path):
    runs = [
        final_run({'dropout_rate': 0.5}, seed, 0.30 + 0.001 * seed, weight_decay=0.0005)
        for seed in (0, 1, 2)
    ]
    runs += [final_run({'dropout_rate': 0.0}, seed, 0.32 + 0.002 * seed) for seed in (1, 2, 3)]
    for run in runs[3:]:
        run['config'] = {'weight_decay': 0.0, 'data_dir': '/elsewhere'}  # data_dir: bookkeeping
    runs.append({**final_run({'dropout_rate': 0.0}, 4, 0.3), 'results': None})  # failed
    claim = {
        'name': 'dropout lowers test error',
        'metric': 'eval_top1_error',
        'baseline': {'dropout_rate': 0.0},
        'arm': {'dropout_rate': 0.5},
        'expect': 'lower',
    }
    sweep_dir = make_sweep(tmp_path, runs, {'claims': [claim]})
    result = check_claim(claim, collect(sweep_dir))
    assert [(b.seed, a.seed) for b, a in result.pairs] == [(1, 1), (2, 2)]
    assert sorted((r.name, r.seed) for r in result.unpaired) == [
        ('dropout_rate=0.0__seed=3', 3),
        ('dropout_rate=0.5__seed=0', 0),
    ]
    assert [r.name for r in result.without_results] == ['dropout_rate=0.0__seed=4']
    assert result.differences == {'weight_decay': ('0.0', '0.0005')}
    text = report.build_report(sweep_dir, plots=False)
    assert 'arms also differ in: weight_decay (0.0 vs 0.0005)' in text
    assert '`dropout_rate=0.5__seed=0` (seed 0)' in text
    assert 'Runs without results: `dropout_rate=0.0__seed=4` (seed 4, failed)' in text


def test_a_crossed_grid_pairs_by_seed_and_the_fields_the_claim_does_not_name(tmp_path):
    runs = [
        final_run({'pooling': pooling, 'norm': norm}, seed, 0.3)
        for pooling in ('overlapping', 'non_overlapping')
        for norm in ('lrn', 'none')
        for seed in (0, 1)
    ]
    sweep_dir = make_sweep(tmp_path, runs)
    result = check_claim(POOLING_CLAIM, collect(sweep_dir))
    assert len(result.pairs) == 4 and not result.unpaired and not result.differences
    assert all(b.overrides['norm'] == a.overrides['norm'] for b, a in result.pairs)
    assert all(b.seed == a.seed for b, a in result.pairs)


def test_claims_not_tested_say_why(tmp_path):
    sweep_dir, _, _ = paired_sweep(tmp_path, 0.02, 0.002, seeds=[0, 1])
    records = collect(sweep_dir)
    reason = 'grey images have no colour to perturb'
    assert check_claim({'name': 'PCA noise', 'not_tested': reason}, records).verdicts == [
        f'not tested here ({reason})'
    ]
    missing = {**POOLING_CLAIM, 'metric': 'val_top1_error'}
    assert check_claim(missing, records).verdicts == [
        'not tested here (no pair of runs has `val_top1_error`)'
    ]
    one_pair = check_claim(POOLING_CLAIM, [r for r in records if r.seed == 0])
    assert one_pair.verdicts[0].startswith('not tested here (fewer than 2 pairs: 1 pair')
    (verdict,) = check_claim({**POOLING_CLAIM, 'expekt': 'x'}, records).verdicts
    assert verdict.startswith("not tested here (bad claim: unknown key(s) ['expekt']")
    nobody = {**POOLING_CLAIM, 'arm': {'pooling': 'stochastic'}}
    assert check_claim(nobody, records).verdicts == [
        'not tested here (no run matches the arm pooling=stochastic)'
    ]

    claims = [{'name': 'PCA noise', 'not_tested': reason}, missing]
    with open(os.path.join(sweep_dir, sweep.SWEEP_JSON)) as f:
        meta = json.load(f)
    meta['report']['claims'] = claims
    _write(os.path.join(sweep_dir, sweep.SWEEP_JSON), meta)
    text = report.build_report(sweep_dir, plots=False)
    assert f'### PCA noise\n\n- Verdict: **not tested here ({reason})**' in text


def test_val_clean_gap_and_best_validation_metrics(tmp_path):
    runs = []
    for seed in range(4):
        for dropout, shift in ((0.0, 0.0), (0.5, 0.01 + 0.001 * seed)):
            rows = [
                {'step': 100, 'train_top1_error': 0.5, 'loss': 1.0},
                {'step': 100, 'val_top1_error': 0.40 + shift, 'train_clean_top1_error': 0.35},
                {'step': 200, 'train_top1_error': 0.3, 'loss': 0.9},
                {'step': 200, 'val_top1_error': 0.30 + shift, 'train_clean_top1_error': 0.20},
                {'step': 300, 'train_top1_error': 0.2, 'loss': 0.8},
                {'step': 300, 'val_top1_error': 0.32 + shift, 'train_clean_top1_error': 0.10},
                {'step': 300, 'eval_top1_error': 0.33 + shift, 'eval_count': 100},
            ]
            results = {
                'step': 300,
                'val_top1_error': 0.32 + shift,
                'train_clean_top1_error': 0.10 - shift,
                'eval_top1_error': 0.33 + shift,
            }
            runs.append(
                {'overrides': {'dropout_rate': dropout}, 'seed': seed, 'results': results,
                 'metrics': rows}
            )  # fmt: skip
    claims = [
        {'name': f'dropout raises {m}', 'metric': m, 'baseline': {'dropout_rate': 0.0},
         'arm': {'dropout_rate': 0.5}, 'expect': 'higher'}
        for m in ('val_top1_error', 'gap', 'best_val_top1_error')
    ]  # fmt: skip
    sweep_dir = make_sweep(tmp_path, runs, {'claims': claims})
    records = collect(sweep_dir)
    shifts = 0.01 + 0.001 * np.arange(4)
    for claim, diffs in zip(claims, (shifts, 2 * shifts, shifts), strict=True):
        (comparison,) = check_claim(claim, records).comparisons
        assert comparison.paired.mean == pytest.approx(np.mean(diffs))
        assert comparison.verdict == 'holds'
    best = check_claim(claims[2], records).comparisons[0]
    assert 'best at step (mean over runs): baseline 200, arm 200' in best.details
    assert best_validation(records[0]) == (pytest.approx(0.30), 200, None)

    text = report.build_report(sweep_dir)  # with the plots: clean and validation curves drawn
    assert 'val err % | clean train err % | gap val − clean train (pp) | best val err %' in text
    assert '| 0.0 | 4 | 33.00 ± 0.00 |' in text and '30.00 ± 0.00 (step 200 ± 0)' in text
    with open(os.path.join(sweep_dir, 'learning_curves.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_read_metrics_keeps_every_evaluation_row_and_merges_a_step(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    rows = [
        {'step': 10, 'train_top1_error': 0.9, 'loss': 2.0},
        {'step': 10, 'val_top1_error': 0.8, 'val_count': 50},
        {'step': 20, 'train_clean_top1_error': 0.7},
        {'step': 20, 'eval_top1_error': 0.75, 'eval_count': 100},
    ]
    path.write_text('\n'.join(json.dumps(r) for r in rows) + '\n{"step": 30, "eval_')
    train, evals = read_metrics(str(path))
    assert [r['step'] for r in train] == [10]
    assert evals == [
        {'step': 10, 'val_top1_error': 0.8, 'val_count': 50},
        {'step': 20, 'train_clean_top1_error': 0.7, 'eval_top1_error': 0.75, 'eval_count': 100},
    ]


def test_old_runs_with_test_evaluations_only_still_report_as_before(tmp_path):
    runs = []
    for rate, error in ((0.0, 0.7), (0.5, 0.72)):
        for seed in (0, 1):
            run = final_run({'dropout_rate': rate}, seed, error)
            run['config'] = False  # results.json without config, as older runs wrote it
            run['metrics'][0]['train_top1_error'] = 0.9
            run['metrics'][1]['train_top1_error'] = 0.6
            runs.append(run)
    claim = {
        'name': 'dropout raises test error',
        'metric': 'eval_top1_error',
        'baseline': {'dropout_rate': 0.0},
        'arm': {'dropout_rate': 0.5},
        'expect': 'higher',
    }
    sweep_dir = make_sweep(tmp_path, runs, {'target_train_error': [0.75], 'claims': [claim]})
    text = report.build_report(sweep_dir)
    assert (
        '| dropout_rate | seeds | test top-1 err % | final train err % | gap test − train (pp) '
        '| steps to 75% train err | img/s |'
    ) in text
    assert '| 0.0 | 2 | 70.00 ± 0.00 | 60.00 ± 0.00 | 10.00 ± 0.00 | 400 ± 0 | 100 ± 0 |' in text
    # Identical differences: a degenerate interval at +2 pp, which excludes 0.
    assert '+2.00 pp [95% CI +2.00 pp, +2.00 pp]' in text and '**holds**' in text
