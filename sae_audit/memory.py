"""Keep the C heap from growing with the length of a streaming audit (glibc only).

A long audit interleaves large short-lived buffers (activations, pre-activations,
reconstructions: megabytes per batch) with small long-lived ones (the per-image
sparse records of the OOD-detection and probing suites). glibc's malloc serves
the large ones from its heap once its *dynamic* mmap threshold has risen, and
the small long-lived records then pin the heap's top, so freed memory is not
returned: resident memory grows by several times the data actually kept
(measured in ``benchmarks/suite_memory.py``). Fixing the mmap threshold at
glibc's default of 128 KiB (``mallopt(M_MMAP_THRESHOLD, ...)``, which also turns
the dynamic adjustment off) makes every large buffer its own mapping, returned
to the system when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>


def limit_heap_fragmentation(threshold_bytes: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold at ``threshold_bytes`` for this process.

    Returns ``True`` when applied, ``False`` where it does not apply (not Linux/glibc).
    ``sae-audit run`` calls it once at start; call it yourself before a long
    :func:`sae_audit.audit.run_audit` from Python.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False
