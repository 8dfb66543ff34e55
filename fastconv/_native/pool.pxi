# Max-pool and average-pool.
# (an include of fastconv/_kernels.pyx: one module, fastconv._kernels)

cdef extern from "fastconv.h" nogil:
    ctypedef struct fc_pool_shape:
        fc_int n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow
    int fc_maxpool2d_forward(const fc_pool_shape *s, const float *x, float *y,
                             void *argmax, int argmax_bytes, int nthreads)
    fc_int fc_maxpool2d_backward(const fc_pool_shape *s, const float *dy, const void *argmax,
                                 int argmax_bytes, float *dx, int nthreads)
    void fc_avgpool2d_forward(const fc_pool_shape *s, const float *x, float *y, int nthreads)
    void fc_avgpool2d_backward(const fc_pool_shape *s, const float *dy, float *dx, int nthreads)

# -- maxpool2d

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


# -- avgpool2d

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
