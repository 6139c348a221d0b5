"""Host allocator settings for training on CPU.

XLA:CPU allocates its temporaries with malloc, and a training step's are large (~1 GB for the 3M
reward model of `make bench-peers`). With glibc's defaults each such block is mmap'd and returned on
free, so every step page-faults its whole working set in again (18% of an RM step's CPU time on the
2-core machine). `tune_host_allocator` tells glibc to keep freed memory in one heap instead;
`make bench-peers` measures what it is worth on that RM step (rm_train_over_trl against
rm_train_over_trl_default_malloc in bench/results.json and the README's table). The price: the process keeps its peak
heap until it exits, which a training run reaches anyway.

The launch entry point (`python -m warm_jax.main`) applies it before JAX starts its threads; a
notebook may call it first thing. `WARM_JAX_DEFAULT_MALLOC=1` opts out. It is the same as starting
Python with `GLIBC_TUNABLES=$(MALLOC_TUNABLES)`, which the peer benchmark gives TRL and PyTorch too.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
# mallopt takes an int: the trim threshold is the largest one, and the tunables string says the same
SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1),
            (_M_TOP_PAD, 64 << 20))
MALLOC_TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                   "glibc.malloc.trim_threshold=2147483647:glibc.malloc.top_pad=67108864")


def tune_host_allocator() -> bool:
    """Apply SETTINGS through glibc's mallopt; False (and nothing changed) off glibc, when
    opted out, or when the process was started with its own GLIBC_TUNABLES."""
    if os.environ.get("WARM_JAX_DEFAULT_MALLOC") == "1" or "GLIBC_TUNABLES" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - present on glibc only
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, min(value, 2**31 - 1)) == 1 for param, value in SETTINGS)
