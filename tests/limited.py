"""Run a child Python under an address-space limit and a time limit, and measure it.

The hostile-input tests open each crafted file in a child process: a file
that makes fastconv allocate gigabytes or loop for minutes then shows as a
MemoryError, a kill or a timeout in the child, not as a stuck test run.

The child's peak RSS is its own VmHWM, written at exit: wait4's ru_maxrss
would also count the pages it shared with this (large) process between fork
and exec. A child killed before it could write falls back to ru_maxrss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import time

try:
    import resource
except ImportError:  # not POSIX: the tests that need this skip
    resource = None

MEMORY = 1536 * 2**20  # RLIMIT_AS of the child: far below what the unfixed loaders asked for
TIMEOUT = 180.0        # the child is killed after this; the tests assert far less
# Prepended to a child's -c code: at exit, write VmHWM (the peak RSS since exec) to $FASTCONV_PEAK_FILE.
_PEAK = ("import atexit as _a, os as _o\n"
         "def _peak():\n"
         "    with open('/proc/self/status') as f, open(_o.environ['FASTCONV_PEAK_FILE'], 'w') as out:\n"
         "        out.write(next(l.split()[1] for l in f if l.startswith('VmHWM:')))\n"
         "_a.register(_peak)\n")
CLI = "import sys\nfrom fastconv.tools.cli import main\nsys.exit(main(sys.argv[1:]))"
# Calls one expression (e.g. a loader) and reports its exception as one line, as the CLI does.
CALL = ("import sys\nimport fastconv.data as D\nfrom fastconv import checkpoint as C\ntry:\n"
        "    result = eval(sys.argv[1])\nexcept Exception as e:\n"
        "    print(f'{type(e).__name__}: {e}', file=sys.stderr)\n    sys.exit(1)\nprint('ok', type(result).__name__)")


@dataclasses.dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int      # bytes
    seconds: float      # wall time
    timed_out: bool
    cpu_seconds: float  # the child's user + system time: what it cost, whatever else loads the host

    def error_line(self) -> str:
        """The one line on stderr, asserting there is exactly one and no traceback."""
        lines = self.stderr.strip().splitlines()
        assert "Traceback" not in self.stderr and len(lines) == 1, self.stderr[-3000:]
        return lines[0]


def run_limited(args, cwd, memory: int = MEMORY, timeout: float = TIMEOUT, env=None) -> Outcome:
    """``python ARGS`` in ``cwd`` with RLIMIT_AS = ``memory``, killed after ``timeout`` seconds."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    args = [str(a) for a in args]
    if args[0] == "-c":
        args[1] = _PEAK + args[1]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".peak") as peak:
        env = dict(os.environ, OMP_WAIT_POLICY="passive", FASTCONV_PEAK_FILE=peak.name, **(env or {}))
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=out, stderr=err, env=env, preexec_fn=limit)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.01)
        seconds = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        written = peak.read().strip()
        return Outcome(proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                       (int(written) if written.isdigit() else usage.ru_maxrss) * 1024, seconds, timed_out,
                       usage.ru_utime + usage.ru_stime)


@contextlib.contextmanager
def address_space_limit(extra: int):
    """Lower this process's soft RLIMIT_AS to what it maps now plus ``extra`` bytes for
    the block (then restore it), so that an in-process test of a loader that regresses
    gets a MemoryError instead of exhausting the host."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    limit = mapped + extra if hard == resource.RLIM_INFINITY else min(hard, mapped + extra)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
