# The locally connected layer: a convolution with a filter per output position.
# (an include of fastconv/_kernels.pyx: one module, fastconv._kernels)

cdef extern from "fastconv.h" nogil:
    int fc_locally_connected2d_forward(const fc_conv_shape *s, const float *x, const float *weight,
                                       const float *bias, float *y, int nthreads)
    int fc_locally_connected2d_backward(const fc_conv_shape *s, const float *x, const float *weight,
                                        const float *dy, float *dx, float *dweight, float *dbias,
                                        int nthreads)


cdef fc_conv_shape _local_shape(str fn, x, weight, stride, padding) except *:
    """The geometry of x (N, C, H, W) with weight (OH, OW, K, C, kh, kw)."""
    _check_array(fn, "x", x, 4)
    _check_array(fn, "weight", weight, 6)
    cdef fc_conv_shape s = _conv_geometry(fn, x.shape, weight.shape[2:], stride, padding, "x", "weight")
    if weight.shape[:2] != (s.oh, s.ow):
        raise ValueError(f"{fn}: `weight` must have a filter per output position, shape "
                         f"({s.oh}, {s.ow}, K, C, kh, kw) for `x` {x.shape}, `stride` {(s.sh, s.sw)} "
                         f"and `padding` {(s.ph, s.pw)}; got {weight.shape}")
    _check_alloc(fn, "the output", (s.n, s.k, s.oh, s.ow), f"`x` {x.shape}, `weight` {weight.shape}")
    return s


def locally_connected2d_forward(x, weight, bias, stride, padding):
    """y[n, k, oy, ox] = sum_{c,i,j} x_pad[n, c, oy*sh + i, ox*sw + j] * weight[oy, ox, k, c, i, j]
    + bias[k, oy, ox]: x (N, C, H, W), weight (OH, OW, K, C, kh, kw), bias (K, OH, OW) or None."""
    fn = "locally_connected2d_forward"
    cdef fc_conv_shape s = _local_shape(fn, x, weight, stride, padding)
    cdef const float *pb = NULL
    if bias is not None:
        _check_array(fn, "bias", bias, 3)
        _check_shape(fn, "bias", bias, (s.k, s.oh, s.ow))
        pb = _fptr(bias)
    y = np.empty((s.n, s.k, s.oh, s.ow), dtype=np.float32)
    if s.n == 0:
        return y
    cdef const float *px = _fptr(x)
    cdef const float *pw = _fptr(weight)
    cdef float *py = _fptr(y)
    cdef int rc, nt = _team(_num_threads)
    with nogil:
        rc = fc_locally_connected2d_forward(&s, px, pw, pb, py, nt)
    if rc != 0:
        raise MemoryError(f"{fn}: could not allocate the patch buffers")
    return y


def locally_connected2d_backward(x, weight, dy, stride, padding, need_dx=True):
    """Gradients of locally_connected2d_forward: (dx or None, dweight, dbias)."""
    fn = "locally_connected2d_backward"
    cdef fc_conv_shape s = _local_shape(fn, x, weight, stride, padding)
    _check_array(fn, "dy", dy, 4)
    _check_shape(fn, "dy", dy, (s.n, s.k, s.oh, s.ow))
    need_dx = _flag(fn, "need_dx", need_dx)
    if need_dx:  # every position's patch gradients are kept until dx adds them
        _check_alloc(fn, "the patch gradients", (s.oh * s.ow, s.n, s.c * s.kh * s.kw),
                     f"`x` {x.shape}, `weight` {weight.shape}")
    if s.n == 0:  # an empty batch: zero gradients
        return (np.zeros(x.shape, np.float32) if need_dx else None, np.zeros(weight.shape, np.float32),
                np.zeros((s.k, s.oh, s.ow), np.float32))
    dx = np.empty(x.shape, dtype=np.float32) if need_dx else None
    dweight = np.empty(weight.shape, dtype=np.float32)
    dbias = np.empty((s.k, s.oh, s.ow), dtype=np.float32)
    cdef const float *px = _fptr(x)
    cdef const float *pw = _fptr(weight)
    cdef const float *pdy = _fptr(dy)
    cdef float *pdx = _fptr(dx) if need_dx else NULL
    cdef float *pdw = _fptr(dweight)
    cdef float *pdb = _fptr(dbias)
    cdef int rc, nt = _team(_num_threads)
    with nogil:
        rc = fc_locally_connected2d_backward(&s, px, pw, pdy, pdx, pdw, pdb, nt)
    if rc != 0:
        raise MemoryError(f"{fn}: could not allocate the patch buffers")
    return dx, dweight, dbias
