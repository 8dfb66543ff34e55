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


def sgemm(A, B, C=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """C = alpha * op(A) @ op(B) + beta * C (C written in place when given)."""
    a = A.T if trans_a else A
    b = B.T if trans_b else B
    prod = (a @ b) * a.dtype.type(alpha)
    if C is None:
        return prod
    if beta == 0.0:
        C[...] = prod  # BLAS semantics: C is not read when beta == 0
    else:
        C[...] = prod + C.dtype.type(beta) * C
    return C


def _windows(x, kernel, stride, padding, pad_value=0.0):
    """View of x (N, C, H, W) as (N, C, OH, OW, kh, kw) windows."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    return sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def conv2d_forward(x, weight, bias, stride, padding):
    """y[n, k] = sum_{c,i,j} x_pad[n, c, oy*sh + i, ox*sw + j] * weight[k, c, i, j] + bias[k]."""
    win = _windows(x, weight.shape[2:], stride, padding)  # N, C, OH, OW, kh, kw
    y = np.einsum("ncyxij,kcij->nkyx", win, weight, optimize=True)
    if bias is not None:
        y += bias[None, :, None, None]
    return np.ascontiguousarray(y, dtype=x.dtype)


def conv2d_backward(x, weight, dy, stride, padding, need_dx=True):
    """(dx | None, dweight, dbias) of conv2d_forward for upstream gradient dy."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    k, _, kh, kw = weight.shape
    oh, ow = dy.shape[2:]
    win = _windows(x, (kh, kw), stride, padding)
    dweight = np.einsum("ncyxij,nkyx->kcij", win, dy, optimize=True).astype(x.dtype)
    dbias = dy.sum(axis=(0, 2, 3)).astype(x.dtype)
    dx = None
    if need_dx:
        cols = np.einsum("nkyx,kcij->ncijyx", dy, weight, optimize=True)
        dx_pad = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        for i in range(kh):  # col2im: scatter-add each kernel tap back
            for j in range(kw):
                dx_pad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += cols[:, :, i, j]
        dx = np.ascontiguousarray(dx_pad[:, :, ph:ph + h, pw:pw + w])
    return dx, dweight, dbias


def argmax_dtype(kernel):
    kh, kw = _pair(kernel)
    return np.dtype(np.uint8) if kh * kw <= 256 else np.dtype(np.int32)


def maxpool2d_forward(x, kernel, stride, padding):
    """(y, argmax): window maxima and each winner's row-major index in its window.

    Padding is -inf. Ties go to the first maximum; a NaN wins over numbers and
    the last NaN over earlier ones (PyTorch's scan rule).
    """
    kh, kw = _pair(kernel)
    win = _windows(x, kernel, stride, padding, pad_value=-np.inf)
    flat = win.reshape(win.shape[:4] + (kh * kw,))
    nan = np.isnan(flat)
    first_max = np.argmax(flat, axis=-1)  # np.argmax returns the first NaN if any, else first max
    last_nan = kh * kw - 1 - np.argmax(nan[..., ::-1], axis=-1)
    am = np.where(nan.any(axis=-1), last_nan, first_max)
    # A window of -inf and padding points at its first real element, as in PyTorch.
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    oh, ow = am.shape[2:]
    i0 = np.maximum(ph - np.arange(oh) * sh, 0)[:, None] * kw
    j0 = np.maximum(pw - np.arange(ow) * sw, 0)[None, :]
    all_neg_inf = np.all(flat == -np.inf, axis=-1)
    am = np.where(all_neg_inf, i0 + j0, am)
    y = np.take_along_axis(flat, am[..., None], axis=-1)[..., 0]
    return np.ascontiguousarray(y, dtype=x.dtype), am.astype(argmax_dtype(kernel))


def maxpool2d_backward(dy, argmax, x_shape, kernel, stride, padding):
    """dx of x_shape: each dy[n, c, oy, ox] added at its argmax position."""
    (_, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    n, c, h, w = x_shape
    oh, ow = dy.shape[2:]
    am = argmax.astype(np.int64)
    rows = np.arange(oh)[:, None] * sh - ph + am // kw
    cols = np.arange(ow)[None, :] * sw - pw + am % kw
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
