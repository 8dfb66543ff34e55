# 2-D convolution: forward, conv + max-pool, backward, and what the planner picks.
# (an include of fastconv/_kernels.pyx: one module, fastconv._kernels)

cdef extern from "fastconv.h" nogil:
    ctypedef struct fc_conv_shape:
        fc_int n, c, h, w, k, kh, kw, sh, sw, ph, pw, oh, ow, dh, dw, groups
    int fc_conv2d_forward(const fc_conv_shape *s, int precision, const float *x, const float *weight,
                          const float *bias, int relu, float *y, int nthreads)
    int fc_conv2d_maxpool_forward(const fc_conv_shape *s, int precision, const float *x,
                                  const float *weight, const float *bias, int relu, float *pooled,
                                  uint8_t *argmax, int nthreads)
    int FC_CONV_FORWARD, FC_CONV_DX, FC_CONV_DWEIGHT
    int fc_conv_explain(const fc_conv_shape *s, int precision, int direction, int need_dx, int kind,
                        int algorithm, char *why, size_t len)
    int fc_conv_failure(int *direction)
    int fc_conv2d_backward(const fc_conv_shape *s, int precision, const float *x, const float *weight,
                           const float *dy, float *dx, float *dweight, float *dbias,
                           int nthreads)


cdef fc_conv_shape _conv_shape(str fn, x, weight, stride, padding, dilation=1, groups=1) except *:
    _check_array(fn, "x", x, 4)
    _check_array(fn, "weight", weight, 4)
    cdef fc_conv_shape s = _conv_geometry(fn, x.shape, weight.shape, stride, padding, "x", "weight",
                                          dilation, groups)
    n, c, k, kh, kw, oh, ow = (int(v) for v in (s.n, s.c // s.groups, s.k, s.kh, s.kw, s.oh, s.ow))
    because = f"`x` {x.shape}, `weight` {weight.shape}, `stride` {(s.sh, s.sw)}, `padding` {padding!r}"
    _check_alloc(fn, "the output", (n, k, oh, ow), because)
    _check_alloc(fn, "the column matrix", (c * kh * kw, oh, ow), because)
    return s


cdef tuple _conv_padding(str fn, padding):
    """((top, bottom), (left, right)) from an int, an (h, w) pair or a pair of (before, after) pairs."""
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
            isinstance(e, (tuple, list)) for e in padding):
        h = _pair(fn, "padding", padding[0], 0)
        w = _pair(fn, "padding", padding[1], 0)
        return h, w
    ph, pw = _pair(fn, "padding", padding, 0)
    return (ph, ph), (pw, pw)


cdef fc_conv_shape _conv_geometry(str fn, tuple x_shape, tuple w_shape, stride, padding, str x_name,
                                  str w_name, dilation=1, groups=1) except *:
    """The convolution of an input of x_shape with weights of w_shape (4 ints each, >= 0)."""
    cdef fc_conv_shape s
    s.n, s.c, s.h, s.w = x_shape
    s.k, wc, s.kh, s.kw = w_shape
    if s.c < 1 or s.h < 1 or s.w < 1:
        raise ValueError(f"{fn}: `{x_name}` must have non-zero C, H and W; got shape {x_shape}")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"{fn}: `groups` must be an int; got {groups!r}")
    if groups < 1 or s.c % groups or s.k % groups:
        raise ValueError(f"{fn}: `groups` must be >= 1 and divide the input channels ({s.c}, of "
                         f"`{x_name}` {x_shape}) and the output channels ({s.k}, of `{w_name}` "
                         f"{w_shape}); got groups={groups}")
    s.groups = groups
    if wc * groups != s.c:
        grouped = f" (C / groups)" if groups > 1 else ""
        raise ValueError(
            f"{fn}: `{w_name}` must have {s.c // groups} input channels{grouped} to match "
            f"`{x_name}` {x_shape}{f' with groups={groups}' if groups > 1 else ''}; got weight shape {w_shape}")
    if s.kh < 1 or s.kw < 1 or s.k < 1 or s.c < 1:
        raise ValueError(f"{fn}: `{w_name}` must have non-zero sizes; got shape {w_shape}")
    s.sh, s.sw = _pair(fn, "stride", stride, 1)
    s.dh, s.dw = _pair(fn, "dilation", dilation, 1)
    (s.ph, pb), (s.pw, pr) = _conv_padding(fn, padding)
    s.oh = _out_size(fn, s.h, s.kh, s.sh, s.ph, "height", w_name, pb, s.dh)
    s.ow = _out_size(fn, s.w, s.kw, s.sw, s.pw, "width", w_name, pr, s.dw)
    # Python ints: the same products in fc_int could wrap around.
    n, c, k, kh, kw, oh, ow = (int(v) for v in (s.n, s.c // s.groups, s.k, s.kh, s.kw, s.oh, s.ow))
    if n * k * oh * ow > _MAX_ELEMENTS or c * kh * kw * oh * ow > _MAX_ELEMENTS:
        raise ValueError(f"{fn}: output or column matrix too large for {x_name} {x_shape}, {w_name} "
                         f"{w_shape}: `{x_name}`, `{w_name}`, `stride` and `padding` must give at most "
                         f"{_MAX_ELEMENTS} elements; got output {(n, k, oh, ow)}")
    return s


def conv2d_forward(x, weight, bias, stride, padding, relu=False, precision="float32"):
    """y = conv2d(x, weight) + bias, zero padding (cross-correlation, as PyTorch).

    x (N, C, H, W), weight (K, C, kh, kw), bias (K,) or None; stride and
    padding are ints or (h, w) pairs. Returns y (N, K, OH, OW) with
    OH = (H + 2*ph - kh) // sh + 1 and likewise OW; with relu true,
    max(y, 0) (NaN kept, as relu_forward) computed in the same pass.
    ``precision="bfloat16"``: x and weight rounded to bf16, the taps summed
    in float32 by sgemm's bf16 rule (the same bits whichever GEMM algorithm
    runs); bias, ReLU and y float32.
    """
    return _conv_forward("conv2d_forward", x, weight, bias, stride, padding, 1, 1, relu, precision)


def conv2d_ex_forward(x, weight, bias, stride, padding, dilation, groups, relu=False, precision="float32"):
    """conv2d_forward with dilation and groups, as PyTorch's conv2d.

    weight (K, C / groups, kh, kw): output channel k reads the input channels
    of group k // (K / groups); groups == C is the depthwise convolution.
    dilation: an int or (h, w) pair, the spacing of the taps. padding: an
    int, an (h, w) pair or ((top, bottom), (left, right)), as padding="same"
    gives an even kernel. OH = (H + top + bottom - dh*(kh-1) - 1) // sh + 1.
    """
    return _conv_forward("conv2d_ex_forward", x, weight, bias, stride, padding, dilation, groups,
                         relu, precision)


def _conv_forward(str fn, x, weight, bias, stride, padding, dilation, groups, relu, precision):
    cdef int prec = _precision(fn, precision)
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"{fn}: `relu` must be a bool; got {relu!r}")
    cdef fc_conv_shape s = _conv_shape(fn, x, weight, stride, padding, dilation, groups)
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
        rc = fc_conv2d_forward(&s, prec, px, pw, pb, fuse_relu, py, nt)
    if rc != 0:
        raise MemoryError(f"{fn}: could not allocate {_conv_failure()}")
    return y


def conv2d_maxpool_forward(x, weight, bias, stride, padding, relu=False, precision="float32"):
    """The 2x2 stride-2 max-pool of conv2d_forward(x, weight, bias, stride,
    padding, relu): returns (y, argmax) as maxpool2d_forward(conv, 2, 2, 0)
    does, with the same bits, for conv outputs of at least 2x2. Where the
    convolution runs as Winograd, each 2x2 output tile is one window and the
    full-size output is never stored (the layers of a Sequential use it
    for a Conv2d, ReLU, MaxPool2d(2) chain). ``precision``: as conv2d_forward's.
    """
    fn = "conv2d_maxpool_forward"
    cdef int prec = _precision(fn, precision)
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
        rc = fc_conv2d_maxpool_forward(&s, prec, px, pw, pb, fuse_relu, py, pam, nt)
    if rc != 0:
        raise MemoryError(f"{fn}: could not allocate {_conv_failure()}")
    return y, am


def conv2d_backward(x, weight, dy, stride, padding, need_dx=True, precision="float32"):
    """Gradients of conv2d_forward: returns (dx or None, dweight, dbias).

    dy is dL/dy, shape (N, K, OH, OW). dx is skipped (None) when need_dx is
    false, as for a network's first layer. ``precision="bfloat16"``: the dx
    and dW GEMMs in bf16 (x, weight and dy rounded to bf16, sums in float32);
    dbias and all outputs float32.
    """
    return _conv_backward("conv2d_backward", x, weight, dy, stride, padding, 1, 1, need_dx, precision)


def conv2d_ex_backward(x, weight, dy, stride, padding, dilation, groups, need_dx=True, precision="float32"):
    """Gradients of conv2d_ex_forward: returns (dx or None, dweight, dbias)."""
    return _conv_backward("conv2d_ex_backward", x, weight, dy, stride, padding, dilation, groups,
                          need_dx, precision)


def _conv_backward(str fn, x, weight, dy, stride, padding, dilation, groups, need_dx, precision):
    cdef int prec = _precision(fn, precision)
    cdef fc_conv_shape s = _conv_shape(fn, x, weight, stride, padding, dilation, groups)
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
        rc = fc_conv2d_backward(&s, prec, px, pw, pdy, pdx, pdw, pdb, nt)
    if rc != 0:
        raise MemoryError(f"{fn}: could not allocate {_conv_failure()}")
    return dx, dweight, dbias


def plan_conv2d(x_shape, weight_shape, stride=1, padding=0, need_dx=True, mode="auto",
                precision="float32", dilation=1, groups=1):
    """What the convolution planner picks, on the current ISA, for a
    convolution of input ``x_shape`` (N, C, H, W) and weights ``weight_shape``
    (K, C / groups, kh, kw) under ``mode`` (as set_conv_algorithm's; default auto),
    taking the inputs to be in range: ``{"forward": (name, why), "dx": ...,
    "dweight": ...}``, ``why`` being the planner's reason (a grouped
    convolution that no grouped algorithm takes runs one group at a time:
    then the name is the algorithm of each group). ``need_dx``: whether
    the backward computes dx (dW's choice depends on it); False gives
    ``"dx": None``. The conv + max-pool forward runs the forward's algorithm.
    ``precision``: as the conv kernels' (bf16 runs the GEMM algorithms, Winograd, and
    direct's forward for K = 16, 32, ...; not depthwise).
    """
    fn = "plan_conv2d"
    cdef int prec = _precision(fn, precision)
    kind, algorithm = _conv_mode(fn, mode)
    cdef fc_conv_shape s = _conv_geometry(fn, _shape4(fn, "x_shape", x_shape),
                                          _shape4(fn, "weight_shape", weight_shape, "(K, C, kh, kw)"),
                                          stride, padding, "x_shape", "weight_shape", dilation, groups)
    need_dx = _flag(fn, "need_dx", need_dx)
    cdef char why[1024]
    plan = {}
    for key, direction in (("forward", FC_CONV_FORWARD), ("dx", FC_CONV_DX), ("dweight", FC_CONV_DWEIGHT)):
        if key == "dx" and not need_dx:
            plan[key] = None
            continue
        a = fc_conv_explain(&s, prec, direction, need_dx, kind, algorithm, why, sizeof(why))
        plan[key] = (CONV_ALGORITHMS[a], why.decode())
    return plan


cdef str _conv_failure():
    """Which algorithm's workspace the last conv call of this thread could not allocate."""
    cdef int direction
    algorithm = fc_conv_failure(&direction)
    if algorithm < 0:
        return "a workspace"
    return f"the {CONV_ALGORITHMS[algorithm]} workspace (for {('the forward', 'dx', 'dW', 'dx and dW')[direction]})"
