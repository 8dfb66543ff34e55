# Adaptive average and max pooling (any output size; 1 x 1 is the global pool).
# (an include of fastconv/_kernels.pyx: one module, fastconv._kernels)

cdef extern from "fastconv.h" nogil:
    ctypedef struct fc_adaptive_shape:
        fc_int n, c, h, w, oh, ow
    void fc_adaptive_pool2d_forward(const fc_adaptive_shape *s, int max, const float *x, float *y,
                                    int64_t *argmax, int nthreads)
    void fc_adaptive_pool2d_backward(const fc_adaptive_shape *s, const float *dy, const int64_t *argmax,
                                     float *dx, int nthreads)


cdef fc_adaptive_shape _adaptive_shape(str fn, tuple x_shape, output_size) except *:
    cdef fc_adaptive_shape s
    s.n, s.c, s.h, s.w = x_shape
    if s.c < 1 or s.h < 1 or s.w < 1:
        raise ValueError(f"{fn}: input (`x`, `x_shape`) must have non-zero C, H and W; got shape {x_shape}")
    s.oh, s.ow = _pair(fn, "output_size", output_size, 1)
    if (<object>s.oh) * s.ow * max(s.n, 1) * s.c > _MAX_ELEMENTS:  # an empty batch too: NumPy refuses the shape
        raise ValueError(f"{fn}: `output_size` {(s.oh, s.ow)} gives an output {(s.n, s.c, s.oh, s.ow)} "
                         f"of more than {_MAX_ELEMENTS} elements")
    if (<object>s.oh) * s.h >= 2**62 or (<object>s.ow) * s.w >= 2**62:  # the window bounds i * H in C
        raise ValueError(f"{fn}: `output_size` {(s.oh, s.ow)} times the input size {(s.h, s.w)} must be < 2**62")
    return s


cdef _adaptive_forward(str fn, x, output_size, bint is_max):
    _check_array(fn, "x", x, 4)
    cdef fc_adaptive_shape s = _adaptive_shape(fn, x.shape, output_size)
    out_shape = (s.n, s.c, s.oh, s.ow)
    _check_alloc(fn, "the output", out_shape, f"`x` {x.shape}, `output_size` {(s.oh, s.ow)}", 12 if is_max else 4)
    y = np.empty(out_shape, dtype=np.float32)
    am = np.empty(out_shape if is_max else (0,), dtype=np.int64)
    cdef int nt = _team(_num_threads)
    cdef const float *px = _fptr(x)
    cdef float *py = _fptr(y)
    cdef int64_t *pam = <int64_t *>cnp.PyArray_DATA(am)
    with nogil:
        fc_adaptive_pool2d_forward(&s, is_max, px, py, pam, nt)
    return (y, am) if is_max else y


cdef _adaptive_backward(str fn, dy, argmax, x_shape, bint is_max):
    _check_array(fn, "dy", dy, 4)
    x_shape = _x_shape(fn, x_shape)
    if min(dy.shape[2:]) < 1:  # its OH x OW is the output size
        raise ValueError(f"{fn}: `dy` must have a non-zero height and width; got shape {dy.shape}")
    cdef fc_adaptive_shape s = _adaptive_shape(fn, x_shape, dy.shape[2:])
    if dy.shape[:2] != x_shape[:2]:
        raise ValueError(f"{fn}: `dy` must have the N and C of `x_shape` {x_shape[:2]}; got {dy.shape}")
    cdef const int64_t *pam = NULL
    if is_max:
        if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int64:
            raise TypeError(f"{fn}: `argmax` must be an int64 array; got {_describe(argmax)}")
        if not argmax.flags.c_contiguous or not argmax.flags.aligned:
            raise ValueError(f"{fn}: `argmax` must be C-contiguous and aligned; got {_describe(argmax)}")
        _check_shape(fn, "argmax", argmax, dy.shape)
        if argmax.size and (argmax.min() < 0 or argmax.max() >= s.h * s.w):  # C writes dx[argmax]
            raise ValueError(f"{fn}: `argmax` must hold indices in [0, {s.h * s.w}) of an H x W plane; "
                             f"got values in [{argmax.min()}, {argmax.max()}]")
        pam = <const int64_t *>cnp.PyArray_DATA(argmax)
    dx = np.empty(x_shape, dtype=np.float32)
    cdef int nt = _team(_num_threads)
    cdef const float *pdy = _fptr(dy)
    cdef float *pdx = _fptr(dx)
    with nogil:
        fc_adaptive_pool2d_backward(&s, pdy, pam, pdx, nt)
    return dx


def adaptive_avgpool2d_forward(x, output_size):
    """Adaptive average pool of x (N, C, H, W) to y (N, C, OH, OW): cell (i, j)
    averages rows [floor(i H / OH), ceil((i + 1) H / OH)) and the columns
    likewise, as PyTorch's AdaptiveAvgPool2d; output_size 1 is the global mean."""
    return _adaptive_forward("adaptive_avgpool2d_forward", x, output_size, False)


def adaptive_avgpool2d_backward(dy, x_shape):
    """Spread dy (N, C, OH, OW) evenly over each adaptive window: returns dx of x_shape."""
    return _adaptive_backward("adaptive_avgpool2d_backward", dy, None, x_shape, False)


def adaptive_maxpool2d_forward(x, output_size):
    """Adaptive max pool of x (N, C, H, W) (windows as adaptive_avgpool2d_forward):
    returns (y, argmax), argmax int64 holding each winner's index in its H x W
    plane, as PyTorch's return_indices. Ties: the first in row-major order; NaN wins."""
    return _adaptive_forward("adaptive_maxpool2d_forward", x, output_size, True)


def adaptive_maxpool2d_backward(dy, argmax, x_shape):
    """Route dy (N, C, OH, OW) to the recorded argmax: returns dx of x_shape."""
    return _adaptive_backward("adaptive_maxpool2d_backward", dy, argmax, x_shape, True)
