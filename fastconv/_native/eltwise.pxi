# Element-wise kernels: bias_add and the activations.
# (an include of fastconv/_kernels.pyx: one module, fastconv._kernels)

cdef extern from "fastconv.h" nogil:
    void fc_bias_add(fc_int outer, fc_int channels, fc_int inner, float *y,
                     const float *bias, int nthreads)

    int FC_ACT_LEAKY_RELU, FC_ACT_ELU, FC_ACT_SIGMOID, FC_ACT_TANH, FC_ACT_RELU
    void fc_activation_forward(int op, fc_int count, const float *x, float param, float *y,
                               int nthreads)
    void fc_activation_backward(int op, fc_int count, const float *dy, const float *a, float param,
                                float *dx, int nthreads)


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
# the residual add

cdef extern from "fastconv.h" nogil:
    void fc_add_relu(fc_int count, const float *a, const float *b, int relu, float *y, int nthreads)


def add_relu(a, b, relu):
    """y = a + b (same shapes), then max(y, 0) when ``relu`` (with relu_forward's
    NaN and -0 rules, so that it has the bits of relu_forward(a + b))."""
    fn = "add_relu"
    _check_any_rank(fn, "a", a)
    _check_any_rank(fn, "b", b)
    _check_shape(fn, "b", b, a.shape)
    cdef bint r = _flag(fn, "relu", relu)
    y = np.empty_like(a)
    cdef fc_int count = a.size
    cdef int nt = _team(_num_threads)
    cdef const float *pa = _fptr(a)
    cdef const float *pb = _fptr(b)
    cdef float *py = _fptr(y)
    with nogil:
        fc_add_relu(count, pa, pb, r, py, nt)
    return y
