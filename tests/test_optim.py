"""The optimizer against Section 5's update equation written out by hand, and the schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import optim
from configs import default


def _config(**overrides):
    config = default.get_config()
    for key, value in overrides.items():
        config[key] = value
    return config


def _params():
    rng = np.random.default_rng(0)
    return {
        'conv1': {
            'kernel': rng.normal(size=(3, 3, 1, 4)).astype(np.float32),
            'bias': rng.normal(size=(4,)).astype(np.float32),
        },
        'bn1': {'scale': np.ones(4, np.float32), 'bias': np.zeros(4, np.float32)},
        'fc8': {
            'kernel': rng.normal(size=(4, 2)).astype(np.float32),
            'bias': rng.normal(size=(2,)).astype(np.float32),
        },
    }


@pytest.mark.parametrize('decay_biases', [False, True])
def test_chain_follows_the_papers_update_rule_across_a_learning_rate_change(decay_biases):
    config = _config(
        learning_rate=0.01,
        momentum=0.9,
        weight_decay=0.0005,
        decay_biases=decay_biases,
        lr_schedule='plateau',
    )
    params = jax.tree.map(jnp.asarray, _params())
    tx = optim.make_optimizer(config, params, steps_per_epoch=10)
    opt_state = tx.init(params)
    rng = np.random.default_rng(1)

    # The paper, by hand: v <- 0.9 v - 0.0005 eps w - eps g;  w <- w + v.
    w = jax.tree.map(np.asarray, params)
    v = jax.tree.map(np.zeros_like, w)
    decayed = {('conv1', 'kernel'), ('fc8', 'kernel')}
    if decay_biases:
        decayed |= {('conv1', 'bias'), ('fc8', 'bias')}
    eps = 0.01
    for step in range(6):
        if step == 3:  # the host divides the learning rate by 10 mid-run
            eps = 0.001
            opt_state = optim.set_learning_rate(opt_state, eps)
        grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), w)
        for layer in w:
            for name in w[layer]:
                wd = 0.0005 if (layer, name) in decayed else 0.0
                v[layer][name] = (
                    0.9 * v[layer][name] - wd * eps * w[layer][name] - eps * grads[layer][name]
                )
                w[layer][name] = w[layer][name] + v[layer][name]
        updates, opt_state = tx.update(jax.tree.map(jnp.asarray, grads), opt_state, params)
        params = optax.apply_updates(params, updates)
        for layer in w:
            for name in w[layer]:
                np.testing.assert_allclose(
                    params[layer][name],
                    w[layer][name],
                    rtol=1e-5,
                    atol=1e-7,
                    err_msg=f'step {step} {layer}/{name}',
                )
    assert float(optim.current_learning_rate(opt_state)) == pytest.approx(0.001)


def test_optax_sgd_differs_after_a_learning_rate_change():
    """Why the chain is written by hand: optax.sgd rescales the accumulated momentum too."""
    config = _config(weight_decay=0.0)
    params = {'fc8': {'kernel': jnp.ones((2,))}}
    ours = optim.make_optimizer(config, params, 10)
    theirs = optax.inject_hyperparams(optax.sgd)(learning_rate=0.01, momentum=0.9)
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    g = {'fc8': {'kernel': jnp.ones((2,))}}
    _, s_ours = ours.update(g, s_ours, params)
    _, s_theirs = theirs.update(g, s_theirs, params)
    s_ours = optim.set_learning_rate(s_ours, 0.001)
    s_theirs.hyperparams['learning_rate'] = jnp.asarray(0.001)
    u_ours, _ = ours.update(g, s_ours, params)
    u_theirs, _ = theirs.update(g, s_theirs, params)
    # Paper: v = 0.9 * (-0.01) - 0.001 = -0.01; optax.sgd: -0.001 * (0.9 + 1) = -0.0019.
    np.testing.assert_allclose(u_ours['fc8']['kernel'], -0.01, rtol=1e-6)
    np.testing.assert_allclose(u_theirs['fc8']['kernel'], -0.0019, rtol=1e-6)


def test_weight_decay_mask():
    mask = optim.decay_mask(_params(), decay_biases=False)
    assert mask['conv1'] == {'kernel': True, 'bias': False}
    assert mask['bn1'] == {'scale': False, 'bias': False}
    mask = optim.decay_mask(_params(), decay_biases=True)
    assert mask['fc8'] == {'kernel': True, 'bias': True}
    assert mask['bn1'] == {'scale': False, 'bias': False}


@pytest.mark.parametrize(
    ('errors', 'patience', 'max_reductions', 'divide_at'),
    [
        # Divides after each evaluation that fails to beat the best so far.
        ([0.5, 0.4, 0.41, 0.39, 0.39, 0.38], 1, 3, [2, 4]),
        # Patience 2: two evaluations in a row without improvement.
        ([0.5, 0.5, 0.5, 0.5, 0.5, 0.4, 0.45], 2, 3, [2, 4]),
        # At most max_reductions divisions ("reduced three times prior to termination").
        ([0.5, 0.6, 0.6, 0.6, 0.6, 0.6], 1, 3, [1, 2, 3]),
    ],
)
def test_plateau_divides_at_the_right_evaluations(errors, patience, max_reductions, divide_at):
    config = _config(plateau_patience=patience, plateau_max_reductions=max_reductions)
    plateau = optim.Plateau.initial()
    divided = []
    for i, error in enumerate(errors):
        plateau, divide = optim.update_plateau(plateau, error, config)
        if divide:
            divided.append(i)
    assert divided == divide_at
    assert int(plateau.reductions) == len(divide_at)
    assert float(plateau.best_error) == pytest.approx(min(errors))


def test_step_and_cosine_schedules_match_their_formulas():
    config = _config(
        lr_schedule='step', learning_rate=0.01, plateau_factor=0.1, step_every_epochs=2.0
    )
    schedule = optim.lr_schedule(config, steps_per_epoch=5)
    for step in (0, 9, 10, 19, 20, 35):
        assert float(schedule(step)) == pytest.approx(0.01 * 0.1 ** (step // 10))
    config = _config(
        lr_schedule='cosine',
        learning_rate=0.1,
        warmup_epochs=1.0,
        num_epochs=5.0,
        num_train_steps=-1,
    )
    schedule = optim.lr_schedule(config, steps_per_epoch=10)
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(5)) == pytest.approx(0.05)
    assert float(schedule(10)) == pytest.approx(0.1)
    assert float(schedule(30)) == pytest.approx(0.05 * (1 + np.cos(np.pi * 20 / 40)))
    assert optim.lr_schedule(_config(lr_schedule='constant'), 10) == 0.01
