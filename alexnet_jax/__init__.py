"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012) in JAX/Flax, trained the paper's way."""

import os

# tf.data (through tensorflow-datasets) logs C++ warnings on every run; keep errors only.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# XLA:CPU runs convolutions and matrix products in YNNPACK only when its "dot" fusions are on;
# JAX 0.10.2 leaves them off, and the training step is then ~1.3x slower (issue 7,
# experiments/RESULTS.md). XLA reads XLA_FLAGS once, when JAX starts its first backend, so this
# takes effect when alexnet_jax is imported before any JAX computation runs. A value the user
# already set is kept (``--xla_cpu_experimental_ynn_fusion_type=`` turns the fusions off).
# Other backends ignore the flag.
YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
if YNN_FLAG not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {YNN_FLAG}=dot'.strip()
