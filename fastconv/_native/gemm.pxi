# sgemm (float32 or bf16 mixed precision), and the rounding to bf16.
# (an include of fastconv/_kernels.pyx: one module, fastconv._kernels)

cdef extern from "fastconv.h" nogil:
    int FC_FLOAT32, FC_BFLOAT16
    int fc_gemm(int precision, int trans_a, int trans_b, fc_int m, fc_int n, fc_int k, float alpha,
                const float *a, fc_int lda, const float *b, fc_int ldb, float beta,
                float *c, fc_int ldc, int nthreads, int allow_ksplit)
    void fc_to_bf16(const float *x, fc_int n, uint16_t *y, int nthreads)
    const char *fc_bf16_kernel_name()

# The precisions a GEMM-based kernel computes in (its `precision` argument).
PRECISIONS = ("float32", "bfloat16")


cdef int _precision(str fn, precision) except -1:
    """The C precision of a kernel's `precision` argument."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"{fn}: `precision` must be one of {PRECISIONS}; got {precision!r}")
    return FC_BFLOAT16 if precision == "bfloat16" else FC_FLOAT32


def bf16_kernel():
    """The bf16 GEMM micro-kernel of the current ISA: 'avx512_bf16' on CPUs with AVX512_BF16,
    'emulated' elsewhere (vdpbf16ps emulated in C: the same bits, many times slower)."""
    return fc_bf16_kernel_name().decode()


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


def sgemm(A, B, C=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, precision="float32"):
    """C = alpha * op(A) @ op(B) + beta * C, float32, row-major.

    ``op(X)`` is ``X.T`` when ``trans_X`` is true. ``C`` is allocated (and
    ``beta`` must then be 0) when None; otherwise it is written in place and
    returned. Rows of A, B and C may have any stride (leading dimensions), as
    long as each row is contiguous.

    ``precision="bfloat16"``: op(A) and op(B) are rounded to bf16 (as
    ``to_bfloat16``) and the products summed in float32, in blocks of 256 of
    k and each pair of k as the vdpbf16ps instruction sums it
    (csrc/kernels/bf16.h): the same bits on every ISA and thread count,
    emulated on CPUs without AVX512_BF16. A, B and C stay float32.
    """
    fn = "sgemm"
    cdef int prec = _precision(fn, precision)
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
        rc = fc_gemm(prec, ta, tb, cm, cn, ck, fa, pa, lda, pb, ldb, fb, pc, ldc, nt, 1)
    if rc != 0:
        raise MemoryError("sgemm: could not allocate the packing workspace")
    return C


def to_bfloat16(x):
    """x (float32, any shape, C-contiguous) rounded to bf16, as uint16 bit patterns of the
    same shape: the top half of the float32 result. Round to nearest, ties to even; zero
    and denormals to the zero of their sign; NaN stays NaN (quieted); Inf stays Inf, and
    finite values past the largest bf16 (about 3.39e38) round to Inf. The float32 value
    of a result ``h`` is ``(h.astype(np.uint32) << 16).view(np.float32)``.
    """
    fn = "to_bfloat16"
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise TypeError(f"{fn}: `x` must be a float32 numpy array; got {_describe(x)}")
    _check_array(fn, "x", x, x.ndim)
    _check_alloc(fn, "the result", x.shape, f"`x` {x.shape}", 2)
    y = np.empty(x.shape, dtype=np.uint16)
    cdef fc_int n = x.size
    cdef int nt = _team(_num_threads)
    cdef const float *px = <const float *>cnp.PyArray_DATA(x)
    cdef uint16_t *py = <uint16_t *>cnp.PyArray_DATA(y)
    with nogil:
        fc_to_bf16(px, n, py, nt)
    return y
