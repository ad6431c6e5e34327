"""The pure step functions of Section 5: the train state, one SGD step, one evaluation step,
and the inference both evaluation and ``predict`` use, ``pmap``-ed over the local devices.

Each is a plain function of (state, batch[, rng]) returning new values; nothing here reads
files or keeps state. The driver (``train.py``), the evaluation loop (``evaluation.py``) and the
two-tower placement (``towers.py``) build on them; ``predict`` and the figures infer through
:func:`predict_probs`.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from alexnet_jax import device_preprocessing, optim, parallel, specs, xla_cpu
from alexnet_jax.data_types import Stats

AXIS = parallel.AXIS


class TrainState(train_state.TrainState):
    batch_stats: Any  # BatchNorm running statistics (the `bn` variant); {} otherwise
    plateau: optim.Plateau  # the divide-on-plateau rule's counters, checkpointed with the rest


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
    return jnp.bfloat16 if config.half_precision else jnp.float32


def create_train_state(
    config: ml_collections.ConfigDict, model: nn.Module, image_shape: tuple[int, ...], steps: int
) -> TrainState:
    """Fresh parameters (Section 5's initialisation unless the variant says otherwise)."""
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(config.seed), dummy
    )
    params = variables['params']
    return TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=optim.make_optimizer(config, params, steps),
        batch_stats=variables.get('batch_stats', {}),
        plateau=optim.Plateau.initial(),
    )


def _classification_sums(logits_or_probs: jax.Array, labels: jax.Array, mask: jax.Array) -> dict:
    """Top-1 (and, with more than five classes, top-5) error counts over the masked-in examples.

    With five classes or fewer every label is in the top five: no top-5 error is reported.
    """
    mask = mask.astype(jnp.float32)
    top1 = jnp.argmax(logits_or_probs, axis=-1) == labels
    sums = {'top1_errors': jnp.sum((1.0 - top1) * mask), 'count': jnp.sum(mask)}
    if logits_or_probs.shape[-1] > 5:
        top5 = jax.lax.top_k(logits_or_probs, 5)[1]
        hit5 = (top5 == labels[:, None]).any(axis=1)
        sums['top5_errors'] = jnp.sum((1.0 - hit5) * mask)
    return sums


def _after_all(grads: Any) -> Any:
    """``grads`` unchanged, each now depending on all of them (as after an all-reduce).

    The donated parameters are updated in place only if XLA can see that every read of them
    (forward and backward) comes first. Without an all-reduce, fc6's update depends only on
    fc6's gradient, which is ready while conv1-5's backward still reads fc6, so XLA copies
    every parameter first (CPU, `owt`: ~20 ms a step). Adding zero times one element of each
    gradient orders the updates after the whole backward pass; the add fuses into the update.
    A non-finite gradient makes every gradient NaN, which the step's loss reports anyway.
    """
    leaves = jax.tree.leaves(grads)
    zero = 0.0 * sum(leaf.reshape(-1)[0].astype(jnp.float32) for leaf in leaves)
    return jax.tree.map(lambda g: g + zero.astype(g.dtype), grads)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    config: ml_collections.ConfigDict,
    stats: Stats,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on this device's shard; gradients and metrics averaged over devices."""
    # Different dropout masks and colour noise on every step and every device.
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(AXIS))
    dropout_rng, noise_rng = jax.random.split(rng)
    images = device_preprocessing.device_preprocess(
        batch, noise_rng, stats, config, train=True, dtype=compute_dtype(config)
    )
    labels = batch['label']
    has_bn = bool(state.batch_stats)

    def loss_fn(params):
        variables = {'params': params, 'batch_stats': state.batch_stats}
        logits, updates = state.apply_fn(
            variables,
            images,
            train=True,
            rngs={'dropout': dropout_rng},
            mutable=['batch_stats'] if has_bn else [],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # Every device holds the same number of examples, so the mean of the per-device means is
    # the gradient of the global batch's mean loss. On one device XLA would still copy every
    # gradient through the all-reduce (~50 ms a step for 61M parameters on CPU).
    one_device = jax.lax.axis_size(AXIS) == 1
    grads = _after_all(grads) if one_device else jax.lax.pmean(grads, AXIS)
    new_state = state.apply_gradients(grads=grads)
    if has_bn:  # BatchNorm already averaged its statistics over AXIS (bn_axis_name)
        new_state = new_state.replace(batch_stats=updates['batch_stats'])
    sums = _classification_sums(logits, labels, jnp.ones_like(labels))
    count = jax.lax.psum(sums.pop('count'), AXIS)
    step_metrics = {
        'loss': jax.lax.pmean(loss, AXIS),
        **{k.replace('_errors', '_error'): jax.lax.psum(v, AXIS) / count for k, v in sums.items()},
        'learning_rate': optim.current_learning_rate(state.opt_state),
        # Checked by the loop before anything is saved (no host sync per step). Parameters that
        # turn non-finite show in the next step's loss; each checkpoint's are checked on the
        # host as it is written (a pass over 61M parameters costs ~10% of a CPU step).
        'finite': jnp.isfinite(loss),
    }
    return new_state, step_metrics


def predict_probs(
    apply_fn: Callable, variables: Any, images: jax.Array, *, sown: bool = False
) -> Any:
    """Class probabilities in eval mode: ``[N, classes]`` from images ``[N, H, W, C]``, or from
    crops ``[N, crops, H, W, C]`` with the softmax averaged over each image's crops (Section 4.1:
    "averaging the predictions made by the network's softmax layer on the ten patches").

    The one inference path: the eval step, ``predict`` and the figures all call it. With
    ``sown=True`` it returns ``(probs, intermediates)``: also what the model sows on the way
    (its named activations, e.g. fc7 for Figure 4), each with the images' leading axes.
    """
    lead = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:])
    if sown:
        logits, collections = apply_fn(variables, flat, train=False, mutable=['intermediates'])
    else:
        logits = apply_fn(variables, flat, train=False)
    probs = jax.nn.softmax(logits).reshape(*lead, logits.shape[-1])
    probs = probs.mean(axis=1) if images.ndim == 5 else probs
    if not sown:
        return probs
    per_image = jax.tree.map(lambda x: x.reshape(*lead, *x.shape[1:]), collections['intermediates'])
    return probs, per_image


def eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    config: ml_collections.ConfigDict,
    stats: Stats,
) -> dict[str, jax.Array]:
    """Summed loss and error counts over this batch, all devices; padding masked out.

    Ten-crop batches (``[B, 10, H, W, C]``) average the softmax over the crops (Section 4.1).
    """
    images = device_preprocessing.device_preprocess(
        batch, None, stats, config, train=False, dtype=compute_dtype(config)
    )
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    probs = predict_probs(state.apply_fn, variables, images)
    labels, mask = batch['label'], batch['mask']
    true_prob = jnp.take_along_axis(probs, labels[:, None], axis=1)[:, 0]
    sums = _classification_sums(probs, labels, mask)
    sums['loss'] = jnp.sum(-jnp.log(jnp.maximum(true_prob, 1e-12)) * mask)
    return jax.lax.psum(sums, AXIS)


def pmap_steps(
    config: ml_collections.ConfigDict,
    stats: Stats,
    devices: list[jax.Device] | None = None,
) -> tuple[Callable, Callable]:
    """The two steps, ``pmap``-ed over local devices with the state unstacked (see parallel)."""
    p_train = jax.pmap(
        functools.partial(train_step, config=config, stats=stats),
        axis_name=AXIS,
        in_axes=(None, 0, None),
        out_axes=(None, None),
        donate_argnums=(0,),
        devices=devices,
    )
    p_eval = jax.pmap(
        functools.partial(eval_step, config=config, stats=stats),
        axis_name=AXIS,
        in_axes=(None, 0),
        out_axes=None,
        devices=devices,
    )
    return p_train, p_eval


def compile_ahead(train_step: Callable, *args: Any) -> None:
    """On CPU, compiles ``train_step`` for ``args`` before its first call, then hands the host
    memory that building the state and compiling freed back to the kernel.

    The first call then finds the step compiled. Kept host memory (see
    :func:`alexnet_jax.xla_cpu.keep_host_memory`) would otherwise keep the pages that
    initialisation and the compiler freed, scattered among live blocks where the step's one
    scratch block does not fit, and the heap would grow by that block on top of them. At batch
    32 with glibc's tcache off, peak RSS 959 -> 878 MiB (`owt`), 1158 -> 1067 (`paper`), 1052
    -> 959 (`single_tower`) (experiments/RESULTS.md, issue 19). A step without ``lower`` (not a
    ``jax.jit`` or ``jax.pmap``) and other backends are left to compile on their first call.
    """
    lower = getattr(train_step, 'lower', None)
    if lower is None or jax.default_backend() != 'cpu':
        return
    lower(*args).compile()
    xla_cpu.release_free_host_memory()


class Placement(NamedTuple):
    """How the state and batches are laid out on the devices, and the steps that fit that."""

    data_devices: int  # local data-parallel width: the pipeline's leading batch axis
    place_state: Callable[[Any], Any]
    place_batch: Callable[[Any], Any]
    train_step: Callable  # (state, batch, rng) -> (state, metrics)
    eval_step: Callable  # (state, batch) -> summed metrics


def data_parallel(config: ml_collections.ConfigDict, stats: Stats) -> Placement:
    """Every local device holds the whole model and a slice of the batch (the default)."""
    specs.check_devices(config, jax.device_count(), jax.local_device_count())
    p_train, p_eval = pmap_steps(config, stats)
    return Placement(jax.local_device_count(), parallel.replicate, parallel.shard, p_train, p_eval)
