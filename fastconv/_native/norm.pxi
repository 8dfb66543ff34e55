# Batch normalization.
# (an include of fastconv/_kernels.pyx: one module, fastconv._kernels)

cdef extern from "fastconv.h" nogil:
    void fc_batchnorm_forward(fc_int n, fc_int c, fc_int inner, const float *x, const float *weight,
                              const float *bias, float *mean, float *var, double eps,
                              int batch_stats, int relu, float *y, int nthreads)
    void fc_batchnorm_backward(fc_int n, fc_int c, fc_int inner, const float *dy,
                               const float *relu_y, const float *x, const float *weight,
                               const float *mean, const float *var, double eps, int batch_stats,
                               float *dx, float *dweight, float *dbias, int nthreads)


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


def batchnorm_forward(x, weight, bias, mean, var, eps, relu=False):
    """Batch normalization of x (N, C, *), per channel j:
    y = (x - mean[j]) / sqrt(var[j] + eps) * weight[j] + bias[j];
    with ``relu`` true, relu_forward(y) computed in the same pass (its bits).

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
    cdef int fuse_relu = _flag(fn, "relu", relu)
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
        fc_batchnorm_forward(cn, cc, ci, px, pw, pb, pm, pv, ceps, batch_stats, fuse_relu, py, nt)
    return y, mean, var


def batchnorm_backward(dy, x, weight, mean, var, eps, batch_stats, relu_y=None):
    """Gradients of batchnorm_forward: returns (dx, dweight, dbias).

    ``mean`` and ``var`` are the statistics the forward returned;
    ``batch_stats`` says whether they were the batch's own (training: the
    gradient also flows through them) or constants (running statistics).
    dweight = sum(dy * xhat) and dbias = sum(dy) per channel are returned
    also when ``weight`` is None. With ``relu_y`` (the output of the forward
    with ``relu``, shaped as x), dy is the gradient at that output: it is
    masked as relu_backward(dy, relu_y) does, in the same passes (its bits).
    """
    fn = "batchnorm_backward"
    n, c, inner = _channels(fn, x)
    _check_any_rank(fn, "dy", dy)
    _check_shape(fn, "dy", dy, x.shape)
    if relu_y is not None:
        _check_any_rank(fn, "relu_y", relu_y)
        _check_shape(fn, "relu_y", relu_y, x.shape)
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
    cdef const float *pry = _fptr_or_null(relu_y)
    cdef const float *px = _fptr(x)
    cdef const float *pw = _fptr_or_null(weight)
    cdef const float *pm = _fptr(mean)
    cdef const float *pv = _fptr(var)
    cdef float *pdx = _fptr(dx)
    cdef float *pdw = _fptr(dweight)
    cdef float *pdb = _fptr(dbias)
    with nogil:
        fc_batchnorm_backward(cn, cc, ci, pdy, pry, px, pw, pm, pv, ceps, cbatch, pdx, pdw, pdb, nt)
    return dx, dweight, dbias
