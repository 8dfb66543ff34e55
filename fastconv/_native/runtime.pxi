# Process-wide runtime state: threads, the ISA, the convolution algorithm mode, build information.
# (an include of fastconv/_kernels.pyx: one module, fastconv._kernels)

cdef extern from "fastconv.h" nogil:
    ctypedef int64_t fc_int
    int FC_ISA_GENERIC, FC_ISA_AVX2, FC_ISA_AVX512, FC_ISA_COUNT
    const char *fc_isa_name(int isa)
    int fc_isa_supported(int isa)
    int fc_isa_best()
    int fc_isa_get()
    void fc_isa_set(int isa)
    void fc_isa_blocksizes(int isa, fc_int out[5])
    const char *fc_isa_entry(int isa, int i, uintptr_t *address)
    int fc_openmp_enabled()
    const char *fc_build_compiler()
    const char *fc_build_flags()
    int FC_CONV_ALGORITHMS, FC_CONV_IM2COL
    const char *fc_conv_algorithm_name(int algorithm)
    int FC_CONV_MODE_AUTO, FC_CONV_MODE_FORCE, FC_CONV_MODE_EXCLUDE
    void fc_conv_set_mode(int kind, int algorithm)
    int fc_conv_get_mode(int *algorithm)

# -- threads

def _cpus_available():
    """The CPUs this process may run on (affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


MAX_THREADS = 1024
_FORK_MESSAGE = (
    "this process was forked (os.fork, or multiprocessing's default 'fork' start method) after its parent "
    "had run a multi-threaded kernel, and GNU OpenMP's thread pool does not survive a fork: a team of more "
    "than one thread would wait forever for threads that exist only in the parent, so kernels here run on "
    "1 thread. For more threads in a child, start it with the 'spawn' or 'forkserver' method, e.g. "
    "multiprocessing.get_context('spawn').Pool(...) or ProcessPoolExecutor(mp_context=...)")

cdef int _num_threads = 1        # what every kernel is given; decided by _resolve_num_threads only
cdef bint _pool_started = False  # a kernel was given more than one thread: libgomp's pool may exist
cdef bint _forked_pool = False   # forked after that: the pool is gone, only 1-thread teams are safe
_omp_warned = False


cdef inline int _team(int n) noexcept:
    """`n`, the team size of a parallel call about to run, noting when libgomp's pool may start."""
    global _pool_started
    if n > 1:
        _pool_started = True
    return n


def _omp_num_threads():
    """OMP_NUM_THREADS as a thread count, or None when it is unset or malformed.

    "4,2" is an OpenMP list (4 at the outer level, 2 in nested regions): fastconv's
    regions are outer ones, so its first item counts. A malformed value ("abc", "0",
    "-1", above MAX_THREADS) must not stop the import: it is ignored with one warning.
    """
    global _omp_warned
    text = os.environ.get("OMP_NUM_THREADS", "")
    if not text.strip():
        return None
    first = text.split(",")[0].strip()
    if first.isascii() and first.isdigit() and 1 <= int(first) <= MAX_THREADS:
        return int(first)
    if not _omp_warned:
        _omp_warned = True
        warnings.warn(f"fastconv ignores OMP_NUM_THREADS={text!r}: it must be a whole number in "
                      f"[1, {MAX_THREADS}] or a comma-separated list whose first item is one; fastconv uses "
                      f"the {_cpus_available()} CPUs this process may use instead", RuntimeWarning)
    return None


def _resolve_num_threads(n=None, cpus=None):
    """The thread count kernels use, decided here and nowhere else (as scikit-learn's
    _openmp_effective_n_threads). The first rule that applies:

    1. a build without OpenMP, or a child forked after its parent ran a
       multi-threaded kernel (see _after_fork): 1; asking such a child for
       `n` > 1 raises RuntimeError;
    2. `n`, when given: fc.set_num_threads(n) (the CLI's --threads calls it);
    3. OMP_NUM_THREADS (its first item; malformed: warned about once, skipped);
    4. `cpus`, by default the CPUs this process may use (os.sched_getaffinity).
    """
    if _forked_pool and n is not None and n > 1:
        raise RuntimeError(f"cannot run kernels on {n} threads: {_FORK_MESSAGE}")
    if _forked_pool or not fc_openmp_enabled():
        return 1
    if n is not None:
        return int(n)
    return _omp_num_threads() or cpus or _cpus_available()


def set_num_threads(n):
    """Set the number of threads every kernel uses (an int in [1, 1024]).

    Each parallel region is given this team size explicitly, so other OpenMP
    libraries in the process are not affected. No effect in a build without
    OpenMP. In a process forked after its parent ran a multi-threaded kernel,
    only 1 is possible and n > 1 raises RuntimeError, since GNU OpenMP's thread
    pool does not survive a fork: start such children with multiprocessing's
    'spawn' or 'forkserver' method for more threads.
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: `n` must be an int; got {type(n).__name__} {n!r}")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"set_num_threads: `n` must be in [1, {MAX_THREADS}]; got {n}")
    _num_threads = _resolve_num_threads(n)


def get_num_threads():
    """The number of threads kernels use. Until set_num_threads is called:
    OMP_NUM_THREADS (its first item) when set, else the CPUs this process may
    use; always 1 in a build without OpenMP and in a child forked after its
    parent ran a multi-threaded kernel."""
    return _num_threads


def _after_fork():
    """In a forked child: drop to 1 thread if the parent may have started libgomp's pool.

    libgomp keeps the pool's threads parked on a barrier; fork copies the pool's
    bookkeeping but not its threads, so the child's first team of 2 or more waits
    forever. A team of 1 never touches the pool. Nothing started the pool when no
    kernel ran with more than one thread (a forkserver process only imports
    fastconv), so such children keep their thread count.
    """
    global _num_threads, _forked_pool
    if _pool_started:
        _forked_pool = True
        _num_threads = _resolve_num_threads()


# A Python at-fork hook rather than pthread_atfork in C: a kernel can only run again in a
# child that returns to the interpreter, and CPython runs these hooks for every such fork
# (os.fork, multiprocessing's fork and forkserver methods, and C code, which must call
# PyOS_AfterFork_Child); fork+exec (subprocess) needs nothing. The state it changes is
# this module's, so no C state is shared between csrc/ and this bridge.
os.register_at_fork(after_in_child=_after_fork)
_num_threads = _resolve_num_threads()


ISAS = tuple(fc_isa_name(i).decode() for i in range(FC_ISA_COUNT))


def supported_isas():
    """The ISA paths built in and supported by this CPU, best last."""
    return tuple(ISAS[i] for i in range(FC_ISA_COUNT) if fc_isa_supported(i))


def _isa_problem(name, got=None, supported=None):
    """What is wrong with `name` as the SIMD path (a phrase after the setting's name), or None.
    `got`: the value as the user gave it; `supported`: default supported_isas() (tests pass others)."""
    got = name if got is None else got
    supported = supported_isas() if supported is None else supported
    if name not in ISAS:
        return f"must be one of {ISAS}; got {got!r}"
    if name not in supported:
        return f"must be one this CPU and build support, {supported}; got {got!r} (not supported here)"
    return None


def set_isa(name):
    """Force the SIMD path: 'generic', 'avx2' or 'avx512' (must be supported)."""
    problem = _isa_problem(name)
    if problem:
        raise ValueError(f"set_isa: `name` {problem}")
    fc_isa_set(ISAS.index(name))


CONV_ALGORITHMS = tuple(fc_conv_algorithm_name(i).decode() for i in range(FC_CONV_ALGORITHMS))
_CONV_FALLBACK = CONV_ALGORITHMS[FC_CONV_IM2COL]
CONV_MODES = ("auto",) + CONV_ALGORITHMS + tuple(f"no-{a}" for a in CONV_ALGORITHMS if a != _CONV_FALLBACK)


cdef tuple _conv_mode(str fn, mode):
    """(kind, algorithm) of a set_conv_algorithm mode."""
    if not isinstance(mode, str) or mode not in CONV_MODES:
        raise ValueError(f"{fn}: `mode` must be one of {CONV_MODES}; got {mode!r}")
    if mode == "auto":
        return FC_CONV_MODE_AUTO, -1
    if mode.startswith("no-"):
        return FC_CONV_MODE_EXCLUDE, CONV_ALGORITHMS.index(mode[3:])
    return FC_CONV_MODE_FORCE, CONV_ALGORITHMS.index(mode)


def get_conv_algorithm():
    """The convolution algorithm mode in use (see set_conv_algorithm): 'auto',
    an algorithm's name, or 'no-' and a name."""
    cdef int algorithm
    kind = fc_conv_get_mode(&algorithm)
    if kind == FC_CONV_MODE_AUTO:
        return "auto"
    return ("no-" if kind == FC_CONV_MODE_EXCLUDE else "") + CONV_ALGORITHMS[algorithm]


def set_conv_algorithm(mode):
    """Which algorithm runs every convolution (forward, conv + max-pool, dx, dW):

    - ``'auto'`` (default): the planner's choice per shape and ISA, where each
      measured fastest (``fc.conv_plan`` says which and why, per layer);
    - an algorithm, one of ``CONV_ALGORITHMS`` (``'direct'``, ``'winograd'``,
      ``'pointwise'``, ``'implicit_im2col'``, ``'polyphase'`` (a strided dx only), ``'im2col'``,
      ``'depthwise'``): that one wherever
      it applies; a call it does not apply to (a shape it cannot run, an ISA
      without its kernels, inputs out of its range) runs auto's choice instead,
      never an error;
    - ``'no-'`` and an algorithm (not ``'im2col'``, the one that runs every
      shape): auto's choice without it, e.g. ``'no-winograd'``.

    Every algorithm gives the direct sum to float32 rounding. Returns the
    previous mode.

    >>> previous = set_conv_algorithm("im2col")
    >>> set_conv_algorithm(previous)
    'im2col'
    """
    kind, algorithm = _conv_mode("set_conv_algorithm", mode)
    previous = get_conv_algorithm()
    fc_conv_set_mode(kind, algorithm)
    return previous


_WINOGRAD_MODES = {"never": "no-winograd", "auto": "auto", "always": "winograd"}


def set_winograd(mode):
    """Deprecated (use set_conv_algorithm): 'never' is set_conv_algorithm('no-winograd'),
    'auto' is 'auto' and 'always' is 'winograd'. Returns the previous mode in those
    words when it is one of them, else as set_conv_algorithm names it (which this
    also accepts, so that a saved mode can be restored)."""
    warnings.warn("fastconv._kernels.set_winograd is deprecated; use set_conv_algorithm("
                  "'no-winograd' | 'auto' | 'winograd') instead", DeprecationWarning, stacklevel=2)
    if mode not in _WINOGRAD_MODES and mode not in CONV_MODES:
        raise ValueError(f"set_winograd: `mode` must be one of {tuple(_WINOGRAD_MODES)}; got {mode!r}")
    previous = set_conv_algorithm(_WINOGRAD_MODES.get(mode, mode))
    return {v: k for k, v in _WINOGRAD_MODES.items()}.get(previous, previous)


def get_isa():
    """The SIMD path in use."""
    return ISAS[fc_isa_get()]


def gemm_blocksizes(name=None):
    """The GEMM block-size table of an ISA (default: the current one; the generic table for
    one this CPU does not support): dict with mr, nr, mc, kc, nc."""
    cdef fc_int out[5]
    i = fc_isa_get() if name is None else ISAS.index(name)
    fc_isa_blocksizes(i, out)
    return dict(zip(("mr", "nr", "mc", "kc", "nc"), [out[j] for j in range(5)]))


def isa_entries(name=None):
    """The kernel table of an ISA (csrc/kernels/ctx.h; default: the current one; the generic
    table for one this CPU does not support) as {entry: address}, 0 for an entry it leaves
    empty. The addresses only compare: the tests tell by them which ISA's code an entry runs."""
    cdef uintptr_t address
    cdef const char *entry
    i = fc_isa_get() if name is None else ISAS.index(name)
    table, k = {}, 0
    while True:
        entry = fc_isa_entry(i, k, &address)
        if entry == NULL:
            return table
        table[entry.decode()] = int(address)
        k += 1


def build_info():
    """How the extension was built: compiler, flags, OpenMP."""
    return {
        "compiler": fc_build_compiler().decode(),
        "flags": fc_build_flags().decode(),
        "openmp": bool(fc_openmp_enabled()),
    }


def _isa_from_environment():
    """Apply FASTCONV_ISA (any case; unset or empty: the best the CPU supports).
    A bad value is returned, not raised: fastconv/__init__.py raises it, so that
    the import fails with one ValueError and the fastconv command with one line."""
    raw = os.environ.get("FASTCONV_ISA", "")
    name = raw.strip().lower()
    if not name:
        return None
    problem = _isa_problem(name, raw)
    if problem:
        return f"FASTCONV_ISA {problem}"
    set_isa(name)
    return None


_environment_problem = _isa_from_environment()
