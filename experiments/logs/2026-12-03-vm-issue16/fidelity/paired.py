"""Paired (by seed) difference in test top-1 error, prepared - tf.data, with a 95% t interval.

python experiments/logs/2026-12-03-vm-issue16/fidelity/paired.py
"""

import json
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
T_975 = {2: 4.303, 3: 3.182, 4: 2.776}  # Student's t, two-sided 95%, by degrees of freedom


def error(arm: str, seed: int) -> float:
    with open(os.path.join(HERE, f'dataset={arm}__seed={seed}', 'results.json')) as f:
        return 100 * json.load(f)['eval_top1_error']


seeds = [0, 1, 2]
tfdata = [error('fashion_mnist', s) for s in seeds]
prepared = [error('prepared', s) for s in seeds]
diffs = [p - t for p, t in zip(prepared, tfdata, strict=True)]
mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
half = T_975[len(diffs) - 1] * sd / len(diffs) ** 0.5
print('seed  tf.data %  prepared %  difference pp')
for s, t, p, d in zip(seeds, tfdata, prepared, diffs, strict=True):
    print(f'{s:4d}  {t:9.2f}  {p:10.2f}  {d:+13.2f}')
print(f'mean  {statistics.mean(tfdata):9.2f}  {statistics.mean(prepared):10.2f}  {mean:+13.2f}')
print(f'paired difference {mean:+.2f} pp, 95% CI [{mean - half:+.2f}, {mean + half:+.2f}] pp')
print(
    f'seed-to-seed std: tf.data {statistics.stdev(tfdata):.2f} pp, '
    f'prepared {statistics.stdev(prepared):.2f} pp'
)
