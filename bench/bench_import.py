"""How long ``import fastconv`` takes: a fresh interpreter per round (the import
cache would make any second import free), started from a folder outside the
repository so that the installed package is imported. ``python -c pass`` and
``import numpy`` are timed alongside, since they are most of the total; the
target is ``import fastconv`` under 0.3 s. On a shared machine the wall time
also counts waiting for a core, so each result's ``extra_info`` also holds
the child's median CPU time (user + system), which load does not inflate.

Which modules cost what: ``python -X importtime -c "import fastconv"``.
"""

import os
import statistics
import subprocess
import sys
import tempfile

import pytest

STATEMENTS = {"python": "pass", "numpy": "import numpy", "fastconv": "import fastconv"}


@pytest.mark.parametrize("what", list(STATEMENTS))
def test_import(benchmark, what):
    argv = [sys.executable, "-c", STATEMENTS[what]]
    cpu = []

    def run():
        child = subprocess.Popen(argv, cwd=tempfile.gettempdir())
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        assert child.returncode == 0, f"{argv} exited with {child.returncode}"
        cpu.append(usage.ru_utime + usage.ru_stime)

    benchmark.group = "import (fresh interpreter)"
    benchmark.pedantic(run, rounds=15, warmup_rounds=1)
    benchmark.extra_info.update(impl=what, statement=STATEMENTS[what],
                                median_cpu_ms=1e3 * statistics.median(cpu))
