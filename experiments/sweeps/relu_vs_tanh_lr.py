"""Section 3.1 / Figure 1, step 1: each activation's fastest constant learning rate.

    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/relu_vs_tanh_lr.py \
        --workdir /work/sweeps/relu_vs_tanh_lr
    python -m experiments.report /work/sweeps/relu_vs_tanh_lr

The paper chose "the learning rates for each network ... independently to make training as fast
as possible". Here: 6 constant rates x 2 activations, one seed (100, not one of the comparison's
seeds), 1.5 epochs, the clean training error evaluated every tenth of an epoch, in Figure 1's
setting (common.FIGURE_1: no dropout, weight decay, augmentation or normalisation). The rate of
each activation that reaches 15% clean training error in the fewest steps goes into
relu_vs_tanh.LEARNING_RATES. (The first four rates ran first; both activations were fastest at
0.01, the grid's lower end, so 0.005 and 0.003 were added. Chosen: relu 0.005, tanh 0.01.)
"""

from experiments.sweeps import common

BASE = common.FASHION_MNIST
grid = {'activation': ['relu', 'tanh'], 'learning_rate': [0.003, 0.005, 0.01, 0.02, 0.05, 0.1]}
seeds = [100]
budget = {**common.FIGURE_1, **common.epochs(1.5), 'eval_every_steps': common.EPOCH // 10}
report = {'target_train_error': [0.2, 0.15]}
