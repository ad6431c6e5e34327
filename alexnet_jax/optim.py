"""The paper's optimizer (Section 5) as an optax chain, and the learning-rate schedules.

Section 5's update, with learning rate eps and weight decay 0.0005:

    v <- 0.9 v - 0.0005 eps w - eps dL/dw
    w <- w + v

The chain below is that equation read left to right: ``add_decayed_weights`` forms
``dL/dw + 0.0005 w``, ``scale_by_learning_rate`` multiplies by ``-eps``, ``trace`` keeps
``v <- 0.9 v + that`` and returns ``v`` as the update that optax adds to ``w``. The order matters
when eps changes: optax's own ``sgd`` traces the gradient *before* scaling, so a learning-rate
drop there also shrinks the momentum already accumulated; in the paper (and here) it does not.

The learning rate is an injected hyper-parameter, so the host can change it after an evaluation
(the paper's divide-by-10) without recompiling the step.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def paper_sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 0.0005,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay exactly as Section 5 writes it."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate),
        optax.trace(decay=momentum, nesterov=False),
    )


def decay_mask(params: Any, decay_biases: bool) -> Any:
    """True for the leaves weight decay applies to: kernels, and biases if asked.

    Caffe's reference AlexNet does not decay biases (``decay_mult: 0``); the paper's rule is
    written for "w". BatchNorm's scale and offset are never decayed.
    """

    def wanted(path: tuple[Any, ...], _: Any) -> bool:
        name = path[-1].key
        return name == 'kernel' or (decay_biases and name == 'bias' and 'bn' not in path[-2].key)

    return jax.tree_util.tree_map_with_path(wanted, params)


def steps_per_epoch(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
    return max(1, num_train_examples // config.batch_size)


def lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.ScalarOrSchedule:
    """A schedule of the step for ``step``/``cosine``/``constant``; a float for ``plateau``.

    For ``plateau`` the step only ever sees the current value: the host changes it (see
    :func:`update_plateau`) after each evaluation.
    """
    base = config.learning_rate
    if config.lr_schedule in ('plateau', 'constant'):
        return base
    total = total_steps(config, steps_per_epoch)
    if config.lr_schedule == 'step':  # Caffe's: x factor every step_every_epochs
        every = max(1, round(config.step_every_epochs * steps_per_epoch))
        return optax.exponential_decay(base, every, config.plateau_factor, staircase=True)
    warmup = round(config.warmup_epochs * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(0.0, base, warmup, max(total, warmup + 1))


def make_optimizer(
    config: ml_collections.ConfigDict, params: Any, steps_per_epoch: int
) -> optax.GradientTransformation:
    from alexnet_jax import finetune

    frozen = finetune.freeze_mask(config, params)  # None unless config.freeze names layers

    def sgd(learning_rate, momentum, weight_decay, weight_decay_mask):
        tx = paper_sgd(learning_rate, momentum, weight_decay, weight_decay_mask)
        return finetune.keep_frozen(tx, frozen)

    return optax.inject_hyperparams(
        sgd, static_args=('momentum', 'weight_decay', 'weight_decay_mask')
    )(
        learning_rate=lr_schedule(config, steps_per_epoch),
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        weight_decay_mask=decay_mask(params, config.decay_biases),
    )


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    if config.num_train_steps > 0:
        return config.num_train_steps
    return max(1, round(config.num_epochs * steps_per_epoch))


def current_learning_rate(opt_state: Any) -> jax.Array:
    return opt_state.hyperparams['learning_rate']


def set_learning_rate(opt_state: Any, value: float) -> Any:
    """The same optimizer state with the injected learning rate replaced (same shape/dtype)."""
    old = opt_state.hyperparams['learning_rate']
    hyperparams = dict(opt_state.hyperparams, learning_rate=jnp.asarray(value, old.dtype))
    return opt_state._replace(hyperparams=hyperparams)


class Plateau(NamedTuple):
    """State of the divide-on-plateau rule; arrays so it checkpoints with the train state."""

    best_error: jax.Array  # lowest validation error so far
    bad_evals: jax.Array  # evaluations since it last improved
    reductions: jax.Array  # times the learning rate was divided

    @classmethod
    def initial(cls) -> 'Plateau':
        return cls(np.float32(np.inf), np.int32(0), np.int32(0))


def update_plateau(
    plateau: Plateau, error: float, config: ml_collections.ConfigDict
) -> tuple[Plateau, bool]:
    """Section 5: divide the learning rate by 10 "when the validation error rate stopped improving".

    Returns the new state and whether to divide now. Runs on the host after an evaluation.
    At most ``plateau_max_reductions`` divisions (the paper made three).
    """
    best, bad, reductions = (
        float(plateau.best_error),
        int(plateau.bad_evals),
        int(plateau.reductions),
    )
    if error < best:
        return Plateau(np.float32(error), np.int32(0), np.int32(reductions)), False
    bad += 1
    divide = bad >= config.plateau_patience and reductions < config.plateau_max_reductions
    if divide:
        bad, reductions = 0, reductions + 1
    return Plateau(np.float32(best), np.int32(bad), np.int32(reductions)), divide
