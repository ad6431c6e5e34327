"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012) in JAX/Flax, trained the paper's way.

Importing the package, or any module in it, leaves the process as it is: the commands call
:func:`alexnet_jax.runtime.configure` first thing for XLA's and TensorFlow's settings.
"""
