# cython: language_level=3
"""Native kernels: validate at the Python boundary, release the GIL, call csrc/.

Every function here has a twin of the same name and signature in
``fastconv.reference``; ``tests/`` compares the two.
"""

import math
import os
import warnings

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t

cnp.import_array()


cdef extern from "fastconv.h" nogil:
    ctypedef int64_t fc_int
    int FC_ISA_GENERIC, FC_ISA_AVX2, FC_ISA_AVX512, FC_ISA_COUNT
    const char *fc_isa_name(int isa)
    int fc_isa_supported(int isa)
    int fc_isa_best()
    int fc_isa_get()
    void fc_isa_set(int isa)
    void fc_isa_blocksizes(int isa, fc_int out[5])
    int fc_openmp_enabled()
    const char *fc_build_compiler()
    const char *fc_build_flags()

    int fc_sgemm(int trans_a, int trans_b, fc_int m, fc_int n, fc_int k, float alpha,
                 const float *a, fc_int lda, const float *b, fc_int ldb, float beta,
                 float *c, fc_int ldc, int nthreads)

    ctypedef struct fc_conv_shape:
        fc_int n, c, h, w, k, kh, kw, sh, sw, ph, pw, oh, ow
    int fc_conv2d_forward(const fc_conv_shape *s, const float *x, const float *weight,
                          const float *bias, int relu, float *y, int nthreads)
    int fc_conv2d_maxpool_forward(const fc_conv_shape *s, const float *x, const float *weight,
                                  const float *bias, int relu, float *pooled, uint8_t *argmax,
                                  int nthreads)
    int FC_CONV_ALGORITHMS, FC_CONV_IM2COL
    const char *fc_conv_algorithm_name(int algorithm)
    int FC_CONV_MODE_AUTO, FC_CONV_MODE_FORCE, FC_CONV_MODE_EXCLUDE
    void fc_conv_set_mode(int kind, int algorithm)
    int fc_conv_get_mode(int *algorithm)
    int FC_CONV_FORWARD, FC_CONV_DX, FC_CONV_DWEIGHT
    int fc_conv_explain(const fc_conv_shape *s, int direction, int need_dx, int kind, int algorithm,
                        char *why, size_t len)
    int fc_conv_failure(int *direction)
    int fc_conv2d_backward(const fc_conv_shape *s, const float *x, const float *weight,
                           const float *dy, float *dx, float *dweight, float *dbias,
                           int nthreads)

    ctypedef struct fc_pool_shape:
        fc_int n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow
    int fc_maxpool2d_forward(const fc_pool_shape *s, const float *x, float *y,
                             void *argmax, int argmax_bytes, int nthreads)
    fc_int fc_maxpool2d_backward(const fc_pool_shape *s, const float *dy, const void *argmax,
                                 int argmax_bytes, float *dx, int nthreads)

    void fc_bias_add(fc_int outer, fc_int channels, fc_int inner, float *y,
                     const float *bias, int nthreads)

    int FC_ACT_LEAKY_RELU, FC_ACT_ELU, FC_ACT_SIGMOID, FC_ACT_TANH, FC_ACT_RELU
    void fc_activation_forward(int op, fc_int count, const float *x, float param, float *y,
                               int nthreads)
    void fc_activation_backward(int op, fc_int count, const float *dy, const float *a, float param,
                                float *dx, int nthreads)

    void fc_batchnorm_forward(fc_int n, fc_int c, fc_int inner, const float *x, const float *weight,
                              const float *bias, float *mean, float *var, double eps,
                              int batch_stats, float *y, int nthreads)
    void fc_batchnorm_backward(fc_int n, fc_int c, fc_int inner, const float *dy, const float *x,
                               const float *weight, const float *mean, const float *var, double eps,
                               int batch_stats, float *dx, float *dweight, float *dbias,
                               int nthreads)

    void fc_avgpool2d_forward(const fc_pool_shape *s, const float *x, float *y, int nthreads)
    void fc_avgpool2d_backward(const fc_pool_shape *s, const float *dy, float *dx, int nthreads)

    double fc_peak_flop_per_iter(int isa)
    double fc_peak_run(int isa, fc_int iters, int nthreads, float *sink)


# Index arithmetic in C is 64-bit; refuse anything whose element count could
# overflow it (or that no machine could hold) before allocating.
cdef fc_int _MAX_ELEMENTS = (<fc_int>1) << 48


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: leave it to the allocator
        return 1 << 62


# An output larger than the machine's memory is refused before it is allocated:
# numpy would raise MemoryError, or, under overcommit, the kernel's writes would
# get the process killed.
_MEMORY = _physical_memory()


cdef _check_alloc(str fn, str what, shape, str because, int itemsize=4):
    """Refuse to allocate an array of `shape` that needs more than this machine's memory."""
    nbytes = itemsize
    for d in shape:
        nbytes *= int(d)
    if nbytes > _MEMORY:
        raise ValueError(
            f"{fn}: {what} must fit in this machine's memory ({_MEMORY / 2**30:.3g} GiB); got shape "
            f"{tuple(int(d) for d in shape)}, {nbytes / 2**30:.3g} GiB, from {because}")


# ---------------------------------------------------------------------------
# threads and ISA

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
      ``'pointwise'``, ``'implicit_im2col'``, ``'im2col'``): that one wherever
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


def plan_conv2d(x_shape, weight_shape, stride=1, padding=0, need_dx=True, mode="auto"):
    """What the convolution planner picks, on the current ISA, for a
    convolution of input ``x_shape`` (N, C, H, W) and weights ``weight_shape``
    (K, C, kh, kw) under ``mode`` (as set_conv_algorithm's; default auto),
    taking the inputs to be in range: ``{"forward": (name, why), "dx": ...,
    "dweight": ...}``, ``why`` being the planner's reason. ``need_dx``: whether
    the backward computes dx (dW's choice depends on it); False gives
    ``"dx": None``. The conv + max-pool forward runs the forward's algorithm.
    """
    fn = "plan_conv2d"
    kind, algorithm = _conv_mode(fn, mode)
    cdef fc_conv_shape s = _conv_geometry(fn, _shape4(fn, "x_shape", x_shape),
                                          _shape4(fn, "weight_shape", weight_shape, "(K, C, kh, kw)"),
                                          stride, padding, "x_shape", "weight_shape")
    need_dx = _flag(fn, "need_dx", need_dx)
    cdef char why[1024]
    plan = {}
    for key, direction in (("forward", FC_CONV_FORWARD), ("dx", FC_CONV_DX), ("dweight", FC_CONV_DWEIGHT)):
        if key == "dx" and not need_dx:
            plan[key] = None
            continue
        a = fc_conv_explain(&s, direction, need_dx, kind, algorithm, why, sizeof(why))
        plan[key] = (CONV_ALGORITHMS[a], why.decode())
    return plan


cdef str _conv_failure():
    """Which algorithm's workspace the last conv call of this thread could not allocate."""
    cdef int direction
    algorithm = fc_conv_failure(&direction)
    if algorithm < 0:
        return "a workspace"
    return f"the {CONV_ALGORITHMS[algorithm]} workspace (for {('the forward', 'dx', 'dW', 'dx and dW')[direction]})"


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


# ---------------------------------------------------------------------------
# validation (once, at the boundary)

def _describe(a):
    if isinstance(a, np.ndarray):
        layout = "" if a.flags.c_contiguous else "non-contiguous "
        return f"{layout}{a.dtype} array with shape {a.shape}"
    return f"{type(a).__name__}"


cdef _check_array(str fn, str name, a, int ndim, bint writable=False):
    """Require a C-contiguous float32 ndarray of rank ndim."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{fn}: `{name}` must be a float32 numpy array of rank {ndim}; got {_describe(a)}")
    if a.dtype != np.float32:
        raise TypeError(f"{fn}: `{name}` must be a float32 array; got {_describe(a)}")
    if a.ndim != ndim:
        raise ValueError(f"{fn}: `{name}` must have rank {ndim}; got {_describe(a)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{fn}: `{name}` must be C-contiguous; got {_describe(a)}")
    if not a.flags.aligned:  # C dereferences float pointers: misalignment is undefined behaviour
        raise ValueError(f"{fn}: `{name}` must be aligned to its element size; got a misaligned view")
    if writable and not a.flags.writeable:
        raise ValueError(f"{fn}: `{name}` must be writable; got a read-only array")
    if a.size > _MAX_ELEMENTS:
        raise ValueError(f"{fn}: `{name}` must have at most {_MAX_ELEMENTS} elements; got {a.size}")


cdef _check_shape(str fn, str name, a, tuple expected):
    if a.shape != expected:
        raise ValueError(f"{fn}: `{name}` must have shape {expected}; got {a.shape}")


cdef tuple _pair(str fn, str name, v, int minimum):
    """An (h, w) pair of ints >= minimum, from an int or a 2-sequence."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (v, v)
    try:
        h, w = v
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: `{name}` must be an int or an (h, w) pair of ints; got {v!r}") from None
    for e in (h, w):
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)):
            raise TypeError(f"{fn}: `{name}` must be an int or an (h, w) pair of ints; got {v!r}")
        if e < minimum:
            raise ValueError(f"{fn}: `{name}` must be >= {minimum}; got {(int(h), int(w))}")
        if e > _MAX_ELEMENTS:
            raise ValueError(f"{fn}: `{name}` must be at most 2**48; got {(int(h), int(w))}")
    return int(h), int(w)


cdef bint _flag(str fn, str name, v) except -1:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{fn}: `{name}` must be a bool; got {v!r}")
    return bool(v)


cdef inline float *_fptr(cnp.ndarray a):
    return <float *>cnp.PyArray_DATA(a)


def _out_size(str fn, size, kernel, stride, padding, str what, str kernel_arg="kernel"):
    out = (size + 2 * padding - kernel) // stride + 1
    if size + 2 * padding < kernel:
        raise ValueError(
            f"{fn}: kernel {what} {kernel} is larger than the padded input {what} "
            f"{size} + 2*{padding} = {size + 2 * padding}: `{kernel_arg}` must fit in `x` padded by `padding`; "
            f"got {what} {kernel}")
    return out


# ---------------------------------------------------------------------------
# sgemm

cdef _check_matrix(str fn, str name, a, bint writable=False):
    """A float32 2-D array whose rows are contiguous (any row stride): lets
    callers pass row-sliced views, which sgemm reads through its leading
    dimension."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{fn}: `{name}` must be a float32 numpy array of rank 2; got {_describe(a)}")
    if a.dtype != np.float32:
        raise TypeError(f"{fn}: `{name}` must be a float32 array; got {_describe(a)}")
    if a.ndim != 2:
        raise ValueError(f"{fn}: `{name}` must have rank 2; got {_describe(a)}")
    rows, cols = a.shape
    # An empty matrix is never read, whatever strides NumPy gave it; a single
    # row or column needs no stride along the other axis.
    bad_cols = cols > 1 and rows > 0 and a.strides[1] != 4
    bad_rows = rows > 1 and cols > 0 and (a.strides[0] < 4 * cols or a.strides[0] % 4)
    if bad_cols or bad_rows:
        raise ValueError(
            f"{fn}: `{name}` must have contiguous rows (unit column stride, row stride >= its width); "
            f"got strides {a.strides} for shape {a.shape}")
    if not a.flags.aligned:
        raise ValueError(f"{fn}: `{name}` must be aligned to its element size; got a misaligned view")
    if writable and not a.flags.writeable:
        raise ValueError(f"{fn}: `{name}` must be writable; got a read-only array")


cdef fc_int _ld(a):
    return max(a.strides[0] // 4, a.shape[1], 1)


def sgemm(A, B, C=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """C = alpha * op(A) @ op(B) + beta * C, float32, row-major.

    ``op(X)`` is ``X.T`` when ``trans_X`` is true. ``C`` is allocated (and
    ``beta`` must then be 0) when None; otherwise it is written in place and
    returned. Rows of A, B and C may have any stride (leading dimensions), as
    long as each row is contiguous.
    """
    fn = "sgemm"
    _check_matrix(fn, "A", A)
    _check_matrix(fn, "B", B)
    _flag(fn, "trans_a", trans_a)
    _flag(fn, "trans_b", trans_b)
    for name, v in (("alpha", alpha), ("beta", beta)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"sgemm: `{name}` must be a real number; got {v!r}")
    m, k = (A.shape[1], A.shape[0]) if trans_a else A.shape
    kb, n = (B.shape[1], B.shape[0]) if trans_b else B.shape
    if k != kb:
        raise ValueError(
            f"sgemm: inner dimensions must match: op(A) is {m}x{k} but op(B) is {kb}x{n} "
            f"(trans_a={bool(trans_a)}, trans_b={bool(trans_b)})")
    if C is None and beta != 0:  # (not float(beta): an int past the float range)
        raise ValueError(f"sgemm: `beta` must be 0 when `C` is None; got {beta!r}")
    alpha_f = _real(fn, "alpha", alpha, -_FLT_MAX, _FLT_MAX)
    beta_f = _real(fn, "beta", beta, -_FLT_MAX, _FLT_MAX)
    if m * n > _MAX_ELEMENTS or m * k > _MAX_ELEMENTS or k * n > _MAX_ELEMENTS:
        raise ValueError(f"sgemm: sizes m={m}, n={n}, k={k} are too large: `A`, `B` and `C` must have at most "
                         f"{_MAX_ELEMENTS} elements; got op(A) {m}x{k}, op(B) {k}x{n}")
    if C is None:
        _check_alloc(fn, "`C`", (m, n), f"`A` {A.shape} and `B` {B.shape}")
        C = np.empty((m, n), dtype=np.float32)
    else:
        _check_matrix(fn, "C", C, writable=True)
        if C.shape != (m, n):
            raise ValueError(f"sgemm: `C` must have shape {(m, n)}; got {C.shape}")
        if np.shares_memory(C, A) or np.shares_memory(C, B):
            raise ValueError("sgemm: `C` must not overlap `A` or `B`")
    if m == 0 or n == 0:
        return C
    cdef int ta = bool(trans_a), tb = bool(trans_b), rc, nt = _team(_num_threads)
    cdef fc_int cm = m, cn = n, ck = k, lda = _ld(A), ldb = _ld(B), ldc = _ld(C)
    cdef float fa = alpha_f, fb = beta_f
    cdef const float *pa = <const float *>cnp.PyArray_DATA(A)
    cdef const float *pb = <const float *>cnp.PyArray_DATA(B)
    cdef float *pc = <float *>cnp.PyArray_DATA(C)
    with nogil:
        rc = fc_sgemm(ta, tb, cm, cn, ck, fa, pa, lda, pb, ldb, fb, pc, ldc, nt)
    if rc != 0:
        raise MemoryError("sgemm: could not allocate the packing workspace")
    return C


# ---------------------------------------------------------------------------
# conv2d

cdef fc_conv_shape _conv_shape(str fn, x, weight, stride, padding) except *:
    _check_array(fn, "x", x, 4)
    _check_array(fn, "weight", weight, 4)
    cdef fc_conv_shape s = _conv_geometry(fn, x.shape, weight.shape, stride, padding, "x", "weight")
    n, c, k, kh, kw, oh, ow = (int(v) for v in (s.n, s.c, s.k, s.kh, s.kw, s.oh, s.ow))
    because = f"`x` {x.shape}, `weight` {weight.shape}, `stride` {(s.sh, s.sw)}, `padding` {(s.ph, s.pw)}"
    _check_alloc(fn, "the output", (n, k, oh, ow), because)
    _check_alloc(fn, "the column matrix", (c * kh * kw, oh, ow), because)
    return s


cdef fc_conv_shape _conv_geometry(str fn, tuple x_shape, tuple w_shape, stride, padding, str x_name,
                                  str w_name) except *:
    """The convolution of an input of x_shape with weights of w_shape (4 ints each, >= 0)."""
    cdef fc_conv_shape s
    s.n, s.c, s.h, s.w = x_shape
    s.k, wc, s.kh, s.kw = w_shape
    if s.c < 1 or s.h < 1 or s.w < 1:
        raise ValueError(f"{fn}: `{x_name}` must have non-zero C, H and W; got shape {x_shape}")
    if wc != s.c:
        raise ValueError(
            f"{fn}: `{w_name}` must have {s.c} input channels to match `{x_name}` {x_shape}; "
            f"got weight shape {w_shape}")
    if s.kh < 1 or s.kw < 1 or s.k < 1 or s.c < 1:
        raise ValueError(f"{fn}: `{w_name}` must have non-zero sizes; got shape {w_shape}")
    s.sh, s.sw = _pair(fn, "stride", stride, 1)
    s.ph, s.pw = _pair(fn, "padding", padding, 0)
    s.oh = _out_size(fn, s.h, s.kh, s.sh, s.ph, "height", w_name)
    s.ow = _out_size(fn, s.w, s.kw, s.sw, s.pw, "width", w_name)
    # Python ints: the same products in fc_int could wrap around.
    n, c, k, kh, kw, oh, ow = (int(v) for v in (s.n, s.c, s.k, s.kh, s.kw, s.oh, s.ow))
    if n * k * oh * ow > _MAX_ELEMENTS or c * kh * kw * oh * ow > _MAX_ELEMENTS:
        raise ValueError(f"{fn}: output or column matrix too large for {x_name} {x_shape}, {w_name} "
                         f"{w_shape}: `{x_name}`, `{w_name}`, `stride` and `padding` must give at most "
                         f"{_MAX_ELEMENTS} elements; got output {(n, k, oh, ow)}")
    return s


def conv2d_forward(x, weight, bias, stride, padding, relu=False):
    """y = conv2d(x, weight) + bias, zero padding (cross-correlation, as PyTorch).

    x (N, C, H, W), weight (K, C, kh, kw), bias (K,) or None; stride and
    padding are ints or (h, w) pairs. Returns y (N, K, OH, OW) with
    OH = (H + 2*ph - kh) // sh + 1 and likewise OW; with relu true,
    max(y, 0) (NaN kept, as relu_forward) computed in the same pass.
    """
    fn = "conv2d_forward"
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"{fn}: `relu` must be a bool; got {relu!r}")
    cdef fc_conv_shape s = _conv_shape(fn, x, weight, stride, padding)
    cdef const float *pb = NULL
    if bias is not None:
        _check_array(fn, "bias", bias, 1)
        _check_shape(fn, "bias", bias, (s.k,))
        pb = _fptr(bias)
    y = np.empty((s.n, s.k, s.oh, s.ow), dtype=np.float32)
    if s.n == 0:
        return y
    cdef const float *px = _fptr(x)
    cdef const float *pw = _fptr(weight)
    cdef float *py = _fptr(y)
    cdef int rc, nt = _team(_num_threads), fuse_relu = bool(relu)
    with nogil:
        rc = fc_conv2d_forward(&s, px, pw, pb, fuse_relu, py, nt)
    if rc != 0:
        raise MemoryError(f"conv2d_forward: could not allocate {_conv_failure()}")
    return y


def conv2d_maxpool_forward(x, weight, bias, stride, padding, relu=False):
    """The 2x2 stride-2 max-pool of conv2d_forward(x, weight, bias, stride,
    padding, relu): returns (y, argmax) as maxpool2d_forward(conv, 2, 2, 0)
    does, with the same bits, for conv outputs of at least 2x2. Where the
    convolution runs as Winograd, each 2x2 output tile is one window and the
    full-size output is never stored (the layers of a Sequential use it
    for a Conv2d, ReLU, MaxPool2d(2) chain).
    """
    fn = "conv2d_maxpool_forward"
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"{fn}: `relu` must be a bool; got {relu!r}")
    cdef fc_conv_shape s = _conv_shape(fn, x, weight, stride, padding)
    if s.oh < 2 or s.ow < 2:
        raise ValueError(f"{fn}: `x` {(s.h, s.w)} with `weight` {(s.kh, s.kw)}, `stride` "
                         f"{(s.sh, s.sw)} and `padding` {(s.ph, s.pw)} gives a convolution output "
                         f"of {(s.oh, s.ow)}; the 2x2 pool needs at least (2, 2)")
    cdef const float *pb = NULL
    if bias is not None:
        _check_array(fn, "bias", bias, 1)
        _check_shape(fn, "bias", bias, (s.k,))
        pb = _fptr(bias)
    y = np.empty((s.n, s.k, s.oh // 2, s.ow // 2), dtype=np.float32)
    am = np.empty(y.shape, dtype=np.uint8)
    if s.n == 0:
        return y, am
    cdef const float *px = _fptr(x)
    cdef const float *pw = _fptr(weight)
    cdef float *py = _fptr(y)
    cdef uint8_t *pam = <uint8_t *>cnp.PyArray_DATA(am)
    cdef int rc, nt = _team(_num_threads), fuse_relu = bool(relu)
    with nogil:
        rc = fc_conv2d_maxpool_forward(&s, px, pw, pb, fuse_relu, py, pam, nt)
    if rc != 0:
        raise MemoryError(f"{fn}: could not allocate {_conv_failure()}")
    return y, am


def conv2d_backward(x, weight, dy, stride, padding, need_dx=True):
    """Gradients of conv2d_forward: returns (dx or None, dweight, dbias).

    dy is dL/dy, shape (N, K, OH, OW). dx is skipped (None) when need_dx is
    false, as for a network's first layer.
    """
    fn = "conv2d_backward"
    cdef fc_conv_shape s = _conv_shape(fn, x, weight, stride, padding)
    _check_array(fn, "dy", dy, 4)
    _check_shape(fn, "dy", dy, (s.n, s.k, s.oh, s.ow))
    need_dx = _flag(fn, "need_dx", need_dx)
    dx = np.empty(x.shape, dtype=np.float32) if need_dx else None
    dweight = np.empty(weight.shape, dtype=np.float32)
    dbias = np.empty((s.k,), dtype=np.float32)
    if s.n == 0:
        if dx is not None:
            dx.fill(0)
        dweight.fill(0)
        dbias.fill(0)
        return dx, dweight, dbias
    cdef const float *px = _fptr(x)
    cdef const float *pw = _fptr(weight)
    cdef const float *pdy = _fptr(dy)
    cdef float *pdx = _fptr(dx) if dx is not None else NULL
    cdef float *pdw = _fptr(dweight)
    cdef float *pdb = _fptr(dbias)
    cdef int rc, nt = _team(_num_threads)
    with nogil:
        rc = fc_conv2d_backward(&s, px, pw, pdy, pdx, pdw, pdb, nt)
    if rc != 0:
        raise MemoryError(f"conv2d_backward: could not allocate {_conv_failure()}")
    return dx, dweight, dbias


# ---------------------------------------------------------------------------
# maxpool2d

cdef fc_pool_shape _pool_shape(str fn, tuple x_shape, kernel, stride, padding) except *:
    cdef fc_pool_shape s
    s.n, s.c, s.h, s.w = x_shape
    if s.c < 1 or s.h < 1 or s.w < 1:
        raise ValueError(f"{fn}: input (`x`, `x_shape`) must have non-zero C, H and W; got shape {x_shape}")
    s.kh, s.kw = _pair(fn, "kernel", kernel, 1)
    s.sh, s.sw = _pair(fn, "stride", stride, 1)
    s.ph, s.pw = _pair(fn, "padding", padding, 0)
    if 2 * s.ph > s.kh or 2 * s.pw > s.kw:
        raise ValueError(
            f"{fn}: `padding` must be at most half the kernel size {(s.kh, s.kw)}; "
            f"got {(s.ph, s.pw)}")
    if (<object>s.kh) * s.kw > 2**31 - 1:  # in Python ints: the C product could overflow (UBSan)
        raise ValueError(f"{fn}: `kernel` must have kh * kw < 2**31; got {(s.kh, s.kw)}")
    s.oh = _out_size(fn, s.h, s.kh, s.sh, s.ph, "height")
    s.ow = _out_size(fn, s.w, s.kw, s.sw, s.pw, "width")
    return s


def _shape4(str fn, str name, shape, str dims="(N, C, H, W)"):
    """A shape argument as a tuple of 4 non-negative ints (named `dims`)."""
    try:
        shape = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: `{name}` must be a tuple of 4 ints; got {shape!r}") from None
    if len(shape) != 4 or min(shape) < 0:
        raise ValueError(f"{fn}: `{name}` must be 4 non-negative ints {dims}; got {shape}")
    if max(shape) > _MAX_ELEMENTS:
        raise ValueError(f"{fn}: `{name}` must have sizes of at most 2**48; got {shape}")
    if shape[0] * shape[1] * shape[2] * shape[3] > _MAX_ELEMENTS:
        raise ValueError(f"{fn}: `{name}` {shape} has more than {_MAX_ELEMENTS} elements")
    return shape


def _x_shape(str fn, x_shape):
    """A pool backward's `x_shape` argument as a tuple of 4 non-negative ints."""
    x_shape = _shape4(fn, "x_shape", x_shape)
    _check_alloc(fn, "`dx`", x_shape, f"`x_shape` {x_shape}")
    return x_shape


def argmax_dtype(kernel):
    """The argmax dtype for a kernel size: uint8 when kh*kw <= 256, else int32."""
    kh, kw = _pair("argmax_dtype", "kernel", kernel, 1)
    return np.dtype(np.uint8) if kh * kw <= 256 else np.dtype(np.int32)


def maxpool2d_forward(x, kernel, stride, padding):
    """Max-pool x (N, C, H, W): returns (y, argmax), both (N, C, OH, OW).

    argmax holds the index of each winner within its kernel window
    (row-major, padded positions counted), uint8 when kh*kw <= 256 else
    int32. Padding counts as -inf; ties go to the first maximum; NaN wins.
    """
    fn = "maxpool2d_forward"
    _check_array(fn, "x", x, 4)
    cdef fc_pool_shape s = _pool_shape(fn, x.shape, kernel, stride, padding)
    y = np.empty((s.n, s.c, s.oh, s.ow), dtype=np.float32)
    am = np.empty((s.n, s.c, s.oh, s.ow), dtype=argmax_dtype((s.kh, s.kw)))
    cdef int nbytes = am.dtype.itemsize, nt = _team(_num_threads)
    cdef const float *px = _fptr(x)
    cdef float *py = _fptr(y)
    cdef void *pam = cnp.PyArray_DATA(am)
    cdef int rc
    with nogil:
        rc = fc_maxpool2d_forward(&s, px, py, pam, nbytes, nt)
    if rc != 0:
        raise MemoryError("maxpool2d_forward: could not allocate a row buffer")
    return y, am


def maxpool2d_backward(dy, argmax, x_shape, kernel, stride, padding):
    """Route dy (N, C, OH, OW) to the recorded argmax: returns dx of x_shape."""
    fn = "maxpool2d_backward"
    _check_array(fn, "dy", dy, 4)
    x_shape = _x_shape(fn, x_shape)
    cdef fc_pool_shape s = _pool_shape(fn, x_shape, kernel, stride, padding)
    expected = (s.n, s.c, s.oh, s.ow)
    _check_shape(fn, "dy", dy, expected)
    want = argmax_dtype((s.kh, s.kw))
    if not isinstance(argmax, np.ndarray) or argmax.dtype != want:
        raise TypeError(f"{fn}: `argmax` must be a {want} array for kernel {(s.kh, s.kw)}; got {_describe(argmax)}")
    if not argmax.flags.c_contiguous or not argmax.flags.aligned:
        raise ValueError(f"{fn}: `argmax` must be C-contiguous and aligned; got {_describe(argmax)}")
    _check_shape(fn, "argmax", argmax, expected)
    dx = np.empty(x_shape, dtype=np.float32)
    cdef int nbytes = want.itemsize, nt = _team(_num_threads)
    cdef const float *pdy = _fptr(dy)
    cdef const void *pam = cnp.PyArray_DATA(argmax)
    cdef float *pdx = _fptr(dx)
    cdef fc_int bad
    with nogil:
        bad = fc_maxpool2d_backward(&s, pdy, pam, nbytes, pdx, nt)
    if bad:
        raise ValueError(f"{fn}: `argmax` has {bad} indices outside their window or on padding")
    return dx


# ---------------------------------------------------------------------------
# element-wise

cdef _check_any_rank(str fn, str name, a):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{fn}: `{name}` must be a float32 numpy array; got {_describe(a)}")
    _check_array(fn, name, a, a.ndim)


def bias_add(y, bias):
    """In place: y[:, j, ...] += bias[j] for y of rank >= 2; returns y."""
    fn = "bias_add"
    _check_any_rank(fn, "y", y)
    if y.ndim < 2:
        raise ValueError(f"bias_add: `y` must have rank >= 2 (N, C, ...); got {_describe(y)}")
    if not y.flags.writeable:
        raise ValueError("bias_add: `y` must be writable; got a read-only array")
    _check_array(fn, "bias", bias, 1)
    _check_shape(fn, "bias", bias, (y.shape[1],))
    if np.shares_memory(y, bias):  # C reads bias while it updates y
        raise ValueError("bias_add: `bias` must not overlap `y`")
    cdef fc_int outer = y.shape[0], channels = y.shape[1]
    rows = int(y.shape[0]) * int(y.shape[1])  # Python ints: with an empty axis, the C product could overflow
    cdef fc_int inner = y.size // rows if rows else 0
    cdef int nt = _team(_num_threads)
    cdef float *py = _fptr(y)
    cdef const float *pb = _fptr(bias)
    if y.size:
        with nogil:
            fc_bias_add(outer, channels, inner, py, pb, nt)
    return y


# ---------------------------------------------------------------------------
# scalar arguments

cdef double _DBL_MAX = 1.7976931348623157e308
cdef double _FLT_MAX = 3.4028234663852886e38


cdef double _real(str fn, str name, v, double lo, double hi=_DBL_MAX) except? -1:
    """A real number in [lo, hi] (so finite; NaN is refused), as a double."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: `{name}` must be a real number; got {type(v).__name__} {v!r}")
    try:
        d = float(v)
    except OverflowError:  # an int beyond double's range
        d = float("inf")
    if not lo <= d <= hi:
        bounds = f">= {lo:g}" if hi == _DBL_MAX else f"in [{lo:g}, {hi:g}]"
        raise ValueError(f"{fn}: `{name}` must be a finite number {bounds}; got {v!r}")
    return d


# ---------------------------------------------------------------------------
# activations: leaky ReLU, ELU, sigmoid, tanh share one C entry point per
# direction, the op picked by an FC_ACT_* constant

cdef _activation_forward(str fn, int op, x, float param):
    _check_any_rank(fn, "x", x)
    y = np.empty_like(x)
    cdef fc_int count = x.size
    cdef int nt = _team(_num_threads)
    cdef const float *px = _fptr(x)
    cdef float *py = _fptr(y)
    with nogil:
        fc_activation_forward(op, count, px, param, py, nt)
    return y


cdef _activation_backward(str fn, int op, dy, a, str a_name, float param):
    """`a` is the saved forward tensor the op's derivative needs (x or y)."""
    _check_any_rank(fn, "dy", dy)
    _check_any_rank(fn, a_name, a)
    _check_shape(fn, a_name, a, dy.shape)
    dx = np.empty_like(dy)
    cdef fc_int count = dy.size
    cdef int nt = _team(_num_threads)
    cdef const float *pdy = _fptr(dy)
    cdef const float *pa = _fptr(a)
    cdef float *pdx = _fptr(dx)
    with nogil:
        fc_activation_backward(op, count, pdy, pa, param, pdx, nt)
    return dx


cdef float _param(str fn, str name, v) except? -1:
    """An activation's parameter: finite once rounded to float32."""
    return <float>_real(fn, name, v, -_FLT_MAX, _FLT_MAX)


def relu_forward(x):
    """y = max(x, 0) (NaN kept), any shape."""
    return _activation_forward("relu_forward", FC_ACT_RELU, x, 0.0)


def relu_backward(dy, y):
    """dx = dy where y > 0, else 0 (y is the forward's output; dy passes where y is NaN)."""
    return _activation_backward("relu_backward", FC_ACT_RELU, dy, y, "y", 0.0)


def leaky_relu_forward(x, negative_slope):
    """y = x where x > 0, else negative_slope * x (NaN kept); any shape."""
    fn = "leaky_relu_forward"
    return _activation_forward(fn, FC_ACT_LEAKY_RELU, x, _param(fn, "negative_slope", negative_slope))


def leaky_relu_backward(dy, x, negative_slope):
    """dx = dy where x > 0, else negative_slope * dy (x is the forward's input)."""
    fn = "leaky_relu_backward"
    return _activation_backward(fn, FC_ACT_LEAKY_RELU, dy, x, "x",
                                _param(fn, "negative_slope", negative_slope))


def elu_forward(x, alpha):
    """y = x where x > 0, else alpha * (exp(x) - 1) (computed with expm1); any shape."""
    fn = "elu_forward"
    return _activation_forward(fn, FC_ACT_ELU, x, _param(fn, "alpha", alpha))


def elu_backward(dy, x, alpha):
    """dx = dy where x > 0, else dy * alpha * exp(x), NaN at a NaN x (x is the
    forward's input: unlike the output, it gives the right gradient for any
    alpha, also < 0)."""
    fn = "elu_backward"
    return _activation_backward(fn, FC_ACT_ELU, dy, x, "x", _param(fn, "alpha", alpha))


def sigmoid_forward(x):
    """y = 1 / (1 + exp(-x)), computed from exp(-|x|) so nothing overflows; any shape."""
    return _activation_forward("sigmoid_forward", FC_ACT_SIGMOID, x, 0.0)


def sigmoid_backward(dy, y):
    """dx = dy * (1 - y) * y (y is the forward's output)."""
    return _activation_backward("sigmoid_backward", FC_ACT_SIGMOID, dy, y, "y", 0.0)


def tanh_forward(x):
    """y = tanh(x); any shape."""
    return _activation_forward("tanh_forward", FC_ACT_TANH, x, 0.0)


def tanh_backward(dy, y):
    """dx = dy * (1 - y * y) (y is the forward's output)."""
    return _activation_backward("tanh_backward", FC_ACT_TANH, dy, y, "y", 0.0)


# ---------------------------------------------------------------------------
# batchnorm

cdef tuple _channels(str fn, x):
    """x as (N, C, inner) for x (N, C, *) of rank >= 2."""
    _check_any_rank(fn, "x", x)
    if x.ndim < 2:
        raise ValueError(f"{fn}: `x` must have rank >= 2 (N, C, ...); got {_describe(x)}")
    return x.shape[0], x.shape[1], math.prod(x.shape[2:])  # exact, unlike np.prod


cdef _check_vector(str fn, str name, a, fc_int c):
    _check_array(fn, name, a, 1)
    _check_shape(fn, name, a, (c,))


cdef inline const float *_fptr_or_null(a):
    return NULL if a is None else _fptr(a)


def batchnorm_forward(x, weight, bias, mean, var, eps):
    """Batch normalization of x (N, C, *), per channel j:
    y = (x - mean[j]) / sqrt(var[j] + eps) * weight[j] + bias[j].

    ``weight`` and ``bias`` are (C,) arrays or None (1 and 0). With ``mean``
    and ``var`` None, the batch's own statistics are used (training): the
    mean and the biased variance over N and the trailing axes, accumulated in
    double. Otherwise they are the (C,) statistics to use (evaluation with
    running statistics). Returns (y, mean, var): the statistics used.
    """
    fn = "batchnorm_forward"
    n, c, inner = _channels(fn, x)
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None:
            _check_vector(fn, name, a, c)
    if (mean is None) != (var is None):
        raise ValueError(
            f"{fn}: `mean` and `var` must both be None (batch statistics) or both arrays; "
            f"got {_describe(mean)} and {_describe(var)}")
    cdef double ceps = _real(fn, "eps", eps, 0.0)
    cdef int batch_stats = mean is None
    if batch_stats:
        if n * inner == 0:
            raise ValueError(f"{fn}: batch statistics need at least one value per channel; "
                             f"got `x` with shape {x.shape}")
        mean, var = np.empty(c, np.float32), np.empty(c, np.float32)
    else:
        _check_vector(fn, "mean", mean, c)
        _check_vector(fn, "var", var, c)
    y = np.empty_like(x)
    cdef fc_int cn = n, cc = c, ci = inner
    cdef int nt = _team(_num_threads)
    cdef const float *px = _fptr(x)
    cdef const float *pw = _fptr_or_null(weight)
    cdef const float *pb = _fptr_or_null(bias)
    cdef float *pm = _fptr(mean)
    cdef float *pv = _fptr(var)
    cdef float *py = _fptr(y)
    with nogil:
        fc_batchnorm_forward(cn, cc, ci, px, pw, pb, pm, pv, ceps, batch_stats, py, nt)
    return y, mean, var


def batchnorm_backward(dy, x, weight, mean, var, eps, batch_stats):
    """Gradients of batchnorm_forward: returns (dx, dweight, dbias).

    ``mean`` and ``var`` are the statistics the forward returned;
    ``batch_stats`` says whether they were the batch's own (training: the
    gradient also flows through them) or constants (running statistics).
    dweight = sum(dy * xhat) and dbias = sum(dy) per channel are returned
    also when ``weight`` is None.
    """
    fn = "batchnorm_backward"
    n, c, inner = _channels(fn, x)
    _check_any_rank(fn, "dy", dy)
    _check_shape(fn, "dy", dy, x.shape)
    if weight is not None:
        _check_vector(fn, "weight", weight, c)
    _check_vector(fn, "mean", mean, c)
    _check_vector(fn, "var", var, c)
    cdef double ceps = _real(fn, "eps", eps, 0.0)
    cdef int cbatch = _flag(fn, "batch_stats", batch_stats)
    dx = np.empty_like(x)
    dweight, dbias = np.empty(c, np.float32), np.empty(c, np.float32)
    cdef fc_int cn = n, cc = c, ci = inner
    cdef int nt = _team(_num_threads)
    cdef const float *pdy = _fptr(dy)
    cdef const float *px = _fptr(x)
    cdef const float *pw = _fptr_or_null(weight)
    cdef const float *pm = _fptr(mean)
    cdef const float *pv = _fptr(var)
    cdef float *pdx = _fptr(dx)
    cdef float *pdw = _fptr(dweight)
    cdef float *pdb = _fptr(dbias)
    with nogil:
        fc_batchnorm_backward(cn, cc, ci, pdy, px, pw, pm, pv, ceps, cbatch, pdx, pdw, pdb, nt)
    return dx, dweight, dbias


# ---------------------------------------------------------------------------
# avgpool2d

def avgpool2d_forward(x, kernel, stride, padding):
    """Average-pool x (N, C, H, W): returns y (N, C, OH, OW), OH = (H + 2*ph - kh) // sh + 1.

    Zero padding (at most half the kernel) counts in the divisor kh * kw, as
    PyTorch's defaults (count_include_pad=True, ceil_mode=False).
    """
    fn = "avgpool2d_forward"
    _check_array(fn, "x", x, 4)
    cdef fc_pool_shape s = _pool_shape(fn, x.shape, kernel, stride, padding)
    y = np.empty((s.n, s.c, s.oh, s.ow), dtype=np.float32)
    cdef int nt = _team(_num_threads)
    cdef const float *px = _fptr(x)
    cdef float *py = _fptr(y)
    with nogil:
        fc_avgpool2d_forward(&s, px, py, nt)
    return y


def avgpool2d_backward(dy, x_shape, kernel, stride, padding):
    """Spread dy (N, C, OH, OW) evenly over each window: returns dx of x_shape."""
    fn = "avgpool2d_backward"
    _check_array(fn, "dy", dy, 4)
    x_shape = _x_shape(fn, x_shape)
    cdef fc_pool_shape s = _pool_shape(fn, x_shape, kernel, stride, padding)
    _check_shape(fn, "dy", dy, (s.n, s.c, s.oh, s.ow))
    dx = np.empty(x_shape, dtype=np.float32)
    cdef int nt = _team(_num_threads)
    cdef const float *pdy = _fptr(dy)
    cdef float *pdx = _fptr(dx)
    with nogil:
        fc_avgpool2d_backward(&s, pdy, pdx, nt)
    return dx


# ---------------------------------------------------------------------------
# peak (a measurement for the benchmarks, not a kernel: no twin)

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


KERNELS = ("sgemm", "conv2d_forward", "conv2d_backward", "conv2d_maxpool_forward",
           "maxpool2d_forward",
           "maxpool2d_backward", "relu_forward", "relu_backward", "bias_add",
           "leaky_relu_forward", "leaky_relu_backward", "elu_forward", "elu_backward",
           "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
           "batchnorm_forward", "batchnorm_backward", "avgpool2d_forward", "avgpool2d_backward")
