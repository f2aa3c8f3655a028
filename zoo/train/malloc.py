"""Which malloc a training process runs with, and where tcmalloc is installed.

On this project's CPU (docs/history.md, "The memory allocator") glibc's malloc hands the large activation
buffers of a training step back to the kernel and faults them in again at the next step: a quarter of the
process's CPU time went to the kernel. tcmalloc keeps them, and a step takes about 30 % less CPU. It is a
library preloaded at start (`LD_PRELOAD`), so `zoo train` can only say so; preload it with
`LD_PRELOAD=$(python -m zoo.train.malloc) zoo train ...` (docs/training.md).
"""

from __future__ import annotations

from pathlib import Path

ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")
# where Debian's libtcmalloc-minimal4 (and other distributions' gperftools) put the library
TCMALLOC_GLOBS = (
    "/usr/lib/*/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
)


def malloc_library(maps: Path = Path("/proc/self/maps")) -> str:
    """The allocator this process has mapped: one of ALLOCATORS, or "" for the C library's own (also where it
    cannot be told: no /proc)."""
    try:
        text = maps.read_text()
    except OSError:
        return ""
    return next((name for name in ALLOCATORS if f"/lib{name}" in text), "")


def installed_tcmalloc() -> Path | None:
    """The first tcmalloc library found in the usual places, for LD_PRELOAD; None if there is none."""
    for pattern in TCMALLOC_GLOBS:
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return found[0]
    return None


def allocator_notice() -> str | None:
    """One line for a CPU training run on Linux without a caching allocator, saying how to get one; None when the
    process already runs tcmalloc, jemalloc or mimalloc, or where /proc cannot tell."""
    if not Path("/proc/self/maps").exists() or malloc_library():
        return None
    lib = installed_tcmalloc()
    how = f"LD_PRELOAD={lib} zoo train ..." if lib else "install tcmalloc (Debian: libtcmalloc-minimal4) and preload it"
    return (
        "notice: training on the CPU with the C library's malloc, under which a step took 45 % more CPU than "
        f"under tcmalloc on this project's machine; {how} (docs/history.md, 'The memory allocator')"
    )


if __name__ == "__main__":  # the path to preload (docs/training.md): empty where none
    print(installed_tcmalloc() or "")
