"""Section 3.4 on ImageNet: overlapping vs non-overlapping pooling, the paper's net, 3 seeds.

The paper: top-1 error 0.4 pp and top-5 0.3 pp lower with overlapping pools (90 epochs).
"""

from experiments.sweeps import pooling

BASE = 'configs/imagenet.py'
grid = pooling.grid
seeds = [0, 1, 2]
budget = {'train_clean_examples': 10_000}
report = {'claims': pooling.report['claims']}
