"""Local Response Normalization across channels (Section 3.3), written by hand.

    b_i = a_i / (k + alpha * sum_{j = max(0, i - n//2)}^{min(N - 1, i + n//2)} a_j^2) ** beta

with the paper's k = 2, n = 5, alpha = 1e-4, beta = 0.75, on NHWC arrays (channels last).

Why by hand: the forward is a handful of element-wise ops around a 5-tap channel sum, which XLA
fuses into one loop. Autodiff of it would keep the squared input, the window sum and the power
for the backward pass; the analytic gradient below needs only the input ``a`` and recomputes the
(cheap, fused) rest. With d_j = k + alpha * S_j(a^2) and the window symmetric (i in W(j) iff
j in W(i)):

    dL/da_i = g_i * d_i^-beta - 2 * alpha * beta * a_i * sum_{j in W(i)} g_j * a_j * d_j^(-beta - 1)

Other frameworks parameterise LRN differently; see :func:`from_tensorflow` and
:func:`from_pytorch` (Caffe is the same as PyTorch).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ['LRN', 'from_pytorch', 'from_tensorflow', 'lrn']


def _window_sum(x: jax.Array, size: int) -> jax.Array:
    """Sum over ``size`` neighbouring channels (last axis), windows clipped at the edges."""
    half = size // 2
    channels = x.shape[-1]
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(half, half)])
    # A few shifted slices add up in one fused loop; reduce_window is slower on XLA:CPU.
    total = padded[..., 0:channels]
    for offset in range(1, size):
        total = total + padded[..., offset : offset + channels]
    return total


def _inverse_power(d: jax.Array, beta: float) -> jax.Array:
    """d ** -beta, avoiding the general pow (exp and log) for the exponents people use."""
    if beta == 0.75:  # the paper's: d^-0.75 = d^-0.5 * d^-0.25
        r = jax.lax.rsqrt(d)
        return r * jnp.sqrt(r)
    if beta == 0.5:
        return jax.lax.rsqrt(d)
    if beta == 1.0:
        return 1.0 / d
    return jnp.power(d, -beta)


def _denominator(a: jax.Array, size: int, k: float, alpha: float) -> jax.Array:
    return k + alpha * _window_sum(a * a, size)


def _compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """float32 for float32 and narrower inputs; float64 stays float64 (for gradient checks)."""
    return jnp.promote_types(dtype, jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn(x: jax.Array, size: int, k: float, alpha: float, beta: float) -> jax.Array:
    a = x.astype(_compute_dtype(x.dtype))
    return (a * _inverse_power(_denominator(a, size, k, alpha), beta)).astype(x.dtype)


def _lrn_fwd(x, size, k, alpha, beta):
    # The only residual is the input: everything else is recomputed in the backward pass.
    return _lrn(x, size, k, alpha, beta), x


def _lrn_bwd(size, k, alpha, beta, x, g):
    a = x.astype(_compute_dtype(x.dtype))
    g = g.astype(a.dtype)
    d = _denominator(a, size, k, alpha)
    scale = _inverse_power(d, beta)  # d^-beta
    inner = _window_sum(g * a * scale / d, size)
    grad = g * scale - (2.0 * alpha * beta) * a * inner
    return (grad.astype(x.dtype),)


_lrn.defvjp(_lrn_fwd, _lrn_bwd)


@functools.partial(jax.jit, static_argnames=('size', 'k', 'alpha', 'beta'))
def lrn(
    x: jax.Array, size: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75
) -> jax.Array:
    """Local Response Normalization over the last (channel) axis, in the paper's parameters.

    Args:
      x: activations, channels last (NHWC or any rank).
      size: n, the number of channels in a window (odd), centred on the channel itself.
      k, alpha, beta: the paper's constants; ``alpha`` is NOT divided by ``size``.

    Computes in float32 for float32 and narrower inputs (the sum of squares outgrows bfloat16's
    precision long before its range), in float64 for float64, and returns the input dtype.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(
            f'LRN size must be a positive odd number of channels (a window centred on each '
            f'channel), got {size}.'
        )
    return _lrn(x, size, float(k), float(alpha), float(beta))


def from_tensorflow(
    depth_radius: int = 5, bias: float = 1.0, alpha: float = 1.0, beta: float = 0.5
) -> dict[str, float]:
    """Maps ``tf.nn.local_response_normalization``'s arguments (defaults included) to ours.

    TensorFlow sums over ``2 * depth_radius + 1`` channels and does not divide alpha, so the
    paper's layer is ``depth_radius=2, bias=2, alpha=1e-4, beta=0.75`` there.
    """
    return {'size': 2 * depth_radius + 1, 'k': bias, 'alpha': alpha, 'beta': beta}


def from_pytorch(
    size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> dict[str, float]:
    """Maps ``torch.nn.LocalResponseNorm`` (and Caffe's LRN layer) to ours.

    Both divide alpha by ``size``: the paper's alpha = 1e-4 is PyTorch's alpha = 5e-4 with
    size 5. (Caffe's bvlc_alexnet sets alpha = 1e-4, local_size = 5, which is a paper-alpha of
    2e-5 and k = 1: not the paper's layer.) PyTorch pads even sizes asymmetrically; only odd
    sizes have a centred window and map exactly.
    """
    if size % 2 == 0:
        raise ValueError(f'Only odd LRN sizes map exactly onto a centred window, got {size}.')
    return {'size': size, 'k': k, 'alpha': alpha / size, 'beta': beta}


class LRN(nn.Module):
    """:func:`lrn` as a Flax layer (no parameters).

    ``groups`` > 1 normalises each of that many equal slices of the channels on its own, as
    each of the paper's two GPUs normalised its own tower's maps (Section 3.2): a channel next
    to a slice boundary does not see the other slice's channels.
    """

    size: int = 5
    k: float = 2.0
    alpha: float = 1e-4
    beta: float = 0.75
    groups: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.groups == 1:
            return lrn(x, self.size, self.k, self.alpha, self.beta)
        slices = jnp.split(x, self.groups, axis=-1)
        normalised = [lrn(s, self.size, self.k, self.alpha, self.beta) for s in slices]
        return jnp.concatenate(normalised, axis=-1)
