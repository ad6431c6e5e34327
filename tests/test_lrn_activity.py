"""experiments.lrn_activity against a plain loop over channels and against the LRN's own output."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import layers
from alexnet_jax.lrn import lrn
from alexnet_jax.models import variant as alexnet
from experiments.lrn_activity import lrn_activity, lrn_ratios, summarize

K, N, ALPHA, BETA = 2.0, 5, 1e-4, 0.75  # Section 3.3


def _ratio_by_loop(a, groups=1):
    """alpha * sum of a_j^2 over the N channels around i (clipped) / k, one channel at a time."""
    a = np.asarray(a, np.float64)
    channels = a.shape[-1]
    width = channels // groups
    r = np.zeros_like(a)
    for i in range(channels):
        first = (i // width) * width  # the window stays in its own group's channels
        lo, hi = max(first, i - N // 2), min(first + width - 1, i + N // 2)
        total = np.zeros(a.shape[:-1])
        for j in range(lo, hi + 1):
            total += a[..., j] ** 2
        r[..., i] = ALPHA * total / K
    return r


def _stats(r):
    r = r.ravel()
    return [r.mean(), np.median(r), np.percentile(r, 90), np.percentile(r, 99), r.max()]


class _Norms(nn.Module):
    """Two of the project's LRN layers on strictly positive inputs (so b / a is defined)."""

    groups: int = 1

    @nn.compact
    def __call__(self, x, *, train):
        norm = layers.local_response_norm
        x = norm(1, train=train, axis_name=None, dtype=jnp.float32, groups=self.groups)(x)
        return norm(2, train=train, axis_name=None, dtype=jnp.float32)(3.0 * x + 1.0)


@pytest.mark.parametrize('groups', [1, 2])
def test_ratio_matches_a_loop_and_the_scale_matches_the_lrn_output(groups):
    # Scaled so that alpha * sum(a^2) / k is of order 1: the LRN is far from a no-op here.
    a = 60.0 * jax.random.uniform(jax.random.key(0), (2, 3, 3, 12)) + 1.0
    summary = lrn_activity(_Norms(groups=groups), {}, a)
    assert list(summary) == ['norm1', 'norm2']
    norm1 = summary['norm1']
    r = _ratio_by_loop(a, groups)
    assert 0.1 < r.mean() < 10
    expected = _stats(r)
    got = [norm1[k] for k in ('mean', 'median', 'p90', 'p99', 'max')]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(norm1['scale_mean'], np.mean((1.0 + r) ** -BETA), rtol=1e-5)
    # Second path: b / a = k^-beta (1 + r)^-beta, through the project's lrn itself.
    b = np.concatenate([lrn(s) for s in jnp.split(a, groups, axis=-1)], axis=-1)
    scale = np.asarray(b, np.float64) / np.asarray(a, np.float64) * K**BETA
    np.testing.assert_allclose(norm1['scale_mean'], scale.mean(), rtol=1e-5)
    # norm2 sees norm1's output, transformed: its own input, not the module's.
    a2 = 3.0 * np.asarray(b) + 1.0
    scale2 = np.asarray(lrn(jnp.asarray(a2)), np.float64) / a2 * K**BETA
    np.testing.assert_allclose(summary['norm2']['scale_mean'], scale2.mean(), rtol=1e-5)


def test_small_model_measures_the_relu_outputs_of_conv1_and_conv2():
    model = alexnet('small', num_classes=10)

    @jax.jit  # one compilation: initialise, measure, and run the model as it is
    def run(images):
        variables = model.init(jax.random.key(0), images, train=False)
        ratios = lrn_ratios(model, variables, images)
        logits, state = model.apply(variables, images, train=False, mutable=['intermediates'])
        plain = model.apply(variables, images, train=False)  # no measurement
        return ratios, logits, state['intermediates']['stages'][0], plain

    images = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    ratios, logits, stages, plain = run(images)
    summary = summarize(ratios)
    assert list(summary) == ['norm1', 'norm2']
    for name, stage in (('norm1', 'conv1'), ('norm2', 'conv2')):  # after their ReLU
        r = _ratio_by_loop(stages[stage])
        got = [summary[name][k] for k in ('mean', 'median', 'p90', 'p99', 'max')]
        np.testing.assert_allclose(got, _stats(r), rtol=1e-4, atol=1e-12)
    # Measuring leaves the model's outputs alone.
    np.testing.assert_array_equal(logits, plain)
