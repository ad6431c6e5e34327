"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012) in JAX/Flax, trained the paper's way."""

import os

from alexnet_jax import xla_cpu

# tf.data (through tensorflow-datasets) logs C++ warnings on every run; keep errors only.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# XLA:CPU's fast convolutions and matrix products, before JAX starts a backend (see xla_cpu.py).
xla_cpu.set_ynn_flag()
