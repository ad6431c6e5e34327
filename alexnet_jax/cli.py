"""What the commands share: the libraries' logs kept to warnings and errors.

JAX, orbax, TensorFlow and tfds log at INFO through absl and Python's logging (orbax alone writes
about thirty lines to restore one checkpoint). A command that reads a run prints its result and
the real warnings; `--verbosity=0` (or `-v 0`) on its command line brings the INFO lines back.
"""

import logging
import sys

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
    _drop_closed_loop_reports()
    if _verbosity_given():
        return
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _drop_closed_loop_reports() -> None:
    """Drops orbax's "Event loop is closed" reports after a failed checkpoint write.

    When one write of an async save fails (a full disk), orbax closes its event loop while
    tensorstore's other writes are still finishing; each one's callback then raises
    ``RuntimeError('Event loop is closed')`` on a tensorstore thread, which Python prints as an
    unraisable exception: some thirty tracebacks around the one ``error:`` line that names the
    failure. Those exceptions say nothing the error does not; every other unraisable exception
    reaches the hook that was there before.
    """
    previous = sys.unraisablehook
    if getattr(previous, 'drops_closed_loop_reports', False):
        return

    def hook(report) -> None:
        if isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == (
            'Event loop is closed'
        ):
            return
        previous(report)

    hook.drops_closed_loop_reports = True
    sys.unraisablehook = hook
