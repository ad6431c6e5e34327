"""The probe behind malloc_info/: glibc's heap after each training step of one process.

Sets the process up as main.py does (kept host memory, one step at a time), builds the `owt`
step of experiments/benchmarks/train_step.py at batch 32, runs 12 steps and after each writes
glibc's malloc_info() XML and prints the RSS and its peak, less the RSS after imports.

    .venv/bin/python experiments/logs/2026-12-04-vm-issue19-malloc/malloc_info_probe.py owt a
"""

import argparse
import ctypes
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..'))
OUT = os.path.join(os.path.dirname(__file__), 'malloc_info')


def main() -> None:
    sys.path.insert(0, ROOT)
    os.chdir(ROOT)
    from alexnet_jax import runtime

    runtime.configure(keep_host_memory=True, dispatch_ahead=False)
    from experiments.benchmarks import train_step
    from experiments.benchmarks.host_memory import peak_rss_mib, rss_mib

    variant, tag = sys.argv[1], sys.argv[2]
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]

    def dump(i: int) -> None:
        f = libc.fopen(os.path.join(OUT, f'{tag}-{i:02d}.xml').encode(), b'w')
        libc.malloc_info(0, f)
        libc.fclose(f)

    runner = train_step.JaxRunner(argparse.Namespace(batch=32, half=False), variant)
    print('after imports', runner.rss_base, 'now', rss_mib(), 'peak', peak_rss_mib(), flush=True)
    dump(0)
    for i in range(1, 13):
        runner.run_step(wait=True)
        dump(i)
        rss, peak = rss_mib() - runner.rss_base, peak_rss_mib() - runner.rss_base
        print(i, 'rss', round(rss), 'peak', round(peak), flush=True)


if __name__ == '__main__':
    main()
