"""The allocator policy a server sets for itself at start.

glibc gives each thread that allocates its own malloc arena (up to 8 x cores) and an arena keeps its
peak: a request thread that once parsed and templated a large prompt holds that memory for the life of
the process, so RSS grows with every thread that ever saw a large request. Capping the arenas at two
(``mallopt(M_ARENA_MAX, 2)``, what ``MALLOC_ARENA_MAX=2`` does) makes threads share them and the freed
memory is reused instead of kept per thread. Set through ctypes at start, before the request threads
exist, so no environment variable has to be remembered; ``MALLOC_ARENA_MAX`` set by the user wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # from glibc's malloc.h
DEFAULT_ARENAS = 2


def limit_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``arenas``; False (and a debug line) where that is not possible."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        log.info("malloc arenas left to MALLOC_ARENA_MAX=%s", os.environ["MALLOC_ARENA_MAX"])
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no glibc mallopt here: malloc arenas left as they are")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_ARENA_MAX, arenas) != 1:
        log.warning("mallopt(M_ARENA_MAX, %d) failed: per-thread malloc arenas stay uncapped", arenas)
        return False
    log.info("malloc arenas capped at %d (memory freed by one request thread is reused by the others)", arenas)
    return True
