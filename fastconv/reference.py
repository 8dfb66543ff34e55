"""NumPy twins of the native kernels: same names, signatures and results.

These are the correctness oracle for ``fastconv._kernels`` in the tests, and
the ``reference`` backend (``fc.set_backend("reference")``). They favour
clarity over speed, but stay vectorized so that small networks train in
reasonable time. Validation is the native wrappers' job: the twins assume
valid input. They keep the input's float dtype, so the same twins run in
float64 for gradient checks (``fc.gradcheck``)
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _pair(v):
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def sgemm(A, B, C=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, precision="float32"):
    """C = alpha * op(A) @ op(B) + beta * C (C written in place when given); in bf16
    (``precision="bfloat16"``) with the native kernel's bits (see _bf16_matmul)."""
    a = A.T if trans_a else A
    b = B.T if trans_b else B
    if precision == "bfloat16":
        return _bf16_gemm(a, b, C, alpha, beta)
    prod = (a @ b) * a.dtype.type(alpha)
    if C is None:
        return prod
    if beta == 0.0:
        C[...] = prod  # BLAS semantics: C is not read when beta == 0
    else:
        C[...] = prod + C.dtype.type(beta) * C
    return C


# ---- bf16 mixed precision: the bits of csrc/kernels/bf16.h's contract --------

BF16_KC = 256  # FC_BF16_KC: the k blocks whose boundaries the bits depend on


def to_bfloat16(x):
    """x rounded to bf16, as uint16 bit patterns: nearest even, zero and denormals to the
    zero of their sign, NaN quieted, overflow to Inf (vcvtneps2bf16's rule), by uint32
    arithmetic."""
    u = np.array(x, dtype=np.float32, order="C").view(np.uint32)  # ascontiguousarray makes 0-d 1-d
    with np.errstate(over="ignore"):  # NaN patterns wrap; np.where drops them
        rounded = (u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    zero = (u & 0x7F800000) == 0
    out = np.where(nan, (u >> 16) | 0x40, np.where(zero, (u >> 16) & 0x8000, rounded))
    return out.astype(np.uint16)


def _bf16_values(x):
    """x rounded to bf16, as the float64 values (exact) of those bf16."""
    return (to_bfloat16(x).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _bf16_step(acc, a, b):
    """vdpbf16ps's multiply-add: acc + a * b rounded once (the float64 sum of a float32 and
    an exact bf16 product, rounded to float32, is), denormal results flushed to signed zero."""
    with np.errstate(over="ignore", invalid="ignore"):  # Inf and NaN as the instruction makes them
        r = (acc.astype(np.float64) + a * b).astype(np.float32)
    return np.where(np.abs(r) < np.finfo(np.float32).tiny, np.copysign(np.float32(0), r), r)


def _bf16_matmul(a, b):
    """The block sums S_b of op(A) (m x k) @ op(B) (k x n) in bf16: per block of BF16_KC
    values of k, each pair (2q, 2q+1) as vdpbf16ps takes it, 2q + 1 first (an odd block
    padded with a zero, whose +0 is added too)."""
    m, k = a.shape
    qa, qb = _bf16_values(a), _bf16_values(b)
    if k % 2:
        qa = np.concatenate([qa, np.zeros((m, 1))], axis=1)
        qb = np.concatenate([qb, np.zeros((1, qb.shape[1]))], axis=0)
    for p0 in range(0, k, BF16_KC):
        s = np.zeros((m, qb.shape[1]), np.float32)
        for p in range(p0, min(p0 + BF16_KC, qa.shape[1]), 2):
            s = _bf16_step(s, qa[:, p + 1, None], qb[None, p + 1])
            s = _bf16_step(s, qa[:, p, None], qb[None, p])
        yield s


def _bf16_gemm(a, b, C, alpha, beta):
    """C := alpha * S_0 (+ beta * C), then C := alpha * S_b + C, each product rounded."""
    f32 = np.float32
    out = np.zeros((a.shape[0], b.shape[1]), f32)
    for i, s in enumerate(_bf16_matmul(a, b)):
        with np.errstate(over="ignore", invalid="ignore"):
            v = f32(alpha) * s
            if i > 0:
                out = v + out
            elif C is not None and beta != 0.0:
                out = v + f32(beta) * C.astype(f32)
            else:
                out = v
    if C is None:
        return out
    C[...] = out
    return C


def _windows(x, kernel, stride, padding):
    """View of x (N, C, H, W) as (N, C, OH, OW, kh, kw) windows, zero-padded."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    return sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def _columns(x, kernel, stride, padding):
    """The column matrix of x, (C*kh*kw, N*OH*OW): row (c, i, j), column (n, oy, ox)."""
    win = _windows(x, kernel, stride, padding)  # N, C, OH, OW, kh, kw
    n, c, oh, ow, kh, kw = win.shape
    return win.transpose(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, n * oh * ow), (n, oh, ow)


def conv2d_forward(x, weight, bias, stride, padding, relu=False, precision="float32"):
    """y[n, k] = sum_{c,i,j} x_pad[n, c, oy*sh + i, ox*sw + j] * weight[k, c, i, j] + bias[k],
    then relu_forward(y) when relu is true. In bf16: the native GEMM algorithms' bits, the
    taps summed in (c, i, j) order by sgemm's bf16 rule (bf16 Winograd rounds its transformed
    operands instead, and bf16 direct sums channel pairs in its own order: within bf16
    rounding of these, not their bits; tests/test_conv2d_direct_bf16.py has direct's twin)."""
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"conv2d_forward: `relu` must be a bool; got {relu!r}")
    if precision == "bfloat16":
        cols, (n, oh, ow) = _columns(x, weight.shape[2:], stride, padding)
        y = sgemm(weight.reshape(weight.shape[0], -1), cols, precision=precision)
        y = y.reshape(-1, n, oh, ow).transpose(1, 0, 2, 3)
    else:
        win = _windows(x, weight.shape[2:], stride, padding)  # N, C, OH, OW, kh, kw
        y = np.einsum("ncyxij,kcij->nkyx", win, weight, optimize=True)
    if bias is not None:
        y += bias[None, :, None, None]
    y = np.ascontiguousarray(y, dtype=x.dtype)
    return relu_forward(y) if relu else y


def conv2d_maxpool_forward(x, weight, bias, stride, padding, relu=False, precision="float32"):
    """(y, argmax): the 2x2 stride-2 max-pool of conv2d_forward's output."""
    conv = conv2d_forward(x, weight, bias, stride, padding, relu, precision)
    if conv.shape[2] < 2 or conv.shape[3] < 2:
        raise ValueError(f"conv2d_maxpool_forward: `x` {x.shape[2:]} with `weight` "
                         f"{weight.shape[2:]}, `stride` {stride} and `padding` {padding} gives a "
                         f"convolution output of {conv.shape[2:]}; the 2x2 pool needs at least (2, 2)")
    return maxpool2d_forward(conv, 2, 2, 0)


def conv2d_backward(x, weight, dy, stride, padding, need_dx=True, precision="float32"):
    """(dx | None, dweight, dbias) of conv2d_forward for upstream gradient dy. In bf16 the
    GEMMs dy @ cols^T and W^T @ dy by sgemm's bf16 rule: within bf16 rounding of the
    native kernel, whose sums are cut by image groups and threads."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    k, _, kh, kw = weight.shape
    oh, ow = dy.shape[2:]
    bf16 = precision == "bfloat16"
    dy_mat = dy.transpose(1, 0, 2, 3).reshape(k, -1) if bf16 else None
    if bf16:
        cols, _ = _columns(x, (kh, kw), stride, padding)
        dweight = sgemm(dy_mat, cols, trans_b=True, precision=precision).reshape(weight.shape)
    else:
        win = _windows(x, (kh, kw), stride, padding)
        dweight = np.einsum("ncyxij,nkyx->kcij", win, dy, optimize=True).astype(x.dtype)
    dbias = dy.sum(axis=(0, 2, 3)).astype(x.dtype)
    dx = None
    if need_dx:
        if bf16:
            cols = sgemm(weight.reshape(k, -1), dy_mat, trans_a=True, precision=precision)
            cols = cols.reshape(c, kh, kw, n, oh, ow).transpose(3, 0, 1, 2, 4, 5)
        else:
            cols = np.einsum("nkyx,kcij->ncijyx", dy, weight, optimize=True)
        dx_pad = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        for i in range(kh):  # col2im: scatter-add each kernel tap back
            for j in range(kw):
                dx_pad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += cols[:, :, i, j]
        dx = np.ascontiguousarray(dx_pad[:, :, ph:ph + h, pw:pw + w])
    return dx, dweight, dbias


# -- dilated and grouped convolution (conv2d_ex_*) ----------------------------------------

def _conv_padding(padding):
    """((top, bottom), (left, right)) of an int, an (h, w) pair or a pair of pairs."""
    if np.isscalar(padding):
        return (int(padding),) * 2, (int(padding),) * 2
    h, w = padding
    return (_pair(h), _pair(w))


def _dilated_windows(x, kernel, stride, padding, dilation, pad_value=0.0):
    """View of x (N, C, H, W) as (N, C, OH, OW, kh, kw) windows of taps dilation apart,
    padding ((top, bottom), (left, right)) of pad_value."""
    (kh, kw), (sh, sw), (dh, dw) = _pair(kernel), _pair(stride), _pair(dilation)
    x = np.pad(x, ((0, 0), (0, 0)) + _conv_padding(padding), constant_values=pad_value)
    win = sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw]


def conv2d_ex_forward(x, weight, bias, stride, padding, dilation, groups, relu=False, precision="float32"):
    """conv2d_forward with taps dilation apart, output channel k reading the input channels
    of group k // (K / groups), padding ((top, bottom), (left, right)) allowed."""
    if precision == "bfloat16":  # a tolerance oracle: the inputs rounded to bf16, exact sums
        x, weight = (_bf16_values(a).astype(np.float32) for a in (x, weight))
    return _conv_forward("conv2d_ex_forward", x, weight, bias, stride, padding, dilation, groups,
                         relu)


def _grouped(a, groups, axis):
    """a with its axis `axis` split into (groups, size / groups)."""
    return a.reshape(a.shape[:axis] + (groups, a.shape[axis] // groups) + a.shape[axis + 1:])


def _conv_forward(fn, x, weight, bias, stride, padding, dilation, groups, relu):
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"{fn}: `relu` must be a bool; got {relu!r}")
    win = _grouped(_dilated_windows(x, weight.shape[2:], stride, padding, dilation), groups, 1)
    y = np.einsum("ngcyxij,gkcij->ngkyx", win, _grouped(weight, groups, 0), optimize=True)
    y = y.reshape((y.shape[0], weight.shape[0]) + y.shape[3:])
    if bias is not None:
        y += bias[None, :, None, None]
    y = np.ascontiguousarray(y, dtype=x.dtype)
    return relu_forward(y) if relu else y


def conv2d_ex_backward(x, weight, dy, stride, padding, dilation, groups, need_dx=True,
                       precision="float32"):
    """(dx | None, dweight, dbias) of conv2d_ex_forward for upstream gradient dy (in bf16 a
    tolerance oracle: x, weight and dy rounded to bf16, exact sums; dbias from dy as given)."""
    dbias = dy.sum(axis=(0, 2, 3)).astype(x.dtype)
    if precision == "bfloat16":
        x, weight, dy = (_bf16_values(a).astype(np.float32) for a in (x, weight, dy))
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    (top, bottom), (left, right) = _conv_padding(padding)
    n, c, h, w = x.shape
    k, _, kh, kw = weight.shape
    oh, ow = dy.shape[2:]
    win = _grouped(_dilated_windows(x, (kh, kw), stride, padding, dilation), groups, 1)
    dyg, wg = _grouped(dy, groups, 1), _grouped(weight, groups, 0)
    dweight = np.einsum("ngcyxij,ngkyx->gkcij", win, dyg, optimize=True).reshape(weight.shape)
    dweight = dweight.astype(x.dtype)
    dx = None
    if need_dx:
        cols = np.einsum("ngkyx,gkcij->ngcijyx", dyg, wg, optimize=True).reshape((n, c, kh, kw, oh, ow))
        dx_pad = np.zeros((n, c, h + top + bottom, w + left + right), dtype=x.dtype)
        for i in range(kh):  # col2im: scatter-add each kernel tap back
            for j in range(kw):
                dx_pad[:, :, i * dh:i * dh + sh * oh:sh, j * dw:j * dw + sw * ow:sw] += cols[:, :, i, j]
        dx = np.ascontiguousarray(dx_pad[:, :, top:top + h, left:left + w])
    return dx, dweight, dbias


def argmax_dtype(kernel):
    kh, kw = _pair(kernel)
    return np.dtype(np.uint8) if kh * kw <= 256 else np.dtype(np.int32)


def _pool_size(size, k, s, p, d=1, ceil_mode=False):
    """Outputs along one axis, PyTorch's rule: with ceil_mode rounded up, but the
    last window must start inside the input or the padding before it."""
    span = d * (k - 1) + 1
    out = (size + 2 * p - span + (s - 1 if ceil_mode else 0)) // s + 1
    return out - 1 if ceil_mode and (out - 1) * s >= size + p else out


def _pool_padding(x_shape, kernel, stride, padding, dilation, ceil_mode):
    """((top, bottom), (left, right)): the padding, and after it as much more as
    ceil_mode's last windows run past it, so that every window is a full view."""
    sides = []
    for size, k, s, p, d in zip(x_shape[2:], _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)):
        out = _pool_size(size, k, s, p, d, ceil_mode)
        sides.append((p, max(p, (out - 1) * s + d * (k - 1) + 1 - size - p)))
    return tuple(sides)


def maxpool2d_forward(x, kernel, stride, padding, dilation=1, ceil_mode=False):
    """(y, argmax): window maxima and each winner's row-major index in its window.

    Padding is -inf. Ties go to the first maximum; a NaN wins over numbers and
    the last NaN over earlier ones (PyTorch's scan rule).
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)
    sides = _pool_padding(x.shape, kernel, stride, padding, dilation, ceil_mode)
    win = _dilated_windows(x, kernel, stride, sides, dilation, pad_value=-np.inf)
    flat = win.reshape(win.shape[:4] + (kh * kw,))
    nan = np.isnan(flat)
    first_max = np.argmax(flat, axis=-1)  # np.argmax returns the first NaN if any, else first max
    last_nan = kh * kw - 1 - np.argmax(nan[..., ::-1], axis=-1)
    am = np.where(nan.any(axis=-1), last_nan, first_max)
    # A window of -inf and padding points at its first real tap, as in PyTorch.
    oh, ow = am.shape[2:]
    i0 = -(np.minimum(np.arange(oh) * sh - ph, 0) // dh)[:, None] * kw  # ceil((ph - oy*sh) / dh), >= 0
    j0 = -(np.minimum(np.arange(ow) * sw - pw, 0) // dw)[None, :]
    all_neg_inf = np.all(flat == -np.inf, axis=-1)
    am = np.where(all_neg_inf, i0 + j0, am)
    y = np.take_along_axis(flat, am[..., None], axis=-1)[..., 0]
    return np.ascontiguousarray(y, dtype=x.dtype), am.astype(argmax_dtype(kernel))


def maxpool2d_backward(dy, argmax, x_shape, kernel, stride, padding, dilation=1, ceil_mode=False):
    """dx of x_shape: each dy[n, c, oy, ox] added at its argmax position."""
    (_, kw), (sh, sw), (ph, pw), (dh, dw) = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = x_shape
    oh, ow = dy.shape[2:]
    am = argmax.astype(np.int64)
    rows = np.arange(oh)[:, None] * sh - ph + am // kw * dh
    cols = np.arange(ow)[None, :] * sw - pw + am % kw * dw
    flat_idx = (np.arange(n * c).reshape(n, c, 1, 1) * h + rows) * w + cols
    dx = np.zeros(n * c * h * w, dtype=dy.dtype)
    np.add.at(dx, flat_idx.ravel(), dy.ravel())
    return dx.reshape(x_shape)


def relu_forward(x):
    """y = max(x, 0); NaN is kept."""
    return np.where(x < 0, x.dtype.type(0), x)


def relu_backward(dy, y):
    """dx = dy where y > 0 else 0; dy passes where y is NaN."""
    return np.where(y <= 0, dy.dtype.type(0), dy)


def bias_add(y, bias):
    """In place: y[:, j, ...] += bias[j]; returns y."""
    y += bias.reshape((1, -1) + (1,) * (y.ndim - 2))
    return y


# ---------------------------------------------------------------------------
# activations. np.where evaluates both branches everywhere, so each formula is
# written to stay finite on the branch it discards (exp of a value <= 0 only).
# Where a result is inf or NaN by IEEE rules (inf * 0, a product past the
# float range) that is the answer, as in C and PyTorch: no warning for it.
# np.asarray keeps a 0-d input's result an array (ufuncs return scalars).

_ieee = np.errstate(over="ignore", invalid="ignore")


@_ieee
def leaky_relu_forward(x, negative_slope):
    """y = x where x > 0, else negative_slope * x."""
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


@_ieee
def leaky_relu_backward(dy, x, negative_slope):
    """dx = dy where x > 0, else negative_slope * dy."""
    return np.where(x > 0, dy, dy * dy.dtype.type(negative_slope))


def _not_positive(x):
    """x with its positive entries set to 0: what ELU exponentiates, so exp
    never overflows (-0.0 and NaN kept)."""
    return np.where(x > 0, x.dtype.type(0), x)


@_ieee
def elu_forward(x, alpha):
    """y = x where x > 0, else alpha * expm1(x)."""
    return np.where(x > 0, x, np.expm1(_not_positive(x)) * x.dtype.type(alpha))


@_ieee
def elu_backward(dy, x, alpha):
    """dx = dy where x > 0, else dy * alpha * exp(x) (NaN at a NaN x)."""
    return np.where(x > 0, dy, dy * dy.dtype.type(alpha) * np.exp(_not_positive(x)))


@_ieee
def sigmoid_forward(x):
    """y = 1 / (1 + exp(-x)) as (1 or e) / (1 + e) with e = exp(-|x|) <= 1."""
    e = np.exp(-np.abs(x))
    return np.asarray(np.where(x >= 0, x.dtype.type(1), e) / (1 + e))


@_ieee
def sigmoid_backward(dy, y):
    """dx = dy * (1 - y) * y."""
    return np.asarray(dy * (1 - y) * y)


def tanh_forward(x):
    """y = tanh(x)."""
    return np.asarray(np.tanh(x))


@_ieee
def tanh_backward(dy, y):
    """dx = dy * (1 - y * y)."""
    return np.asarray(dy * (1 - y * y))


# ---------------------------------------------------------------------------
# batchnorm: statistics in float64, the rest in the input's dtype, in the
# kernel's order of operations.

def _per_channel(x):
    """The axes a per-channel reduction of x (N, C, *) sums over, and the shape
    that broadcasts a (C,) vector against x."""
    return (0,) + tuple(range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)


def _scale(weight, var, eps, dtype):
    """(invstd, weight * invstd as dtype); invstd = 1 / sqrt(var + eps) in float64."""
    invstd = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    return invstd, (invstd if weight is None else invstd * weight).astype(dtype)


@_ieee
def batchnorm_forward(x, weight, bias, mean, var, eps, relu=False):
    """(y, mean, var): y = (x - mean) / sqrt(var + eps) * weight + bias per channel,
    then relu_forward(y) when relu; mean/var None: the batch mean and biased
    variance over N and the trailing axes."""
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"batchnorm_forward: `relu` must be a bool; got {relu!r}")
    axes, shape = _per_channel(x)
    if mean is None:
        x64 = x.astype(np.float64)
        m = x64.mean(axis=axes)
        mean = m.astype(x.dtype)
        var = np.square(x64 - m.reshape(shape)).mean(axis=axes).astype(x.dtype)
    _, scale = _scale(weight, var, eps, x.dtype)
    shift = np.zeros_like(scale) if bias is None else bias
    y = ((x - mean.reshape(shape)) * scale.reshape(shape) + shift.reshape(shape)).astype(x.dtype, copy=False)
    return relu_forward(y) if relu else y, mean, var


@_ieee
def batchnorm_backward(dy, x, weight, mean, var, eps, batch_stats, relu_y=None):
    """(dx, dweight, dbias) of batchnorm_forward; through the batch statistics
    too when batch_stats. With relu_y (the forward's output with relu), dy is
    first relu_backward(dy, relu_y)."""
    if relu_y is not None:
        if getattr(relu_y, "shape", None) != x.shape:
            raise ValueError(f"batchnorm_backward: `relu_y` must have shape {x.shape}; "
                             f"got {getattr(relu_y, 'shape', type(relu_y).__name__)}")
        dy = relu_backward(dy, relu_y)
    axes, shape = _per_channel(x)
    count = max(x.size // max(x.shape[1], 1), 1)
    xc = x - mean.reshape(shape)
    sdy = dy.sum(axis=axes, dtype=np.float64)
    sdyx = (dy.astype(np.float64) * (x.astype(np.float64) - mean.reshape(shape))).sum(axis=axes)
    invstd, scale = _scale(weight, var, eps, x.dtype)
    dweight, dbias = (sdyx * invstd).astype(x.dtype), sdy.astype(x.dtype)
    if batch_stats:
        gm, k = (sdy / count).astype(x.dtype), (sdyx * invstd * invstd / count).astype(x.dtype)
        dx = (dy - gm.reshape(shape) - xc * k.reshape(shape)) * scale.reshape(shape)
    else:
        dx = dy * scale.reshape(shape)
    return dx.astype(x.dtype, copy=False), dweight, dbias


# ---------------------------------------------------------------------------
# avgpool2d

def _avg_divisors(x_shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, dtype):
    """(OH, OW) divisors, PyTorch's: the override; or each window's size within
    the padded input (count_include_pad), or its count of real elements."""
    if divisor_override is not None:
        return dtype.type(divisor_override)
    (ph, pw), sides = _pair(padding), _pool_padding(x_shape, kernel, stride, padding, 1, ceil_mode)
    counted = np.ones((1, 1) + tuple(x_shape[2:]), dtype)
    if count_include_pad:  # the padding is counted, what ceil_mode's windows run past it is not
        counted = np.pad(counted, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=1)
        sides = ((0, sides[0][1] - ph), (0, sides[1][1] - pw))
    return _dilated_windows(counted, kernel, stride, sides, 1).sum(axis=(4, 5))[0, 0]


def avgpool2d_forward(x, kernel, stride, padding, ceil_mode=False, count_include_pad=True,
                      divisor_override=None):
    """Window sums over their divisors (_avg_divisors); zero padding adds nothing to a sum."""
    sides = _pool_padding(x.shape, kernel, stride, padding, 1, ceil_mode)
    win = _dilated_windows(x, kernel, stride, sides, 1)
    div = _avg_divisors(x.shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override,
                        x.dtype)
    return np.ascontiguousarray(win.sum(axis=(4, 5)) / div, dtype=x.dtype)


def avgpool2d_backward(dy, x_shape, kernel, stride, padding, ceil_mode=False, count_include_pad=True,
                       divisor_override=None):
    """dx of x_shape: each dy over its window's divisor added over the window (col2im)."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    n, c, h, w = x_shape
    oh, ow = dy.shape[2:]
    (_, bottom), (_, right) = _pool_padding(x_shape, kernel, stride, padding, 1, ceil_mode)
    g = dy / _avg_divisors(x_shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override,
                           dy.dtype)
    dx_pad = np.zeros((n, c, h + ph + bottom, w + pw + right), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            dx_pad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += g
    return np.ascontiguousarray(dx_pad[:, :, ph:ph + h, pw:pw + w])


def locally_connected2d_forward(x, weight, bias, stride, padding):
    """y[n, k, oy, ox] = sum_{c,i,j} x_pad[n, c, oy*sh + i, ox*sw + j] * weight[oy, ox, k, c, i, j]
    + bias[k, oy, ox]."""
    win = _windows(x, weight.shape[4:], stride, padding)  # N, C, OH, OW, kh, kw
    y = np.einsum("ncyxij,yxkcij->nkyx", win, weight, optimize=True)
    if bias is not None:
        y += bias[None]
    return np.ascontiguousarray(y, dtype=x.dtype)


def locally_connected2d_backward(x, weight, dy, stride, padding, need_dx=True):
    """(dx or None, dweight, dbias) of locally_connected2d_forward."""
    win = _windows(x, weight.shape[4:], stride, padding)
    dweight = np.einsum("nkyx,ncyxij->yxkcij", dy, win, optimize=True).astype(x.dtype)
    dbias = dy.sum(axis=0, dtype=dy.dtype)
    if not need_dx:
        return None, dweight, dbias
    (kh, kw), (sh, sw), (ph, pw) = weight.shape[4:], _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    oh, ow = dy.shape[2:]
    dwin = np.einsum("nkyx,yxkcij->ncyxij", dy, weight, optimize=True)
    dx_pad = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            dx_pad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += dwin[..., i, j]
    return np.ascontiguousarray(dx_pad[:, :, ph:ph + h, pw:pw + w]), dweight, dbias


# ---------------------------------------------------------------------------
# adaptive pools and the residual add

def _adaptive_windows(size, out):
    """PyTorch's adaptive windows along one axis: [floor(i size / out), ceil((i + 1) size / out))."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def _adaptive_cells(x_shape, output_size):
    """((i, j), rows, cols) for every output cell of an adaptive pool (none for an empty batch)."""
    oh, ow = _pair(output_size)
    if x_shape[0] * x_shape[1] == 0:
        return
    for i, (r0, r1) in enumerate(_adaptive_windows(x_shape[2], oh)):
        for j, (c0, c1) in enumerate(_adaptive_windows(x_shape[3], ow)):
            yield (i, j), slice(r0, r1), slice(c0, c1)


def adaptive_avgpool2d_forward(x, output_size):
    """Each output cell the mean of its adaptive window."""
    y = np.empty(x.shape[:2] + _pair(output_size), x.dtype)
    for (i, j), rows, cols in _adaptive_cells(x.shape, output_size):
        y[:, :, i, j] = x[:, :, rows, cols].mean(axis=(2, 3), dtype=x.dtype)
    return y


def adaptive_avgpool2d_backward(dy, x_shape):
    """dx of x_shape: each dy divided by its window's size, added over the window."""
    x_shape = tuple(int(d) for d in x_shape)  # as the native wrapper reads it
    dx = np.zeros(x_shape, dy.dtype)
    for (i, j), rows, cols in _adaptive_cells(x_shape, dy.shape[2:]):
        size = (rows.stop - rows.start) * (cols.stop - cols.start)
        dx[:, :, rows, cols] += (dy[:, :, i, j] / dy.dtype.type(size))[:, :, None, None]
    return dx


def adaptive_maxpool2d_forward(x, output_size):
    """(y, argmax int64): each cell's maximum and its index in the H x W plane
    (the first maximum in row-major order; a NaN wins, as np.argmax)."""
    n, c, h, w = x.shape
    y = np.empty((n, c) + _pair(output_size), x.dtype)
    am = np.empty(y.shape, np.int64)
    for (i, j), rows, cols in _adaptive_cells(x.shape, output_size):
        win = x[:, :, rows, cols].reshape(n, c, -1)
        k = np.argmax(win, axis=2)
        y[:, :, i, j] = np.take_along_axis(win, k[..., None], axis=2)[..., 0]
        width = cols.stop - cols.start
        am[:, :, i, j] = (rows.start + k // width) * w + cols.start + k % width
    return y, am


def adaptive_maxpool2d_backward(dy, argmax, x_shape):
    """dx of x_shape: each dy added at its plane's argmax."""
    n, c, h, w = x_shape = tuple(int(d) for d in x_shape)  # as the native wrapper reads it
    dx = np.zeros((n * c, h * w), dy.dtype)
    rows = np.repeat(np.arange(n * c), argmax[0, 0].size if argmax.size else 0)
    np.add.at(dx, (rows, argmax.reshape(-1)), dy.reshape(-1))
    return dx.reshape(x_shape)


def add_relu(a, b, relu):
    """y = a + b, then relu_forward(y) when relu (infinity where the sum overflows, as C)."""
    with np.errstate(over="ignore"):
        y = a + b
    return relu_forward(y) if relu else y
