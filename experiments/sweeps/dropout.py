"""Section 4.2: dropout 0.5 in fc6 and fc7 vs none (the train-test gap).

    nice -n 19 python -m experiments.sweep --sweep experiments/sweeps/dropout.py \
        --workdir /tmp/sweeps/dropout
    python -m experiments.report /tmp/sweeps/dropout

Budget: `small` on Fashion-MNIST, 2 rates x 2 seeds, 250 steps of 64 images (about 0.27 epoch),
cosine learning rate from 0.02. About 100 s a run here (nice -n 19 on 2 shared CPU cores; up to 6
minutes under heavy load). The paper: without dropout the net "exhibits substantial overfitting";
dropout roughly doubles the iterations to converge. Overfitting needs many epochs, so this budget
shows the cost, not the benefit.
"""

from experiments.sweeps import common

BASE = common.FASHION_MNIST
grid = {'dropout_rate': [0.5, 0.0]}
seeds = common.SEEDS
budget = dict(common.BUDGET)
report = {'target_train_error': [0.35, 0.3]}
