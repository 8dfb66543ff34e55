# sgemm.
# (an include of fastconv/_kernels.pyx: one module, fastconv._kernels)

cdef extern from "fastconv.h" nogil:
    int fc_sgemm(int trans_a, int trans_b, fc_int m, fc_int n, fc_int k, float alpha,
                 const float *a, fc_int lda, const float *b, fc_int ldb, float beta,
                 float *c, fc_int ldc, int nthreads)


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
