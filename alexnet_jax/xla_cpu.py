"""Process settings that make training on XLA:CPU fast (issue 7; figures in experiments/RESULTS.md).

Both must be in place before JAX starts its CPU backend. Neither is applied on import:
:func:`alexnet_jax.runtime.configure`, the first call of every entry point, applies the XLA flag,
and the malloc settings where the entry point asks (training and the training-step benchmark),
since :func:`keep_host_memory` changes the whole process. The one malloc setting glibc reads
only at start-up (:data:`NO_TCACHE`) is set by the training command restarting itself
(:func:`exec_with_malloc_tunables`, from ``alexnet_jax.main.run``).
"""

import ctypes
import importlib.util
import os
import platform
import sys
from collections.abc import Mapping

# XLA:CPU runs convolutions and matrix products in YNNPACK only when its "dot" fusions are on;
# JAX 0.10.2 leaves them off, and the training step is then ~1.3x slower.
YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
# XLA:CPU's memory-optimized scheduler orders the step's operations to keep fewer buffers alive:
# peak RSS at batch 32 20-25% lower, at the same speed (experiments/RESULTS.md, issue 19).
SCHEDULER_FLAG = '--xla_cpu_scheduler_type'
# What set_xla_flags adds. XLA reads XLA_FLAGS once, when JAX starts its first backend. A flag
# the user already set keeps their value (``--xla_cpu_experimental_ynn_fusion_type=`` turns the
# fusions off).
CPU_FLAGS = {YNN_FLAG: 'dot', SCHEDULER_FLAG: 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}

# Set to 0 to leave glibc's malloc as it is.
MALLOC_ENV = 'ALEXNET_JAX_KEEP_HOST_MEMORY'

# mallopt(3) parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8

# glibc's per-thread cache of small freed blocks (tcache), off. XLA allocates each step's
# scratch block aligned; glibc 2.36 serves an aligned request from a free block of the size
# plus the alignment and puts the small pieces it cuts off into the tcache, where they cannot
# merge back. The freed scratch block is then exactly its size, too small for the next step's
# request, and the heap grows by a whole block in about half the processes (peak RSS 1.2
# against 1.0 GB for `owt` at batch 32, 1.6 against 1.2 for `paper`). With the tcache off every
# process stays at the lower level, at the same speed (experiments/RESULTS.md, issue 19; glibc
# 2.39 merges the pieces itself). glibc reads it only as a process starts (GLIBC_TUNABLES).
NO_TCACHE = 'glibc.malloc.tcache_count=0'

# Python packages whose presence means JAX will run on an accelerator, not on the CPU.
_ACCELERATOR_PACKAGES = ('jax_plugins', 'jax_cuda12_plugin', 'jax_cuda13_plugin', 'libtpu')


def set_xla_flags() -> None:
    """Adds :data:`CPU_FLAGS` to ``XLA_FLAGS``, each unless the user set it; only on the CPU."""
    # Not on an accelerator: there they would only reach the host backend, and a newer jaxlib
    # may have renamed these experimental flags (XLA stops at an unknown flag).
    if not runs_on_cpu():
        return
    flags = os.environ.get('XLA_FLAGS', '')
    for flag, value in CPU_FLAGS.items():
        if flag not in flags:
            flags = f'{flags} {flag}={value}'.strip()
    os.environ['XLA_FLAGS'] = flags


def runs_on_cpu() -> bool:
    """Whether JAX will pick its CPU backend, judged without starting JAX."""
    platforms = os.environ.get('JAX_PLATFORMS', '').strip()
    if platforms:
        return platforms.split(',')[0] == 'cpu'
    return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PACKAGES)


def keep_host_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of returning it to the kernel.

    XLA:CPU allocates each step's outputs and its one temporary buffer afresh (several hundred
    MB for AlexNet). glibc serves blocks that large with mmap and unmaps them on free, so every
    step faults in and zeroes ~100k new pages (`owt`, batch 32: ~400 MB). Served from the heap,
    never trimmed, in one arena (other arenas' heaps cannot hold blocks over 64 MB and fall back
    to mmap), the same pages are reused and a step faults none: 5-13% faster (up to 1.5x for
    ``paper``). With JAX's asynchronous dispatch the heap holds two or more steps' scratch
    buffers: :func:`alexnet_jax.runtime.configure` turns that off alongside where the config
    asks (``cpu_dispatch_ahead=False``).

    Only on the CPU backend: an accelerator's memory has its own allocator, and one arena could
    slow a many-threaded input pipeline on a large host. Call it first thing in the process,
    before JAX, TensorFlow or another library starts threads: a thread that already has an arena
    keeps it, and called late this slowed a parallel tf.data pipeline here (called first it did
    not). ``ALEXNET_JAX_KEEP_HOST_MEMORY=0`` turns it off. Returns whether it was applied. The
    training command also starts with glibc's tcache off (:data:`NO_TCACHE`), without which
    the freed scratch block often cannot be reused.
    """
    if not _keeps_host_memory_here():
        return False
    libc = ctypes.CDLL(None)
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_ARENA_MAX, 1))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


def with_malloc_tunables(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` with :data:`NO_TCACHE` added to ``GLIBC_TUNABLES``.

    A tcache count already there (the user's) is kept.
    """
    env = dict(env)
    tunables = env.get('GLIBC_TUNABLES', '')
    if 'glibc.malloc.tcache_count=' not in tunables:
        env['GLIBC_TUNABLES'] = f'{tunables}:{NO_TCACHE}' if tunables else NO_TCACHE
    return env


def exec_with_malloc_tunables() -> None:
    """Restarts this command with :data:`NO_TCACHE`, where :func:`keep_host_memory` applies.

    The same program, arguments, environment otherwise and process id (``execve``); call it
    first thing in an entry point, before any thread starts. Returns without doing anything
    where host memory is not kept (an accelerator, not glibc, ``ALEXNET_JAX_KEEP_HOST_MEMORY=0``)
    and once the tunable is set, so the restarted command goes on from here.
    """
    if not _keeps_host_memory_here() or not sys.executable:
        return
    env = with_malloc_tunables(os.environ)
    if env.get('GLIBC_TUNABLES') == os.environ.get('GLIBC_TUNABLES'):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def _glibc() -> bool:
    return sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'


def _keeps_host_memory_here() -> bool:
    return os.environ.get(MALLOC_ENV, '1') != '0' and _glibc() and runs_on_cpu()


def release_free_host_memory() -> bool:
    """Hands the heap's free memory back to the kernel, once (glibc's ``malloc_trim``).

    For the moment after a training step is compiled and before it first runs: building the
    state and compiling the step free a few hundred MB, which :func:`keep_host_memory` keeps
    resident; the step's scratch buffer then often lands beside that memory instead of in it.
    Returned first, the pages are not counted twice. Only glibc has ``malloc_trim``; elsewhere
    this does nothing. Returns whether it ran.
    """
    if not _glibc():
        return False
    ctypes.CDLL(None).malloc_trim(0)
    return True
