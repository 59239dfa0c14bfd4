"""keep_freed_memory(): what `mhc` (the CLI) does at start, for a Python process.

LibTorch has no caching allocator on the CPU. glibc hands every block of 32 MiB or more (and, after
a free at the top of its heap, the heap's tail) back to the kernel, so each activation-sized tensor
is a fresh mapping whose pages the kernel faults in and zeroes on first touch: one sublayer of
`mhc bench layer`'s shape ([4096, 4, 512] fp32) runs 2-3x slower from Python than from the CLI for
that alone. Telling glibc to keep freed memory in the process makes the next tensor of the same size
reuse it (the role jemalloc or tcmalloc play for PyTorch users). A process-wide setting, so it is
the caller's choice, never done on import.
"""
import ctypes

# mallopt's parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory():
    """Keeps freed CPU memory in the process (glibc: no mmap'd blocks, no trimming). Returns True
    where it took effect, False where the C library is not glibc (nothing is changed there)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library the process already has
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    kept = bool(mallopt(_M_MMAP_MAX, 0))
    return bool(mallopt(_M_TRIM_THRESHOLD, -1)) and kept
