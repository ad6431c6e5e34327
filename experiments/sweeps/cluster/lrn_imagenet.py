"""Section 3.3 on ImageNet: the paper's net with LRN, without, and with BatchNorm, 3 seeds.

The paper's inputs (mean-subtracted 0-255 pixels) and initialisation; LRN's top-1 gain was 1.4 pp.
"""

from experiments.sweeps import lrn_vs_none_vs_bn

BASE = 'configs/imagenet.py'
grid = {'norm': ['lrn', 'none', 'bn']}
seeds = [0, 1, 2]
budget = {'train_clean_examples': 10_000}
report = {'claims': lrn_vs_none_vs_bn.report['claims']}
