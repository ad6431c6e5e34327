"""Paired comparisons of two arms of a sweep: pure functions of numbers, no files.

experiments.report pairs the runs of two arms by seed and formats what these return:

- :func:`paired_summary`: the mean paired difference with a Student-t confidence interval and the
  minimum detectable effect (MDE) of the design;
- :func:`ratio_summary`: the same on log ratios, reported back as a geometric-mean ratio;
- :func:`first_crossing`: the step at which an error curve first reaches a threshold;
- :func:`verdict`: the fixed verdict words, decided by where the interval lies.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95  # two-sided, so alpha = 0.05
POWER = 0.8

HOLDS = 'holds'
REVERSED = 'reversed'
NOT_RESOLVED = 'not resolved at this power'
NOT_TESTED = 'not tested here'


@dataclasses.dataclass(frozen=True)
class PairedSummary:
    """Mean of the paired differences (other - baseline), its interval and the design's MDE.

    With ``n < 2`` there is no spread to estimate: ``sd``, ``low``, ``high``, ``half_width`` and
    ``mde`` are NaN. With ``sd == 0`` (identical differences) the interval is the single point
    ``mean`` and the MDE is 0.
    """

    n: int
    mean: float
    sd: float
    low: float
    high: float
    half_width: float
    mde: float


def minimum_detectable_effect(
    sd: float, n: int, confidence: float = CONFIDENCE, power: float = POWER
) -> float:
    """The smallest true mean paired difference that a two-sided paired t-test at level
    ``1 - confidence`` detects with probability ``power``, given the sd of the differences:

        MDE = (t_{1 - alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)

    (the usual normal-approximation formula with t quantiles for the n - 1 degrees of freedom;
    the exact power at this effect, from the noncentral t, is within about 0.02 of ``power``
    for n >= 5). NaN for ``n < 2``.
    """
    if n < 2 or not math.isfinite(sd):
        return math.nan
    alpha = 1.0 - confidence
    df = n - 1
    factor = scipy_stats.t.ppf(1.0 - alpha / 2.0, df) + scipy_stats.t.ppf(power, df)
    return float(factor * sd / math.sqrt(n))


def paired_summary(
    differences: Sequence[float], confidence: float = CONFIDENCE, power: float = POWER
) -> PairedSummary:
    """Mean of ``differences`` with its ``confidence`` interval, Student t with n - 1 degrees of
    freedom: mean ± t_{1 - alpha/2, n-1} * sd / sqrt(n), sd with ddof=1 (the interval
    ``scipy.stats.ttest_rel(other, baseline).confidence_interval()`` gives)."""
    values = np.asarray([float(d) for d in differences], dtype=np.float64)
    n = int(values.size)
    if n == 0:
        return PairedSummary(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean = float(values.mean())
    if n < 2:
        return PairedSummary(1, mean, math.nan, math.nan, math.nan, math.nan, math.nan)
    sd = float(values.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n))
    return PairedSummary(
        n=n,
        mean=mean,
        sd=sd,
        low=mean - half,
        high=mean + half,
        half_width=half,
        mde=minimum_detectable_effect(sd, n, confidence, power),
    )


@dataclasses.dataclass(frozen=True)
class RatioSummary:
    """Geometric-mean ratio (other / baseline) with its interval, from a t interval on the log
    ratios. ``mde`` is the smallest true ratio above 1 (or, as 1 / mde, below 1) detectable with
    the design's power: exp of the MDE of the log ratios. NaN where :class:`PairedSummary` is."""

    n: int
    ratio: float
    low: float
    high: float
    mde: float
    log: PairedSummary


def ratio_summary(
    ratios: Sequence[float], confidence: float = CONFIDENCE, power: float = POWER
) -> RatioSummary:
    """Geometric mean of positive ``ratios`` with a t interval on their logarithms."""
    values = [float(r) for r in ratios]
    if any(not r > 0 for r in values):
        raise ValueError(f'Ratios must be positive, got {values}.')
    logs = paired_summary([math.log(r) for r in values], confidence, power)
    return RatioSummary(
        n=logs.n,
        ratio=math.exp(logs.mean) if logs.n else math.nan,
        low=math.exp(logs.low),
        high=math.exp(logs.high),
        mde=math.exp(logs.mde),
        log=logs,
    )


def verdict(low: float, high: float, expect: str, null: float = 0.0) -> str:
    """:data:`HOLDS` when the interval [low, high] lies entirely on the ``expect`` side of
    ``null`` ('higher': low > null; 'lower': high < null), :data:`REVERSED` when entirely on the
    other side, else :data:`NOT_RESOLVED` (also for a NaN interval). A degenerate interval
    (low == high == null) is not resolved."""
    if expect not in ('lower', 'higher'):
        raise ValueError(f"expect must be 'lower' or 'higher', got {expect!r}.")
    if not (math.isfinite(low) and math.isfinite(high)):
        return NOT_RESOLVED
    above, below = low > null, high < null
    if above:
        return HOLDS if expect == 'higher' else REVERSED
    if below:
        return HOLDS if expect == 'lower' else REVERSED
    return NOT_RESOLVED


def first_crossing(
    steps: Sequence[float], errors: Sequence[float], threshold: float
) -> float | None:
    """The step at which the curve (steps[i], errors[i]) first reaches ``errors <= threshold``,
    linearly interpolated between the last point above the threshold and the first at or below
    it: s0 + (e0 - threshold) / (e0 - e1) * (s1 - s0). If the first point is already at or below
    the threshold, its step (the curve is not known before it). None if never reached
    (censored: the run needs more than ``steps[-1]``). NaN errors are skipped."""
    points = [
        (float(s), float(e)) for s, e in zip(steps, errors, strict=True) if math.isfinite(float(e))
    ]
    for i, (step, error) in enumerate(points):
        if error <= threshold:
            if i == 0:
                return step
            s0, e0 = points[i - 1]
            return s0 + (e0 - threshold) / (e0 - error) * (step - s0)
    return None
