"""Process settings, made once by each entry point: nothing in ``alexnet_jax`` sets them on import.

:func:`configure` is the first call of every command (train, evaluate, predict, dataset-stats,
convert), benchmark and sweep, before JAX or TensorFlow start. A notebook that imports
``alexnet_jax.models`` gets a plain process; calling ``runtime.configure()`` first gives it the
settings a training run has.
"""

import contextlib
import dataclasses
import importlib.util
import os
import sys

from alexnet_jax import xla_cpu

# tf.data (through tensorflow-datasets) logs C++ warnings on every run; errors only by default.
TF_LOG_LEVEL_ENV = 'TF_CPP_MIN_LOG_LEVEL'


@dataclasses.dataclass(frozen=True)
class Settings:
    """What :func:`configure` did, for the log and the benchmarks' records."""

    on_cpu: bool  # JAX will run on its CPU backend
    ynn_fusions: bool  # XLA:CPU's YNNPACK dot fusions requested (see xla_cpu.py)
    keeps_host_memory: bool  # glibc keeps freed memory (see configure)


def configure(*, keep_host_memory: bool = False, dispatch_ahead: bool = True) -> Settings:
    """Sets this process up as a training run has it; call before JAX or TensorFlow start.

    - XLA:CPU's YNNPACK fusions for convolutions and matrix products, and its memory-optimized
      scheduler (only where JAX runs on the CPU; a value the user set in ``XLA_FLAGS`` is
      kept). XLA reads its flags once, when JAX starts its first backend, so a later call no
      longer changes JAX.
    - TensorFlow's C++ logs at errors only (a value the user set is kept), and TensorFlow
      imported once with its start-up lines dropped: TensorFlow 2.21 prints "oneDNN custom
      operations are on" at import on some CPUs whatever ``TF_CPP_MIN_LOG_LEVEL`` says
      (tensorflow/tensorflow#100442), and every command loads it for its input pipeline.
    - On an accelerator host, TensorFlow (used only for the input pipeline) sees no GPU, so it
      does not take the memory JAX needs.
    - With ``keep_host_memory``, glibc's malloc keeps freed memory for reuse (CPU only; changes
      the whole process, so only a command that trains asks for it, first thing). Without
      ``dispatch_ahead``, JAX then runs CPU computations one at a time: XLA:CPU allocates each
      step's scratch buffer (436 MB for ``paper`` at batch 32) when the step is dispatched, so
      steps dispatched ahead each hold one, and memory that is kept, not returned, keeps them
      all: peak RSS 2.0 GB against 1.2 GB one step at a time, at the same speed
      (experiments/benchmarks/host_malloc.py; RESULTS.md, issue 19). A net with a small scratch
      buffer loses little memory and gains ~5% from dispatching ahead (the quick start).
    """
    on_cpu = xla_cpu.runs_on_cpu()
    os.environ.setdefault(TF_LOG_LEVEL_ENV, '2')
    xla_cpu.set_xla_flags()
    keeps = xla_cpu.keep_host_memory() if keep_host_memory else False
    if keeps and not dispatch_ahead:
        import jax

        jax.config.update('jax_cpu_enable_async_dispatch', False)
    _import_tensorflow_quietly()
    if not on_cpu:
        _hide_gpus_from_tensorflow()
    return Settings(on_cpu, xla_cpu.YNN_FLAG in os.environ.get('XLA_FLAGS', ''), keeps)


def _import_tensorflow_quietly() -> None:
    """``import tensorflow`` with the C++ lines it writes to stderr meanwhile dropped."""
    if 'tensorflow' in sys.modules or importlib.util.find_spec('tensorflow') is None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _hide_gpus_from_tensorflow() -> None:
    import tensorflow as tf

    # RuntimeError: TensorFlow already initialised its devices (then hidden before, or none seen).
    with contextlib.suppress(RuntimeError):
        tf.config.set_visible_devices([], 'GPU')
