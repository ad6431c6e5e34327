"""Section 3.2 on ImageNet: the two-tower net against the paper's one-GPU net, 3 seeds.

The paper: the towers' top-1 error 1.7 pp and top-5 1.2 pp lower than a net with half the kernels
in conv1-4 (conv5 and the fully connected layers at full size) trained on one GPU.
"""

from experiments.sweeps import towers

BASE = 'configs/imagenet.py'
grid = towers.grid[:2]  # the towers and the paper's baseline
seeds = [0, 1, 2]
budget = {'train_clean_examples': 10_000}
report = {'claims': towers.report['claims']}
