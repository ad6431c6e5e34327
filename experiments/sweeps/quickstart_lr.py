"""The quick start's learning rate, chosen on the validation split (never the test split).

    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/quickstart_lr.py \
        --workdir /work/sweeps/quickstart_lr
    python -m experiments.report /work/sweeps/quickstart_lr

configs/fashion_mnist.py as it is (6 epochs, cosine), 3 peak learning rates x 2 seeds (100 and
101: not the claim sweeps' seeds). The rate with the lowest mean final validation error is the
quick start's; the test error of these runs is printed by the report but chooses nothing.
"""

from experiments.sweeps import common

BASE = common.FASHION_MNIST
grid = {'learning_rate': [0.02, 0.05, 0.1]}
seeds = [100, 101]
budget = common.epochs(6)
report = {'target_train_error': [0.15, 0.1]}
