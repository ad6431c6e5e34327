"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012) in JAX/Flax, trained the paper's way."""

import os

# tf.data (through tensorflow-datasets) logs C++ warnings on every run; keep errors only.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
