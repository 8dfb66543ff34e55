# Max-pool and average-pool.
# (an include of fastconv/_kernels.pyx: one module, fastconv._kernels)

cdef extern from "fastconv.h" nogil:
    ctypedef struct fc_pool_shape:
        fc_int n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow, dh, dw
    int fc_maxpool2d_forward(const fc_pool_shape *s, const float *x, float *y,
                             void *argmax, int argmax_bytes, int nthreads)
    fc_int fc_maxpool2d_backward(const fc_pool_shape *s, const float *dy, const void *argmax,
                                 int argmax_bytes, float *dx, int nthreads)
    void fc_avgpool2d_forward(const fc_pool_shape *s, int count_include_pad, fc_int divisor_override,
                              const float *x, float *y, int nthreads)
    void fc_avgpool2d_backward(const fc_pool_shape *s, int count_include_pad, fc_int divisor_override,
                               const float *dy, float *dx, int nthreads)

# -- the geometry both pools share

cdef fc_pool_shape _pool_shape(str fn, tuple x_shape, kernel, stride, padding, dilation=1,
                               ceil_mode=False) except *:
    cdef fc_pool_shape s
    s.n, s.c, s.h, s.w = x_shape
    if s.c < 1 or s.h < 1 or s.w < 1:
        raise ValueError(f"{fn}: input (`x`, `x_shape`) must have non-zero C, H and W; got shape {x_shape}")
    s.kh, s.kw = _pair(fn, "kernel", kernel, 1)
    s.sh, s.sw = _pair(fn, "stride", stride, 1)
    s.ph, s.pw = _pair(fn, "padding", padding, 0)
    s.dh, s.dw = _pair(fn, "dilation", dilation, 1)
    ceil_mode = _flag(fn, "ceil_mode", ceil_mode)
    if 2 * s.ph > s.kh or 2 * s.pw > s.kw:  # PyTorch's rule, whatever the dilation
        raise ValueError(
            f"{fn}: `padding` must be at most half the kernel size {(s.kh, s.kw)}; "
            f"got {(s.ph, s.pw)}")
    if (<object>s.kh) * s.kw > 2**31 - 1:  # in Python ints: the C product could overflow (UBSan)
        raise ValueError(f"{fn}: `kernel` must have kh * kw < 2**31; got {(s.kh, s.kw)}")
    s.oh = _out_size(fn, s.h, s.kh, s.sh, s.ph, "height", dilation=s.dh, ceil_mode=ceil_mode)
    s.ow = _out_size(fn, s.w, s.kw, s.sw, s.pw, "width", dilation=s.dw, ceil_mode=ceil_mode)
    _taps_reach_input(fn, s.h, s.sh, s.ph, s.dh, s.oh, "height")
    _taps_reach_input(fn, s.w, s.sw, s.pw, s.dw, s.ow, "width")
    return s


def _taps_reach_input(str fn, size, stride, padding, dilation, out, str what):
    """Refuse windows whose taps all fall on padding (PyTorch gives -inf and an
    index outside the input there). Only a window that starts in the padding
    before the input, at a < 0, can: its first tap at or past 0 is at a mod
    dilation, inside unless dilation > size; and such windows are few (the
    padding is at most half the kernel, and the kernel must nearly fit)."""
    if dilation <= size:
        return
    for o in range(min(out, -(-padding // stride))):
        start = o * stride - padding
        if start % dilation >= size:
            raise ValueError(
                f"{fn}: window {o} along the {what} holds only padding (input {what} {size}, padding "
                f"{padding}, stride {stride}, `dilation` {dilation}): every window must reach the input")


def _x_shape(str fn, x_shape):
    """A pool backward's `x_shape` argument as a tuple of 4 non-negative ints."""
    x_shape = _shape4(fn, "x_shape", x_shape)
    _check_alloc(fn, "`dx`", x_shape, f"`x_shape` {x_shape}")
    return x_shape


# -- maxpool2d

def argmax_dtype(kernel):
    """The argmax dtype for a kernel size: uint8 when kh*kw <= 256, else int32."""
    kh, kw = _pair("argmax_dtype", "kernel", kernel, 1)
    return np.dtype(np.uint8) if kh * kw <= 256 else np.dtype(np.int32)


def maxpool2d_forward(x, kernel, stride, padding, dilation=1, ceil_mode=False):
    """Max-pool x (N, C, H, W): returns (y, argmax), both (N, C, OH, OW), as PyTorch's max_pool2d.

    Window (oy, ox) has its taps (i, j) at rows oy*sh - ph + i*dh and columns
    ox*sw - pw + j*dw (dilation (dh, dw)); OH = (H + 2*ph - dh*(kh-1) - 1) // sh + 1,
    rounded up with ceil_mode (a last window must start inside the input or
    the top/left padding). argmax holds the index i*kw + j of each winner
    within its window (row-major, padded taps counted), uint8 when kh*kw <= 256
    else int32. Padding counts as -inf; ties go to the first maximum; NaN wins.
    """
    fn = "maxpool2d_forward"
    _check_array(fn, "x", x, 4)
    cdef fc_pool_shape s = _pool_shape(fn, x.shape, kernel, stride, padding, dilation, ceil_mode)
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


def maxpool2d_backward(dy, argmax, x_shape, kernel, stride, padding, dilation=1, ceil_mode=False):
    """Route dy (N, C, OH, OW) to the recorded argmax: returns dx of x_shape."""
    fn = "maxpool2d_backward"
    _check_array(fn, "dy", dy, 4)
    x_shape = _x_shape(fn, x_shape)
    cdef fc_pool_shape s = _pool_shape(fn, x_shape, kernel, stride, padding, dilation, ceil_mode)
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

cdef fc_int _divisor(str fn, divisor_override) except -1:
    """divisor_override as the C argument: 0 for None, else an int >= 1."""
    if divisor_override is None:
        return 0
    if isinstance(divisor_override, bool) or not isinstance(divisor_override, (int, np.integer)):
        raise TypeError(f"{fn}: `divisor_override` must be None or an int; got {divisor_override!r}")
    if not 1 <= divisor_override <= _MAX_ELEMENTS:
        raise ValueError(f"{fn}: `divisor_override` must be None or in [1, 2**48]; got {divisor_override}")
    return divisor_override


def avgpool2d_forward(x, kernel, stride, padding, ceil_mode=False, count_include_pad=True,
                      divisor_override=None):
    """Average-pool x (N, C, H, W): returns y (N, C, OH, OW), as PyTorch's avg_pool2d.

    OH = (H + 2*ph - kh) // sh + 1, rounded up with ceil_mode (a last window
    must start inside the input or the top/left padding). Each window's sum of
    real elements is divided by divisor_override if given, else by its size
    within the padded input (count_include_pad; kh * kw unless a ceil_mode
    window runs past the padding), else by its count of real elements.
    """
    fn = "avgpool2d_forward"
    _check_array(fn, "x", x, 4)
    cdef fc_pool_shape s = _pool_shape(fn, x.shape, kernel, stride, padding, 1, ceil_mode)
    cdef int include_pad = _flag(fn, "count_include_pad", count_include_pad)
    cdef fc_int divisor = _divisor(fn, divisor_override)
    y = np.empty((s.n, s.c, s.oh, s.ow), dtype=np.float32)
    cdef int nt = _team(_num_threads)
    cdef const float *px = _fptr(x)
    cdef float *py = _fptr(y)
    with nogil:
        fc_avgpool2d_forward(&s, include_pad, divisor, px, py, nt)
    return y


def avgpool2d_backward(dy, x_shape, kernel, stride, padding, ceil_mode=False, count_include_pad=True,
                       divisor_override=None):
    """Spread dy (N, C, OH, OW) evenly over each window, divided as the forward: returns dx of x_shape."""
    fn = "avgpool2d_backward"
    _check_array(fn, "dy", dy, 4)
    x_shape = _x_shape(fn, x_shape)
    cdef fc_pool_shape s = _pool_shape(fn, x_shape, kernel, stride, padding, 1, ceil_mode)
    cdef int include_pad = _flag(fn, "count_include_pad", count_include_pad)
    cdef fc_int divisor = _divisor(fn, divisor_override)
    _check_shape(fn, "dy", dy, (s.n, s.c, s.oh, s.ow))
    dx = np.empty(x_shape, dtype=np.float32)
    cdef int nt = _team(_num_threads)
    cdef const float *pdy = _fptr(dy)
    cdef float *pdx = _fptr(dx)
    with nogil:
        fc_avgpool2d_backward(&s, include_pad, divisor, pdy, pdx, nt)
    return dx
