# The FLOP peak: a measurement for the benchmarks, not a kernel (no twin).
# (an include of fastconv/_kernels.pyx: one module, fastconv._kernels)

cdef extern from "fastconv.h" nogil:
    double fc_peak_flop_per_iter(int isa)
    double fc_peak_run(int isa, fc_int iters, int nthreads, float *sink)


cdef double _peak_best_of(int isa, fc_int iters, int nthreads, int runs) noexcept nogil:
    """The shortest of `runs` runs: a preempted thread or a waking team only lengthens one."""
    cdef double best = 1e300
    cdef float sink
    for _ in range(runs):
        best = min(best, fc_peak_run(isa, iters, nthreads, &sink))
    return best


def peak_gflops(threads=None, isa=None, seconds=0.2):
    """The measured multiply-add peak in GFLOP/s (float32) of `threads` threads
    (default: get_num_threads()) on ISA `isa` (default: the current one).

    Each thread runs independent chains of fused multiply-adds on the ISA's
    widest vectors; the loop is lengthened until one run takes about
    `seconds`/4, and the best of five runs of that length is returned, so
    the figure is this CPU's peak now (clock, other load) for fastconv's code.
    """
    fn = "peak_gflops"
    nt = get_num_threads() if threads is None else threads
    if isinstance(nt, bool) or not isinstance(nt, (int, np.integer)) or not 1 <= nt <= MAX_THREADS:
        raise ValueError(f"{fn}: `threads` must be an int in [1, {MAX_THREADS}]; got {threads!r}")
    i = fc_isa_get() if isa is None else (ISAS.index(isa) if isa in ISAS else -1)
    if i < 0 or not fc_isa_supported(i):
        raise ValueError(f"{fn}: `isa` must be one of {supported_isas()}; got {isa!r}")
    nt = _resolve_num_threads(nt)  # 1 in a serial build; above 1 refused in a forked child
    if not 0 < seconds <= 60:
        raise ValueError(f"{fn}: `seconds` must be in (0, 60]; got {seconds!r}")
    cdef fc_int iters = 1000
    cdef int ci = i, cnt = _team(nt)
    cdef double t, best, target = seconds / 4
    with nogil:
        t = _peak_best_of(ci, iters, cnt, 2)
        while t < target and iters < (<fc_int>1) << 40:
            iters *= max(2, min(16, <fc_int>(target / max(t, 1e-9)) + 1))
            t = _peak_best_of(ci, iters, cnt, 2)
        best = min(t, _peak_best_of(ci, iters, cnt, 3))
    return fc_peak_flop_per_iter(ci) * iters * nt / best / 1e9
