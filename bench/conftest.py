"""Shared benchmark fixtures, for every bench/bench_*.py.

``threads`` parametrizes a benchmark over thread counts (1 and 2 unless
FASTCONV_BENCH_THREADS="1,2,4" says otherwise) and, for its duration, gives
that many threads to fastconv's kernels, to PyTorch (when importable) and,
through threadpoolctl, to the BLAS and OpenMP pools that NumPy and others
use; the previous settings are restored afterwards.

``record`` files each result's context in ``benchmark.extra_info`` (saved in
the JSON of ``--benchmark-json``/``--benchmark-autosave``): the
implementation, thread count, ISA, GEMM block sizes, the median in ms, and
GB/s or GFLOP/s from the median when the bytes moved or FLOP are given.
"""

import os

import pytest
from threadpoolctl import threadpool_limits

from fastconv import _kernels

try:
    import torch
except ImportError:  # PyTorch peers are skipped without it
    torch = None

THREADS = tuple(int(t) for t in os.environ.get("FASTCONV_BENCH_THREADS", "1,2").split(","))


@pytest.fixture(params=THREADS, ids=lambda n: f"{n}t")
def threads(request):
    """The thread count for this benchmark, applied to every library."""
    n = request.param
    old = _kernels.get_num_threads()
    old_torch = torch.get_num_threads() if torch is not None else None
    _kernels.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield n
    finally:
        _kernels.set_num_threads(old)
        if torch is not None:
            torch.set_num_threads(old_torch)


@pytest.fixture
def record(benchmark, threads):
    """Call as ``record(impl, nbytes=..., flop=..., **extra)`` after ``benchmark(fn)``."""

    def _record(impl, *, nbytes=None, flop=None, **extra):
        info = benchmark.extra_info
        info.update(impl=impl, threads=threads, isa=_kernels.get_isa(),
                    blocksizes=_kernels.gemm_blocksizes())
        stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
        median = stats.stats.median if stats is not None else None
        if median:
            info["median_ms"] = median * 1e3
            if nbytes is not None:
                info["GB/s"] = nbytes / median / 1e9
            if flop is not None:
                info["GFLOP/s"] = flop / median / 1e9
        if nbytes is not None:
            info["bytes"] = int(nbytes)
        if flop is not None:
            info["flop"] = int(flop)
        info.update(extra)

    return _record
