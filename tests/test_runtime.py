"""Importing alexnet_jax changes nothing in the process; runtime.configure() makes the settings."""

import json
import os
import subprocess
import sys

import pytest

from alexnet_jax import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Imports the named modules of alexnet_jax in a fresh interpreter, after the third-party
# libraries they use, and prints what changed: environment variables, and sys.modules keys
# bound to a module of another name (a patch such as sys.modules['x'] = y).
_IMPORT_SCRIPT = """
import importlib, json, os, sys
import flax, jax, ml_collections, optax, orbax.checkpoint, tensorflow, tensorflow_datasets

def aliases():
    return {k for k, m in list(sys.modules.items()) if getattr(m, '__name__', k) != k}

env, before = dict(os.environ), aliases()
for name in sys.argv[1:]:
    importlib.import_module('alexnet_jax.' + name)
changed = {k: v for k, v in os.environ.items() if env.get(k) != v}
removed = sorted(set(env) - set(os.environ))
print(json.dumps({'changed': changed, 'removed': removed,
                  'aliases': sorted(aliases() - before)}))
"""


def _modules() -> list[str]:
    names = sorted(
        f[:-3] for f in os.listdir(os.path.join(ROOT, 'alexnet_jax')) if f.endswith('.py')
    )
    return [n for n in names if n != '__init__']


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'TF_CPP_MIN_LOG_LEVEL')}
    env['JAX_PLATFORMS'] = 'cpu'
    return env


def _run_script(script: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Runs ``script`` in a fresh interpreter (a clean environment plus ``env``); its last
    line of output, read as JSON."""
    out = subprocess.run(
        [sys.executable, '-c', script, *args],
        env={**_clean_env(), **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_any_module_leaves_the_process_untouched():
    modules = _modules()
    assert {'models', 'train', 'datasets', 'main', 'runtime'} <= set(modules)
    # evaluate and predict define the same absl flags as main: each in its own interpreter.
    own_process = {'evaluate', 'predict'}
    groups = [[n for n in modules if n not in own_process]] + [[n] for n in sorted(own_process)]
    for group in groups:
        result = _run_script(_IMPORT_SCRIPT, *group)
        assert result == {'changed': {}, 'removed': [], 'aliases': []}, (group, result)


_CONFIGURE_SCRIPT = """
import json, os
from alexnet_jax import runtime
settings = runtime.configure()
print(json.dumps({'xla': os.environ.get('XLA_FLAGS', ''),
                  'tf': os.environ.get('TF_CPP_MIN_LOG_LEVEL'),
                  'ynn': settings.ynn_fusions, 'on_cpu': settings.on_cpu}))
"""


def _configure(extra_env: dict[str, str]) -> dict:
    return _run_script(_CONFIGURE_SCRIPT, env=extra_env)


def test_configure_sets_the_cpu_flags_and_keeps_the_users_own():
    ours = f'{xla_cpu.YNN_FLAG}=dot {xla_cpu.SCHEDULER_FLAG}=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'
    plain = _configure({})
    assert plain == {'xla': ours, 'tf': '2', 'ynn': True, 'on_cpu': True}
    # A user's own values are kept: their XLA flags (ours added), their TF log level, and an
    # explicit choice of the YNN fusions or of the scheduler.
    mine = _configure(
        {'XLA_FLAGS': '--xla_cpu_enable_fast_math=false', 'TF_CPP_MIN_LOG_LEVEL': '0'}
    )
    assert mine['xla'] == f'--xla_cpu_enable_fast_math=false {ours}'
    assert mine['tf'] == '0'
    off = _configure({'XLA_FLAGS': f'{xla_cpu.YNN_FLAG}='})
    assert off['xla'] == f'{xla_cpu.YNN_FLAG}= {xla_cpu.SCHEDULER_FLAG}=' + (
        'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'
    )
    default_scheduler = f'{xla_cpu.SCHEDULER_FLAG}=CPU_SCHEDULER_TYPE_DEFAULT'
    assert _configure({'XLA_FLAGS': default_scheduler})['xla'] == (
        f'{default_scheduler} {xla_cpu.YNN_FLAG}=dot'
    )


@pytest.mark.parametrize('platform', ['cuda', 'tpu'])
def test_configure_sets_no_cpu_flag_for_an_accelerator(platform):
    result = _configure({'JAX_PLATFORMS': platform})
    assert result['xla'] == '' and result['on_cpu'] is False


# Dispatches 40 steps of a computation with a 128 MB scratch buffer without waiting, after 5
# waited for, and prints how much the resident set grew. argv[1]: 'configure' (what main.py does
# with the ImageNet configs), or 'ahead' (glibc's setting, JAX dispatching ahead).
_SCRATCH_SCRIPT = """
import json, os, sys
from alexnet_jax import runtime
if sys.argv[1] == 'configure':
    runtime.configure(keep_host_memory=True, dispatch_ahead=False)
else:
    runtime.configure(keep_host_memory=True, dispatch_ahead=True)
import jax, jax.numpy as jnp

def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20

step = jax.jit(lambda a: jnp.cumsum(a * 2.0, axis=0)[-1] + a[0])
a = jnp.ones((4096, 4096), jnp.float32)
scratch = step.lower(a).compile().memory_analysis().temp_size_in_bytes / 2**20
for _ in range(5):
    step(a).block_until_ready()
before = rss()
for _ in range(40):
    out = step(a)
out.block_until_ready()
print(json.dumps({'async': jax.config.values['jax_cpu_enable_async_dispatch'],
                  'scratch_mib': scratch, 'growth_mib': rss() - before}))
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_kept_host_memory_holds_one_steps_scratch_buffer():
    # As main.py runs: restarted with glibc's tcache off, without which the freed block often
    # cannot hold the next step's (xla_cpu.NO_TCACHE; 2 blocks of growth in a CI run).
    ours = _run_script(_SCRATCH_SCRIPT, 'configure', env={'GLIBC_TUNABLES': xla_cpu.NO_TCACHE})
    assert ours['async'] is False and ours['scratch_mib'] >= 100
    # At most one more: a small allocation can take the start of the freed buffer's space
    # between two steps, once, while the heap settles.
    assert ours['growth_mib'] < 1.25 * ours['scratch_mib']
    # The reason: dispatched asynchronously, steps in flight each hold a scratch buffer, and
    # the kept memory grows by several of them (here 2-6).
    ahead = _run_script(_SCRATCH_SCRIPT, 'ahead')
    assert ahead['async'] is True and ahead['growth_mib'] > 1.5 * ahead['scratch_mib']


# Frees a 256 MB block (kept by the heap), then compiles a step ahead of its first call: prints
# the resident set before and after, and the compilations (or cache reads) each part caused.
_AHEAD_SCRIPT = """
import json, os, sys
from alexnet_jax import runtime
runtime.configure(keep_host_memory=True, dispatch_ahead=False)
import jax, jax.numpy as jnp
import numpy as np
from alexnet_jax import steps

def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20

events = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, *_, **__: events.append(event)
    if 'backend_compile' in event or event.endswith('cache_retrieval_time_sec') else None
)
block = np.ones(2**26, np.float32)  # 256 MB from the heap (kept memory maps nothing)
del block
step = jax.jit(lambda a, b: jnp.tanh(a @ b).sum(axis=0))
a = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / 100
b = np.ones((32, 16), np.float32)
before = rss()
steps.compile_ahead(step, a, b)
after, ahead = rss(), len(events)
out = np.asarray(step(a, b))
print(json.dumps({'before': before, 'after': after, 'ahead': ahead,
                  'first_call': len(events) - ahead,
                  'error': float(np.abs(out - np.tanh(a.astype(np.float64) @ b).sum(0)).max())}))
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc_trim')
def test_compile_ahead_compiles_before_the_first_call_and_returns_freed_memory():
    result = _run_script(_AHEAD_SCRIPT)
    assert result['ahead'] == 1 and result['first_call'] == 0, result
    # The freed 256 MB block was resident (kept) and is handed back to the kernel.
    assert result['before'] - result['after'] > 150, result
    assert result['error'] < 1e-3, result  # the step still computes what it did


_DEVICES_SCRIPT = """
import json
from alexnet_jax import runtime
runtime.configure(keep_host_memory=True, dispatch_ahead=False)
import jax, jax.numpy as jnp
step = jax.pmap(lambda x: jax.lax.psum(x, 'i'), axis_name='i')
n = jax.local_device_count()
for _ in range(5):
    total = step(jnp.arange(n * 1000.0).reshape(n, 1000))
print(json.dumps({'async': jax.config.values['jax_cpu_enable_async_dispatch'], 'devices': n,
                  'sum': float(total[0].sum())}))
"""


def test_one_step_at_a_time_runs_a_collective_over_several_devices():
    # Each device's part of a pmapped step waits for the others in the psum: run one at a time
    # on the calling thread, they would never meet. JAX runs them together (no hang).
    out = _run_script(
        _DEVICES_SCRIPT, env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
    )
    n = 4 * 1000
    assert out == {'async': False, 'devices': 4, 'sum': float(n * (n - 1) / 2)}
