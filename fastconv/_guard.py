"""What this process may still use: memory it can get, threads it can start, and
files that are safe to read.

Every reader of a user's file goes through :func:`open_regular` (regular files
only, so a FIFO cannot block it and ``/dev/zero`` cannot feed it forever), and
every large allocation that a file or an argument asks for is compared first
with :func:`available_memory`: the least of the free memory (MemAvailable +
SwapFree), the cgroup's headroom (memory.max or memory.limit_in_bytes), and
the address-space and data-segment limits (RLIMIT_AS, RLIMIT_DATA) minus what
the process already maps. Each source that cannot be read (not Linux, no
cgroup) is left out, not guessed.
"""

from __future__ import annotations

import os
import stat

try:
    import resource
except ImportError:  # not POSIX
    resource = None

__all__ = ["MemoryLimitError", "available_memory", "check_memory", "few", "open_regular", "plain", "short", "startable_threads"]

# Requests below this are not worth reading /proc for: any process that runs at
# all can get them, and the CLI turns the rare MemoryError into one line.
SMALL = 16 * 2**20

# OpenMP threads get the pthread default stack unless OMP_STACKSIZE says otherwise.
_DEFAULT_STACK = 8 * 2**20
_THREAD_OVERHEAD = 64 * 2**10  # guard page, TLS, the thread's bookkeeping
_ARENA = 64 * 2**20  # glibc's HEAP_MAX_SIZE on 64-bit: what a thread's malloc arena reserves


class MemoryLimitError(ValueError, MemoryError):
    """A request larger than the memory this process can get: a ValueError (bad
    input, refused before anything is allocated) and a MemoryError."""


def short(text, limit: int = 120) -> str:
    """``text`` for an error message: at most ``limit`` characters, the middle elided."""
    text = str(text)
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def plain(v):
    """A NumPy scalar as the Python number it holds, so that messages read 3.5, not np.float32(3.5)."""
    return v.item() if type(v).__module__ == "numpy" and getattr(v, "ndim", None) == 0 else v


def few(names, n: int = 5) -> str:
    """A bounded list of names for a message: the first ``n``, then how many more."""
    names = list(names)
    shown = ", ".join(repr(short(k, 60)) for k in names[:n])
    return f"[{shown}{f', ... and {len(names) - n:,} more' if len(names) > n else ''}]"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(1 << 16)
    except OSError:
        return None


def _fields(text: str | None, unit: int = 1) -> dict:
    """'Key: 123 kB' or 'key 123' lines as {key: int * unit}."""
    out = {}
    for line in (text or "").splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1]) * unit
    return out


_CGROUPS: list | None = None  # [(folder, limit, usage file, cache key)], found once per process


def _cgroup_limits() -> list:
    """The memory limits of this process's cgroup and its ancestors (v2 or v1).

    In a container the mount's root is the process's own cgroup: the full path
    is tried, then each ancestor, then the root."""
    global _CGROUPS
    if _CGROUPS is not None:
        return _CGROUPS
    found = []
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hid == "0" and controllers == "":
            root, files = "/sys/fs/cgroup", ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            root, files = "/sys/fs/cgroup/memory", ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                    "total_inactive_file")
        else:
            continue
        parts = [p for p in path.strip().split("/") if p]
        for depth in range(len(parts), -1, -1):
            folder = os.path.join(root, *parts[:depth])
            limit = (_read(os.path.join(folder, files[0])) or "").strip()
            if limit.isdigit() and int(limit) < 2**60:
                found.append((folder, int(limit), files[1], files[2]))
    _CGROUPS = found
    return found


def _cgroup_headroom() -> int | None:
    """Limit minus usage (reclaimable page cache not counted as used), the least
    over the cgroups that have a limit; None when none has."""
    rooms = []
    for folder, limit, usage_file, cache_key in _cgroup_limits():
        usage = (_read(os.path.join(folder, usage_file)) or "").strip()
        if usage.isdigit():
            cache = _fields(_read(os.path.join(folder, "memory.stat"))).get(cache_key, 0)
            rooms.append(limit - max(0, int(usage) - cache))
    return min(rooms) if rooms else None


def available_memory() -> tuple[int, str]:
    """(bytes this process can still allocate, the limit that decides it)."""
    limits = []
    info = _fields(_read("/proc/meminfo"), 1024)
    if "MemAvailable" in info:
        limits.append((info["MemAvailable"] + info.get("SwapFree", 0), "free memory (MemAvailable + SwapFree)"))
    elif hasattr(os, "sysconf"):
        try:
            limits.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory"))
        except (ValueError, OSError):
            pass
    room = _cgroup_headroom()
    if room is not None:
        limits.append((room, "the cgroup's memory limit"))
    if resource is not None:
        status = None
        for name, key in (("RLIMIT_AS", "VmSize"), ("RLIMIT_DATA", "VmData")):
            soft = resource.getrlimit(getattr(resource, name))[0]
            if soft == resource.RLIM_INFINITY:
                continue
            status = status or _fields(_read("/proc/self/status"), 1024)
            if key in status:
                limits.append((soft - status[key], f"{name} (ulimit {'-v' if name == 'RLIMIT_AS' else '-d'})"))
    if not limits:
        return 1 << 62, "no known limit"
    nbytes, why = min(limits)
    return max(0, nbytes), why


def check_memory(nbytes: int, what: str) -> None:
    """Raise :class:`MemoryLimitError` when ``nbytes`` exceed what this process can get.

    ``what`` starts the message, e.g. "conv2d_forward: the output of shape (...)".
    """
    if nbytes <= SMALL:
        return
    room, why = available_memory()
    if nbytes > room:
        raise MemoryLimitError(f"{what} must fit in the memory this process can get ({gib(room)}: {why}); "
                               f"got {gib(nbytes)}")


def gib(nbytes: int) -> str:
    """A byte count for a message, e.g. '15.6 GiB' (also for counts beyond the float range)."""
    if nbytes >= 2**100:
        return f"more than 2**{nbytes.bit_length() - 1} bytes"
    return f"{nbytes / 2**30:.3g} GiB"


def _stack_size() -> int:
    text = os.environ.get("OMP_STACKSIZE", "").strip().upper()
    if text:
        unit = {"B": 1, "K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], None)
        digits = text[:-1] if unit else text
        if digits.strip().isdigit():
            return int(digits) * (unit or 2**10)  # OpenMP's default unit is K
    if resource is not None:
        soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
        if soft != resource.RLIM_INFINITY and soft > 0:
            return soft
    return _DEFAULT_STACK


def startable_threads() -> tuple[int, str]:
    """(how many threads this process can run in all, the limit that decides it).

    Under RLIMIT_AS each thread's stack counts, and so does the 64 MiB arena
    glibc's malloc reserves for each of the first 8 x CPUs threads that
    allocate (fastconv's kernels do); libgomp, failing to start a thread,
    exits the whole process. A quarter of the headroom (at least 256 MiB) is
    kept for the work itself.
    """
    if resource is None:
        return 1 << 30, "no known limit"
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    status = _fields(_read("/proc/self/status"), 1024)
    if soft == resource.RLIM_INFINITY or "VmSize" not in status:
        return 1 << 30, "no known limit"
    room = soft - status["VmSize"]
    budget = room - max(256 * 2**20, room // 4)
    stack = _stack_size() + _THREAD_OVERHEAD
    text = os.environ.get("MALLOC_ARENA_MAX", "")
    arenas = int(text) if text.isdigit() else 8 * (os.cpu_count() or 1)
    n = 1  # the main thread: already running
    while n < 1 << 16 and n * stack + min(n, arenas) * _ARENA <= budget:
        n += 1
    return max(1, n - 1), (f"RLIMIT_AS leaves {room / 2**20:.0f} MiB; each thread takes {stack / 2**20:.1f} MiB "
                           f"of stack and up to {arenas} of them a {_ARENA // 2**20} MiB malloc arena")


def open_regular(path, error: type[Exception], what: str = "", max_bytes: int | None = None):
    """Open ``path`` for reading in binary mode if it is a regular file (of at most
    ``max_bytes``); else raise ``error`` naming it. A FIFO does not block the open."""
    path = os.fspath(path)
    label = f"{what}: {path}" if what else path
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)  # FileNotFoundError and PermissionError pass through, naming the path
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                    else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise error(f"{short(label, 300)} must be a regular file; it is {kind}")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{short(label, 300)} must be at most {max_bytes:,} bytes; it has {st.st_size:,}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
