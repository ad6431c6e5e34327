"""This process's host memory in MiB, read the same way for every side of a benchmark."""

import os
import resource


def rss_mib() -> float:
    """The resident set size now."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def peak_rss_mib() -> float:
    """The resident set's high-water mark since the process started."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
