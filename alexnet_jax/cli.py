"""What the commands share: the libraries' logs kept to warnings and errors.

JAX, orbax, TensorFlow and tfds log at INFO through absl and Python's logging (orbax alone writes
about thirty lines to restore one checkpoint). A command that reads a run prints its result and
the real warnings; `--verbosity=0` (or `-v 0`) on its command line brings the INFO lines back.
"""

import logging

# Python loggers of the libraries the commands use; their children (jax._src.xla_bridge, ...)
# inherit the level.
LIBRARY_LOGGERS = ('absl', 'jax', 'orbax', 'tensorflow', 'tensorflow_datasets', 'etils', 'flax')


def _verbosity_given() -> bool:
    """Whether --verbosity (or -v) was on the command line absl parsed."""
    from absl import flags

    try:
        return bool(flags.FLAGS['verbosity'].present)
    except (KeyError, flags.UnparsedFlagAccessError):
        return False


def quiet_libraries() -> None:
    """Sets absl's verbosity and the libraries' loggers to WARNING.

    Call it at the start of a command's ``main`` (after absl has parsed the flags). An explicit
    ``--verbosity`` wins. Our own logger (``alexnet_jax``) keeps whatever level it has.
    """
    if _verbosity_given():
        return
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
