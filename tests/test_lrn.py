"""alexnet_jax.lrn against independent references: TensorFlow, PyTorch, numpy loops, autodiff."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.lrn import LRN, from_pytorch, from_tensorflow, lrn

PAPER = {'size': 5, 'k': 2.0, 'alpha': 1e-4, 'beta': 0.75}

# (depth_radius, bias, alpha, beta) in TensorFlow's terms: the paper's layer, a 3-channel window
# with beta = 0.5 (an rsqrt fast path), a 7-channel window with a beta that takes the general
# pow, and beta = 1 (the reciprocal fast path).
TF_PARAMS = [
    pytest.param(2, 2.0, 1e-4, 0.75, id='paper'),
    pytest.param(1, 1.0, 1e-3, 0.5, id='radius1-beta0.5'),
    pytest.param(3, 1.5, 2e-3, 0.6, id='radius3-beta0.6'),
    pytest.param(2, 0.5, 1e-2, 1.0, id='radius2-beta1'),
]


def _activations(shape, size, k, alpha, seed=0, dtype=np.float32):
    """Post-ReLU-like inputs scaled so that alpha * window sum is comparable to k.

    Too small an input makes the denominator ~k everywhere, and a wrong window would pass.
    """
    rng = np.random.default_rng(seed)
    scale = np.sqrt(k / (alpha * size))
    x = np.abs(rng.normal(0.0, scale, shape))
    x[rng.random(shape) < 0.3] = 0.0  # ReLU zeros
    x[..., 0] *= 3.0  # the edge channels matter: make their windows unlike the others
    return x.astype(dtype)


def _numpy_lrn(a, size, k, alpha, beta):
    """The paper's formula, channel by channel, in float64: windows clipped at the edges."""
    a = np.asarray(a, np.float64)
    channels = a.shape[-1]
    out = np.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - size // 2), min(channels - 1, i + size // 2)
        total = np.zeros(a.shape[:-1])
        for j in range(lo, hi + 1):
            total += a[..., j] ** 2
        out[..., i] = a[..., i] / (k + alpha * total) ** beta
    return out


def _numpy_torch_formula(a, size, alpha, beta, k):
    """PyTorch's documented LocalResponseNorm, in float64 and channels last.

    b_c = a_c / (k + alpha / n * sum_{c' = max(0, c - n/2)}^{min(N - 1, c + n/2)} a_{c'}^2)^beta
    """
    a = np.asarray(a, np.float64)
    channels = a.shape[-1]
    out = np.empty_like(a)
    for c in range(channels):
        window = a[..., max(0, c - size // 2) : min(channels, c + size // 2 + 1)]
        out[..., c] = a[..., c] / (k + alpha / size * np.sum(window**2, axis=-1)) ** beta
    return out


def _loss_and_grad(params, x, cotangent):
    return _jitted_loss_and_grad(x, cotangent, **params)


@functools.partial(jax.jit, static_argnames=('size', 'k', 'alpha', 'beta'))
def _jitted_loss_and_grad(x, cotangent, size, k, alpha, beta):
    loss = lambda x: jnp.sum(lrn(x, size=size, k=k, alpha=alpha, beta=beta) * cotangent)
    return jax.value_and_grad(loss)(x)


def _rel_err(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


@pytest.fixture(scope='module')
def tf():
    tf = pytest.importorskip('tensorflow')
    tf.config.set_visible_devices([], 'GPU')
    return tf


@pytest.mark.parametrize(('depth_radius', 'bias', 'alpha', 'beta'), TF_PARAMS)
def test_values_and_gradients_match_tensorflow(tf, depth_radius, bias, alpha, beta):
    params = from_tensorflow(depth_radius=depth_radius, bias=bias, alpha=alpha, beta=beta)
    assert params == {'size': 2 * depth_radius + 1, 'k': bias, 'alpha': alpha, 'beta': beta}
    x = _activations((2, 3, 4, 13), params['size'], bias, alpha)
    cotangent = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out_tf = tf.nn.local_response_normalization(
            xt, depth_radius=depth_radius, bias=bias, alpha=alpha, beta=beta
        )
        loss_tf = tf.reduce_sum(out_tf * cotangent)
    grad_tf = tape.gradient(loss_tf, xt)

    out = lrn(jnp.asarray(x), **params)
    _, grad = _loss_and_grad(params, jnp.asarray(x), cotangent)
    np.testing.assert_allclose(out, out_tf.numpy(), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(grad, grad_tf.numpy(), rtol=1e-4, atol=1e-5)
    # The normalisation is doing something at this scale: not just x / k^beta.
    assert _rel_err(out, x / bias**beta) > 0.1


def test_tensorflow_defaults_map_to_its_own_defaults(tf):
    x = _activations((1, 2, 2, 16), 11, 1.0, 1.0, seed=3) * 0.1
    np.testing.assert_allclose(
        lrn(jnp.asarray(x), **from_tensorflow()),
        tf.nn.local_response_normalization(tf.constant(x)).numpy(),
        rtol=2e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ('size', 'k', 'alpha', 'beta'),
    [(5, 2.0, 1e-4, 0.75), (3, 1.0, 1e-3, 0.5), (7, 1.5, 2e-3, 0.6), (1, 2.0, 1e-2, 1.0)],
)
@pytest.mark.parametrize('channels', [1, 3, 10])
def test_matches_numpy_loop(size, k, alpha, beta, channels):
    x = _activations((2, 3, 3, channels), size, k, alpha, seed=channels)
    np.testing.assert_allclose(
        lrn(jnp.asarray(x), size=size, k=k, alpha=alpha, beta=beta),
        _numpy_lrn(x, size, k, alpha, beta),
        rtol=2e-6,
        atol=1e-7,
    )


def test_defaults_are_the_papers_layer():
    x = _activations((1, 4, 4, 12), 5, 2.0, 1e-4)
    np.testing.assert_allclose(lrn(jnp.asarray(x)), _numpy_lrn(x, **PAPER), rtol=2e-6)
    assert LRN().size == 5 and LRN().k == 2.0 and LRN().alpha == 1e-4 and LRN().beta == 0.75


def test_any_rank_channels_last():
    x = _activations((6, 9), 5, 2.0, 1e-4)
    np.testing.assert_allclose(lrn(jnp.asarray(x)), _numpy_lrn(x, **PAPER), rtol=2e-6)


@pytest.mark.parametrize('beta', [0.75, 0.5, 1.0, 0.6])
def test_custom_vjp_matches_autodiff_of_the_formula(beta):
    size, k, alpha = 5, 2.0, 1e-4
    x = jnp.asarray(_activations((2, 4, 4, 11), size, k, alpha, seed=5))
    cotangent = jax.random.normal(jax.random.key(0), x.shape)

    def plain(x):
        squares = jnp.pad(x * x, [(0, 0)] * 3 + [(2, 2)])
        window = sum(squares[..., j : j + x.shape[-1]] for j in range(size))
        return x / (k + alpha * window) ** beta

    grad_plain = jax.jit(jax.grad(lambda x: jnp.sum(plain(x) * cotangent)))(x)
    _, grad = _loss_and_grad({'size': size, 'k': k, 'alpha': alpha, 'beta': beta}, x, cotangent)
    np.testing.assert_allclose(grad, grad_plain, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(('size', 'beta'), [(5, 0.75), (3, 0.6), (1, 0.5)])
def test_gradient_matches_central_finite_differences_in_float64(size, beta):
    k, alpha = 2.0, 1e-3
    with jax.enable_x64(True):
        x = jnp.asarray(_activations((1, 2, 2, 7), size, k, alpha, seed=7, dtype=np.float64))
        assert x.dtype == jnp.float64
        cotangent = jax.random.normal(jax.random.key(1), x.shape, jnp.float64)
        loss = jax.jit(
            lambda x: jnp.sum(lrn(x, size=size, k=k, alpha=alpha, beta=beta) * cotangent)
        )
        grad = jax.grad(loss)(x)
        assert grad.dtype == jnp.float64

        eps = 1e-4  # x ~ 20: truncation ~eps^2 * 1e-3, rounding ~1e-14 / eps
        basis = jnp.eye(x.size, dtype=jnp.float64).reshape((x.size, *x.shape))
        numeric = jax.vmap(lambda e: (loss(x + eps * e) - loss(x - eps * e)) / (2 * eps))(basis)
        np.testing.assert_allclose(grad.reshape(-1), numeric, rtol=1e-6, atol=1e-9)


def test_float32_gradient_matches_finite_differences_along_random_directions():
    x = jnp.asarray(_activations((2, 3, 3, 9), 5, 2.0, 1e-4, seed=11))
    cotangent = jax.random.normal(jax.random.key(2), x.shape)
    loss = jax.jit(lambda x: jnp.sum(lrn(x) * cotangent))
    grad = jax.grad(loss)(x)
    for i in range(4):
        v = jax.random.normal(jax.random.key(10 + i), x.shape)
        eps = 0.5  # x ~ 60: truncation ~(eps / 60)^2, float32 rounding ~1e-6 * |loss| / eps
        numeric = (loss(x + eps * v) - loss(x - eps * v)) / (2 * eps)
        np.testing.assert_allclose(jnp.vdot(grad, v), numeric, rtol=2e-3)


@pytest.mark.parametrize('size', [5, 3])
def test_from_pytorch_matches_pytorchs_documented_formula(size):
    alpha, beta, k = 5e-4, 0.75, 2.0
    params = from_pytorch(size, alpha=alpha, beta=beta, k=k)
    assert params['alpha'] == pytest.approx(alpha / size)
    x = _activations((2, 3, 3, 10), size, k, alpha / size, seed=size)
    np.testing.assert_allclose(
        lrn(jnp.asarray(x), **params), _numpy_torch_formula(x, size, alpha, beta, k), rtol=2e-6
    )


def test_pytorch_alpha_of_5e_4_is_the_papers_alpha():
    x = jnp.asarray(_activations((1, 3, 3, 8), 5, 2.0, 1e-4))
    np.testing.assert_array_equal(lrn(x, **from_pytorch(5, alpha=5e-4, k=2.0)), lrn(x))


@pytest.mark.parametrize(
    ('size', 'alpha', 'beta', 'k'), [(5, 5e-4, 0.75, 2.0), (3, 1e-3, 0.6, 1.0)]
)
def test_from_pytorch_matches_torch_local_response_norm(size, alpha, beta, k):
    torch = pytest.importorskip('torch')
    x = _activations((2, 3, 4, 9), size, k, alpha / size, seed=4)
    cotangent = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    # PyTorch normalises over dim 1: move channels there and back.
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
    layer = torch.nn.LocalResponseNorm(size, alpha=alpha, beta=beta, k=k)
    out_t = layer(xt)
    (
        out_t * torch.from_numpy(np.ascontiguousarray(cotangent.transpose(0, 3, 1, 2)))
    ).sum().backward()

    params = from_pytorch(size, alpha=alpha, beta=beta, k=k)
    _, grad = _loss_and_grad(params, jnp.asarray(x), cotangent)
    out = lrn(jnp.asarray(x), **params)
    np.testing.assert_allclose(
        out, out_t.detach().numpy().transpose(0, 2, 3, 1), rtol=2e-5, atol=1e-6
    )
    np.testing.assert_allclose(grad, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('size', [0, 2, 4, -3])
def test_even_or_nonpositive_size_is_rejected(size):
    x = jnp.ones((1, 2, 2, 8))
    with pytest.raises(ValueError, match=rf'odd.*got {size}'):
        lrn(x, size=size)
    with pytest.raises(ValueError, match=rf'odd.*got {size}'):
        LRN(size=size).apply({}, x)


def test_from_pytorch_rejects_even_sizes():
    with pytest.raises(ValueError, match='odd.*got 4'):
        from_pytorch(4)


def test_bfloat16_close_to_float32_and_dtype_preserved():
    x32 = jnp.asarray(_activations((2, 4, 4, 16), 5, 2.0, 1e-4, seed=8))
    x16 = x32.astype(jnp.bfloat16)
    cotangent = jax.random.normal(jax.random.key(3), x32.shape)
    out16 = lrn(x16)
    assert out16.dtype == jnp.bfloat16
    _, grad16 = _loss_and_grad(PAPER, x16, cotangent.astype(jnp.bfloat16))
    assert grad16.dtype == jnp.bfloat16
    # Compare with float32 on the same (bf16-rounded) input: only the output rounding and the
    # cotangent's rounding differ. bf16 has 8 significant bits: relative error <= 2^-8 each.
    ref = _numpy_lrn(np.asarray(x16, np.float32), **PAPER)
    np.testing.assert_allclose(np.asarray(out16, np.float32), ref, rtol=2**-7, atol=1e-6)
    _, grad32 = _loss_and_grad(PAPER, x16.astype(jnp.float32), cotangent)
    assert _rel_err(grad16, grad32) < 2e-2
    # And bf16 is really bf16: the result is not bit-equal to float32.
    assert not np.array_equal(np.asarray(out16, np.float32), np.asarray(lrn(x32)))


@pytest.mark.parametrize('magnitude', [1e4, 1e5, 1e6])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_large_activations_stay_finite_and_accurate(magnitude, dtype):
    x = np.abs(np.random.default_rng(9).normal(0.0, magnitude, (2, 3, 3, 12))).astype(np.float32)
    x = jnp.asarray(x).astype(dtype)
    cotangent = jax.random.normal(jax.random.key(4), x.shape).astype(dtype)
    out = lrn(x)
    _, grad = _loss_and_grad(PAPER, x, cotangent)
    assert bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
    assert bool(jnp.all(jnp.isfinite(grad.astype(jnp.float32))))
    tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
    x64 = np.asarray(x.astype(jnp.float32), np.float64)
    assert _rel_err(out, _numpy_lrn(x64, **PAPER)) < tolerance
    # d(b_i)/d(a_i) is tiny but well defined at this scale: the gradient is not all zeros.
    assert float(jnp.max(jnp.abs(grad.astype(jnp.float32)))) > 0.0


def test_flax_layer_equals_function_and_has_no_parameters():
    x = jnp.asarray(_activations((2, 3, 3, 10), 3, 1.0, 1e-3, seed=6))
    layer = LRN(size=3, k=1.0, alpha=1e-3, beta=0.6)
    variables = layer.init(jax.random.key(0), x)
    assert jax.tree_util.tree_leaves(variables) == []
    np.testing.assert_array_equal(
        layer.apply(variables, x), lrn(x, size=3, k=1.0, alpha=1e-3, beta=0.6)
    )
    np.testing.assert_array_equal(LRN().apply({}, x), lrn(x))
    grad_layer = jax.grad(lambda x: jnp.sum(layer.apply({}, x) ** 2))(x)
    grad_fn = jax.grad(lambda x: jnp.sum(lrn(x, size=3, k=1.0, alpha=1e-3, beta=0.6) ** 2))(x)
    np.testing.assert_array_equal(grad_layer, grad_fn)


def test_works_under_jit_and_vmap():
    x = jnp.asarray(_activations((3, 2, 2, 8), 5, 2.0, 1e-4, seed=12))
    np.testing.assert_allclose(jax.jit(lrn)(x), lrn(x), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(lrn)(x), lrn(x), rtol=1e-6)


def test_groups_normalise_each_towers_channels_on_their_own():
    """LRN(groups=2): the paper's formula on each half of the channels separately (Section 3.2),
    which differs from the whole-width layer only at the channels next to the boundary."""
    x = _activations((2, 3, 3, 12), 5, 2.0, 1e-4, seed=13)
    x[..., 5:7] *= 2.0  # the boundary's neighbours: make them matter
    expected = np.concatenate([_numpy_lrn(h, **PAPER) for h in np.split(x, 2, -1)], -1)
    grouped = LRN(groups=2).apply({}, jnp.asarray(x))
    np.testing.assert_allclose(grouped, expected, rtol=2e-6, atol=1e-7)
    whole = _numpy_lrn(x, **PAPER)
    near = [4, 5, 6, 7]  # within size // 2 = 2 channels of the boundary at 6
    far = [c for c in range(12) if c not in near]
    np.testing.assert_allclose(grouped[..., far], whole[..., far], rtol=2e-6, atol=1e-7)
    assert not np.allclose(grouped[..., near], whole[..., near], rtol=1e-5)
