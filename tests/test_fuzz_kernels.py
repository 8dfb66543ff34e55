"""Fuzzing every wrapper in ``fastconv._kernels`` with bad input (hypothesis).

Each example builds a valid call of a kernel (small random shapes, every
stride and padding), then spoils one or two of its arguments: a wrong dtype,
rank or shape, a zero or negative size, a non-contiguous, negative-stride,
Fortran-order, read-only or misaligned array, NaN and inf values, a Python
scalar or list, None, a huge broadcast view, an out-of-range int or float.
The kernel must then either

* return what its NumPy twin returns on the same values (and leave its input
  arrays untouched), or
* raise ValueError/TypeError whose message starts with the kernel's name,
  names one of its arguments in backquotes, and says what it got,

never crash, hang, raise anything else (a MemoryError, an OverflowError), or
write into an array it only reads.

Long mode: ``FASTCONV_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz_kernels.py -s``
runs 2000 examples per kernel (40,000 calls); ``-s`` shows how many calls
were tried and how many were bad.
"""

import inspect
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import as_strided

from fastconv import _kernels, reference

EXAMPLES = int(os.environ.get("FASTCONV_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None) if EXAMPLES else settings(deadline=None)
FUZZ = settings(FUZZ, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

COUNTS = {"calls": 0, "bad": 0, "raised": 0}

# Arguments a kernel writes into (everything else it must leave unchanged).
OUTPUTS = {"bias_add": {"y"}, "sgemm": {"C"}}


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print(f"\n{__name__}: {COUNTS['calls']} calls, {COUNTS['bad']} with bad arguments, "
          f"{COUNTS['raised']} raised ValueError/TypeError")


# ---------------------------------------------------------------------------
# valid calls

def values(rng, shape):
    """Small exact values (multiples of 1/4 in [-2, 2]): many ties, no rounding surprises."""
    return (rng.integers(-8, 9, size=shape) / 4).astype(np.float32)


def _geometry(draw, pool=False):
    """(h, w, kernel, stride, padding) with the window fitting the padded input."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if pool:  # padding at most half the window
        ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    else:
        ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    h = draw(st.integers(max(1, kh - 2 * ph), 7))
    w = draw(st.integers(max(1, kw - 2 * pw), 7))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    kernel, padding = (kh, kw), (ph, pw)
    # ints as well as pairs, when both sides agree
    if kh == kw and draw(st.booleans()):
        kernel = kh
    if stride[0] == stride[1] and draw(st.booleans()):
        stride = stride[0]
    if ph == pw and draw(st.booleans()):
        padding = ph
    return h, w, kernel, stride, padding


def _pair(v):
    return (v, v) if isinstance(v, int) else v


def _out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _sgemm(draw, rng):
    m, n, k = (draw(st.integers(0, 6)) for _ in range(3))
    ta, tb = draw(st.booleans()), draw(st.booleans())
    call = {"A": values(rng, (k, m) if ta else (m, k)), "B": values(rng, (n, k) if tb else (k, n)),
            "C": None, "trans_a": ta, "trans_b": tb, "alpha": draw(st.sampled_from([1.0, -0.5, 2, 0.25])),
            "beta": 0.0}
    if draw(st.booleans()):
        call["C"], call["beta"] = values(rng, (m, n)), draw(st.sampled_from([0.0, 1.0, -2.0, 0.5]))
    return call


def _conv(draw, rng, backward):
    h, w, kernel, stride, padding = _geometry(draw)
    n, c, k = draw(st.integers(0, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    call = {"x": values(rng, (n, c, h, w)), "weight": values(rng, (k, c, kh, kw))}
    if backward:
        call["dy"] = values(rng, (n, k, _out(h, kh, sh, ph), _out(w, kw, sw, pw)))
    else:
        call["bias"] = values(rng, (k,)) if draw(st.booleans()) else None
    call.update(stride=stride, padding=padding)
    if backward:
        call["need_dx"] = draw(st.booleans())
    return call


def _local(draw, rng, backward):
    """A valid locally_connected2d call: _conv's, with a filter per output position."""
    call = _conv(draw, rng, backward)
    (_, c, h, w), (k, _, kh, kw) = call["x"].shape, call["weight"].shape
    (sh, sw), (ph, pw) = _pair(call["stride"]), _pair(call["padding"])
    oh, ow = _out(h, kh, sh, ph), _out(w, kw, sw, pw)
    call["weight"] = values(rng, (oh, ow, k, c, kh, kw))
    if not backward and call["bias"] is not None:
        call["bias"] = values(rng, (k, oh, ow))
    return call


def _conv_ex(draw, rng, backward):
    """A valid conv2d_ex_* call: groups of 1, 2 or C, dilation up to 2, padding per side."""
    groups, cg, kg = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kh, kw, dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    sides = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    h, w = (draw(st.integers(max(1, e - a - b), 7)) for e, (a, b) in zip(span, sides))
    n = draw(st.integers(0, 2))
    call = {"x": values(rng, (n, groups * cg, h, w)), "weight": values(rng, (groups * kg, cg, kh, kw))}
    out = tuple((size + a + b - e) // s + 1 for size, (a, b), e, s in zip((h, w), sides, span, stride))
    if backward:
        call["dy"] = values(rng, (n, groups * kg) + out)
    else:
        call["bias"] = values(rng, (groups * kg,)) if draw(st.booleans()) else None
    symmetric = all(a == b for a, b in sides) and draw(st.booleans())  # an (h, w) pair as well
    call.update(stride=stride, padding=(sides[0][0], sides[1][0]) if symmetric else sides,
                dilation=(dh, dw), groups=groups)
    call["need_dx" if backward else "relu"] = draw(st.booleans())
    return call


def _conv_maxpool(draw, rng):
    """A valid conv2d_forward call whose output is at least 2x2, and relu."""
    call = _conv(draw, rng, backward=False)
    n, c, h, w = call["x"].shape
    kh, kw = call["weight"].shape[2:]
    (sh, sw), (ph, pw) = _pair(call["stride"]), _pair(call["padding"])
    h, w = max(h, kh - 2 * ph + sh), max(w, kw - 2 * pw + sw)  # two outputs each way
    call["x"] = values(rng, (n, c, h, w))
    call["relu"] = draw(st.booleans())
    return call


def _pool_forward(draw, rng, avg=False):
    """A valid pool call: any geometry and, half the time, the options (dilation up to 2 with no
    window of padding alone, ceil_mode; avg: count_include_pad, divisor_override)."""
    h, w, kernel, stride, padding = _geometry(draw, pool=True)
    n, c = draw(st.integers(0, 2)), draw(st.integers(1, 3))
    call = {"kernel": kernel, "stride": stride, "padding": padding}
    if draw(st.booleans()):
        call["ceil_mode"] = draw(st.booleans())
        if avg:
            call["count_include_pad"] = draw(st.booleans())
            call["divisor_override"] = draw(st.one_of(st.none(), st.integers(1, 9)))
        else:
            (kh, kw), (ph, pw) = _pair(kernel), _pair(padding)
            call["dilation"] = (dh, dw) = draw(st.integers(1, 2)), draw(st.integers(1, 2))
            h, w = max(h, dh * (kh - 1) + 1 - 2 * ph, dh), max(w, dw * (kw - 1) + 1 - 2 * pw, dw)
    return {"x": values(rng, (n, c, h, w)), **call}


def _maxpool_backward(draw, rng):
    fwd = _pool_forward(draw, rng)
    x = fwd.pop("x")
    y, am = reference.maxpool2d_forward(x, **fwd)
    return {"dy": values(rng, y.shape), "argmax": am, "x_shape": x.shape, **fwd}


def _avgpool_backward(draw, rng):
    fwd = _pool_forward(draw, rng, avg=True)
    x = fwd.pop("x")
    return {"dy": values(rng, reference.avgpool2d_forward(x, **fwd).shape), "x_shape": x.shape, **fwd}


def _adaptive_forward(draw, rng):
    n, c, h, w = draw(st.integers(0, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    size = draw(st.one_of(st.integers(1, 9), st.tuples(st.integers(1, 9), st.integers(1, 9))))
    return {"x": values(rng, (n, c, h, w)), "output_size": size}


def _adaptive_backward(is_max):
    def make(draw, rng):
        fwd = _adaptive_forward(draw, rng)
        y, am = reference.adaptive_maxpool2d_forward(fwd["x"], fwd["output_size"])
        call = {"dy": values(rng, y.shape), "x_shape": fwd["x"].shape}
        return {"dy": call["dy"], "argmax": am, "x_shape": call["x_shape"]} if is_max else call
    return make


def _any_shape(draw, min_rank=0):
    return tuple(draw(st.lists(st.integers(0, 4), min_size=min_rank, max_size=4)))


def _elementwise(names, param=None, positive=None):
    """An activation's call: arrays `names` of one shape, an optional real parameter.
    `positive`: an argument kept in the op's output range, e.g. sigmoid's y in (0, 1)."""
    def make(draw, rng):
        shape = _any_shape(draw)
        call = {name: values(rng, shape) for name in names}
        if positive:
            call[positive] = (call[positive] / 4).astype(np.float32)
        if param:
            call[param] = draw(st.sampled_from([0.01, 0.2, 1.0, -0.5, 3]))
        return call
    return make


def _bias_add(draw, rng):
    shape = _any_shape(draw, min_rank=2)
    return {"y": values(rng, shape), "bias": values(rng, shape[1:2])}


def _batchnorm(draw, rng, backward):
    shape = _any_shape(draw, min_rank=2)
    c = shape[1]
    weight = values(rng, (c,)) if draw(st.booleans()) else None
    eps = draw(st.sampled_from([1e-5, 0.1, 1, 0]))
    batch = draw(st.booleans()) and shape[0] * int(np.prod(shape[2:])) > 0
    mean = var = None
    x = values(rng, shape)
    if not batch or backward:
        mean, var = values(rng, (c,)), (np.abs(values(rng, (c,))) + 0.5).astype(np.float32)
    if backward:
        relu_y = values(rng, shape) if draw(st.booleans()) else None
        return {"dy": values(rng, shape), "x": x, "weight": weight, "mean": mean, "var": var, "eps": eps,
                "batch_stats": batch, "relu_y": relu_y}
    bias = values(rng, (c,)) if draw(st.booleans()) else None
    return {"x": x, "weight": weight, "bias": bias, "mean": mean, "var": var, "eps": eps,
            "relu": draw(st.booleans())}


VALID = {
    "sgemm": _sgemm,
    "conv2d_forward": lambda d, r: _conv(d, r, backward=False),
    "conv2d_backward": lambda d, r: _conv(d, r, backward=True),
    "conv2d_maxpool_forward": _conv_maxpool,
    "conv2d_ex_forward": lambda d, r: _conv_ex(d, r, backward=False),
    "conv2d_ex_backward": lambda d, r: _conv_ex(d, r, backward=True),
    "maxpool2d_forward": _pool_forward,
    "maxpool2d_backward": _maxpool_backward,
    "avgpool2d_forward": lambda draw, rng: _pool_forward(draw, rng, avg=True),
    "avgpool2d_backward": _avgpool_backward,
    "relu_forward": _elementwise(["x"]),
    "to_bfloat16": _elementwise(["x"]),
    "relu_backward": _elementwise(["dy", "y"]),
    "bias_add": _bias_add,
    "leaky_relu_forward": _elementwise(["x"], "negative_slope"),
    "leaky_relu_backward": _elementwise(["dy", "x"], "negative_slope"),
    "elu_forward": _elementwise(["x"], "alpha"),
    "elu_backward": _elementwise(["dy", "x"], "alpha"),
    "sigmoid_forward": _elementwise(["x"]),
    "sigmoid_backward": _elementwise(["dy", "y"], positive="y"),
    "tanh_forward": _elementwise(["x"]),
    "tanh_backward": _elementwise(["dy", "y"], positive="y"),
    "batchnorm_forward": lambda d, r: _batchnorm(d, r, backward=False),
    "batchnorm_backward": lambda d, r: _batchnorm(d, r, backward=True),
    "locally_connected2d_forward": lambda d, r: _local(d, r, backward=False),
    "locally_connected2d_backward": lambda d, r: _local(d, r, backward=True),
    "adaptive_avgpool2d_forward": _adaptive_forward,
    "adaptive_avgpool2d_backward": _adaptive_backward(False),
    "adaptive_maxpool2d_forward": _adaptive_forward,
    "adaptive_maxpool2d_backward": _adaptive_backward(True),
    "add_relu": lambda d, r: {**_elementwise(["a", "b"])(d, r), "relu": d(st.booleans())},
}


def test_every_kernel_is_fuzzed():
    assert set(VALID) == set(_kernels.KERNELS)
    for name, make in VALID.items():  # the valid calls bind to the signature
        assert make is not None
        assert inspect.signature(getattr(_kernels, name))


# ---------------------------------------------------------------------------
# spoiling an argument

BAD_DTYPES = [np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_, object, ">f4", np.complex64]

# Ints that do not fit 32 or 64 bits, negative, zero; floats; wrong containers.
BAD_INTS = [0, -1, -2**40, 2**31, 2**32 + 1, 2**48 + 1, 2**63, 2**64 + 3, 2**100, 1.5, 2.0, float("nan"), True,
            "2", None, (1,), (1, 2, 3), (1.0, 2), (2, -1), (0, 1), (2**31, 1), (2**64, 1), [[1, 1]], np.int8(-1),
            np.uint64(2**63), 3j]
BAD_REALS = [float("nan"), float("inf"), -float("inf"), 1e300, -1e39, 10**400, -1.0, True, "1", None, 1j,
             np.float64("nan"), [1.0], np.array([1.0])]
BAD_SHAPES = [(-1, 1, 2, 2), (1, 1, 2), (1, 1, 2, 2, 1), (2**64, 0, 1, 1), (0, 2**63, 1, 1), (2**31, 2**31, 2**31, 2),
              (1.5, 1, 2, 2), "1122", None, 4, (1, 1, -2, 2), (2**40, 2**40, 1, 1)]


def _noncontiguous(a):
    """The same values through a view that skips every other element of the last axis."""
    if a.ndim == 0:
        return a
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def _negative_stride(a):
    if a.ndim == 0:
        return a
    return np.ascontiguousarray(a[::-1])[::-1]


def _misaligned(a):
    buf = np.zeros(a.nbytes + a.itemsize, np.uint8)
    out = np.frombuffer(buf[1:1 + a.nbytes].data, a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _with_nonfinite(a, rng):
    if a.size == 0 or a.dtype.kind != "f":
        return a
    a = a.copy()
    idx = rng.integers(0, a.size, size=max(1, a.size // 4))
    a.reshape(-1)[idx] = rng.choice([np.nan, np.inf, -np.inf], size=idx.size)
    return a


def _huge_view(a):
    """A broadcast view of 2**44+ elements of the same rank (no memory behind it)."""
    rank = max(a.ndim, 1)
    shape = (2**(44 // rank + 1),) * rank
    return np.broadcast_to(np.zeros((1,) * rank, a.dtype), shape)


class _Unbacked(np.ndarray):
    """A view with no memory behind most of it: printing it (as a failing test's
    report would) must not read it."""

    def __repr__(self):
        return f"<unbacked view shape={self.shape} strides={self.strides}>"

    __str__ = __repr__


def _fake_contiguous_huge(a):
    """A C-contiguous-looking view whose extent is 2**49+ elements over a
    one-element buffer: anything but an immediate size check would read out of it."""
    base = np.zeros(1, a.dtype)
    rank = max(a.ndim, 1)
    shape = (2**(49 // rank + 1),) * rank
    strides = tuple(int(np.prod(shape[i + 1:])) * a.itemsize for i in range(rank))
    return as_strided(base, shape=shape, strides=strides, writeable=False).view(_Unbacked)


def _reshaped(a, draw):
    """The same kind of array with one axis changed (grown, shrunk, zeroed) or the rank changed."""
    kind = draw(st.sampled_from(["grow", "shrink", "zero", "rank+", "rank-"]))
    shape = list(a.shape)
    if kind == "rank+":
        return np.zeros(tuple(shape) + (1,), a.dtype)
    if kind == "rank-" or not shape:
        return np.zeros(tuple(shape[1:]), a.dtype) if shape else np.zeros((1,), a.dtype)
    i = draw(st.integers(0, len(shape) - 1))
    shape[i] = {"grow": shape[i] + 1, "shrink": max(shape[i] - 1, 0), "zero": 0}[kind]
    return np.ones(tuple(shape), a.dtype)


ARRAY_MUTATIONS = ["dtype", "shape", "noncontiguous", "negative_stride", "fortran", "readonly", "misaligned",
                   "nonfinite", "list", "scalar", "none", "huge_view", "fake_huge", "string"]

# Mutations after which a correct kernel may still succeed: values and shapes are unchanged.
SAME_VALUES = {"noncontiguous", "negative_stride", "fortran", "readonly", "misaligned", "nonfinite"}


def spoil(draw, rng, name, value):
    """(new value, mutation name)."""
    if isinstance(value, np.ndarray):
        m = draw(st.sampled_from(ARRAY_MUTATIONS))
        return {
            "dtype": lambda: value.astype(draw(st.sampled_from(BAD_DTYPES))),
            "shape": lambda: _reshaped(value, draw),
            "noncontiguous": lambda: _noncontiguous(value),
            "negative_stride": lambda: _negative_stride(value),
            "fortran": lambda: np.asfortranarray(value),
            "readonly": lambda: _readonly(value),
            "misaligned": lambda: _misaligned(value),
            "nonfinite": lambda: _with_nonfinite(value, rng),
            "list": lambda: value.tolist(),
            "scalar": lambda: draw(st.sampled_from([1.0, 0, np.float32(1)])),
            "none": lambda: None,
            "huge_view": lambda: _huge_view(value),
            "fake_huge": lambda: _fake_contiguous_huge(value),
            "string": lambda: "x",
        }[m](), m
    if name == "x_shape":
        return draw(st.sampled_from(BAD_SHAPES)), "x_shape"
    if name in ("kernel", "stride", "padding", "output_size", "dilation", "groups", "divisor_override"):
        return draw(st.sampled_from(BAD_INTS)), "int"
    if name in ("alpha", "beta", "eps", "negative_slope"):
        return draw(st.sampled_from(BAD_REALS)), "real"
    if value is None:  # an optional array: give one of a wrong shape or kind
        return draw(st.sampled_from([np.zeros(7, np.float32), np.zeros((1, 1), np.float32), [0.0], 1.0])), "for_none"
    if isinstance(value, (bool, np.bool_)):
        return draw(st.sampled_from([0, 1, "yes", None, np.array([True, False])])), "flag"
    return value, "unchanged"


# ---------------------------------------------------------------------------
# the check

def _copy(v):
    """A copy of an argument (the huge views stay views: they are never compared)."""
    return v.copy() if isinstance(v, np.ndarray) and v.size < 2**20 else v


def _contiguous(v):
    return np.require(v, requirements="C") if isinstance(v, np.ndarray) else v  # keeps 0-d arrays 0-d


def _as_tuple(r):
    return r if isinstance(r, tuple) else (r,)


def _assert_same(got, want, name):
    got, want = _as_tuple(got), _as_tuple(want)
    assert len(got) == len(want), name
    for g, w in zip(got, want):
        if w is None:
            assert g is None, name
            continue
        w = np.asarray(w)
        assert isinstance(g, np.ndarray) and g.shape == w.shape and g.dtype == w.dtype, (name, g, w)
        if w.dtype.kind in "iu":
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, equal_nan=True, err_msg=name)


ARRAY_DTYPES = {"argmax": (np.uint8, np.int32, np.int64)}

# What a refusal of each mutation must say, besides naming the argument.
SAYS = {"dtype": "float32", "misaligned": "aligned", "readonly": "writable", "noncontiguous": "contiguous",
        "negative_stride": "contiguous", "huge_view": "contiguous"}


def _names(message, call):
    """The call's arguments a message names: `in backquotes`, or as a word (op(A), kernel height)."""
    return [k for k in call if f"`{k}`" in message or re.search(rf"\b{k}\b", message)]


def check_call(name, call, spoiled):
    """Call the kernel; it must match its twin on the same values or raise a clear ValueError/TypeError."""
    COUNTS["calls"] += 1
    COUNTS["bad"] += bool(spoiled)
    native = getattr(_kernels, name)
    before = {k: _copy(v) for k, v in call.items()}
    try:
        got = native(**call)
    except (ValueError, TypeError) as e:
        COUNTS["raised"] += 1
        message = str(e)
        assert message.startswith(f"{name}: "), f"{name} {spoiled}: message does not name the kernel: {message}"
        assert _names(message, call), f"{name} {spoiled}: message names no argument: {message}"
        assert "got" in message or re.search(r"\d", message), f"{name} {spoiled}: no actual value: {message}"
        if len(spoiled) == 1:  # the one spoiled argument is the one refused, for the reason given
            (arg, mutation), = spoiled.items()
            if mutation in ("dtype", "string", "list", "scalar"):
                assert type(e) is TypeError and f"`{arg}`" in message, (name, spoiled, message)
            if mutation in SAYS and arg not in {*OUTPUTS.get(name, ()), "argmax"}:
                assert f"`{arg}`" in message and SAYS[mutation] in message, (name, spoiled, message)
            if mutation == "dtype" and arg != "argmax":
                assert str(call[arg].dtype) in message, (name, spoiled, message)
            if mutation == "readonly" and arg in OUTPUTS.get(name, ()):
                assert f"`{arg}` must be writable" in message, (name, spoiled, message)
        return
    # Accepted: every array argument must have been a real float32 array (or argmax's
    # dtype), and the result must be the twin's on the same values.
    for k, v in call.items():
        if k in before and isinstance(before[k], np.ndarray) or isinstance(v, np.ndarray):
            assert isinstance(v, np.ndarray) and v.dtype in ARRAY_DTYPES.get(k, (np.float32,)), (
                f"{name} accepted `{k}` = {type(v).__name__} {getattr(v, 'dtype', '')} ({spoiled})")
    assert "fake_huge" not in spoiled.values() and "huge_view" not in spoiled.values(), (name, spoiled)
    for k, v in call.items():  # inputs untouched
        if isinstance(v, np.ndarray) and k not in OUTPUTS.get(name, ()):
            np.testing.assert_array_equal(v, before[k], err_msg=f"{name} wrote into its input `{k}`")
    try:
        want = getattr(reference, name)(**{k: _contiguous(_copy(before[k])) for k in call})
    except (MemoryError, ValueError) as e:  # e.g. a 2**31 window, mostly padding: NumPy cannot pad that
        assert "too big" in str(e) or "allocate" in str(e), e
        return
    _assert_same(got, want, f"{name} {spoiled}")


@pytest.mark.parametrize("name", sorted(VALID))
@FUZZ
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_kernel(name, data, seed):
    rng = np.random.default_rng(seed)
    call = VALID[name](data.draw, rng)
    spoiled = {}
    if data.draw(st.integers(0, 9)) > 0:  # 1 in 10 calls is valid: the baseline must pass too
        names = sorted(call)
        for arg in data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True)):
            call[arg], spoiled[arg] = spoil(data.draw, rng, arg, call[arg])
            if spoiled[arg] == "unchanged":
                del spoiled[arg]
    check_call(name, call, spoiled)


# ---------------------------------------------------------------------------
# sizes that are validated before anything is allocated

HUGE = 2**20  # a padding or stride that makes an output of 2**40 elements (4 TiB) from a tiny input


@pytest.mark.parametrize("call", [
    lambda: _kernels.conv2d_forward(np.ones((1, 1, 1, 1), np.float32), np.ones((1, 1, 1, 1), np.float32), None,
                                    1, HUGE),
    lambda: _kernels.conv2d_forward(np.ones((1, 1, 1, 1), np.float32), np.ones((1, 1, 1, 1), np.float32), None,
                                    1, 2**40),
    lambda: _kernels.conv2d_backward(np.ones((1, 1, 1, 1), np.float32), np.ones((1, 1, 1, 1), np.float32),
                                     np.ones((1, 1, 1, 1), np.float32), 1, HUGE),
    lambda: _kernels.maxpool2d_backward(np.ones((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.uint8),
                                        (1, 1, HUGE, HUGE), 1, 2 * HUGE, 0),
    lambda: _kernels.avgpool2d_backward(np.ones((1, 1, 1, 1), np.float32), (1, 1, HUGE, HUGE), 1, 2 * HUGE, 0),
    lambda: _kernels.avgpool2d_backward(np.ones((1, 1, 1, 1), np.float32), (2**64, 1, 1, 1), 1, 1, 0),
    lambda: _kernels.maxpool2d_backward(np.ones((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.uint8),
                                        (1, 2**62, 1, 1), 1, 1, 0),
    # kh * kw overflows 64 bits (undefined behaviour in C; UBSan under .ci/sanitize)
    lambda: _kernels.avgpool2d_forward(np.ones((1, 1, 4, 4), np.float32), 2**32 + 1, 1, 0),
], ids=["conv-padding-2**20", "conv-padding-2**40", "conv-backward-padding", "maxpool-backward-x_shape",
        "avgpool-backward-x_shape", "x_shape-2**64", "x_shape-2**62", "kernel-2**32+1"])
def test_huge_sizes_are_refused_before_allocating(call):
    with pytest.raises(ValueError, match=r"^\w+: (?=.*`\w+`)(?=.*got)"):
        call()


def test_huge_views_are_refused_without_reading(tmp_path):
    """Views with far more elements than memory (nothing behind them) are refused by
    every kernel before it reads: broadcast views as non-contiguous, fake
    C-contiguous ones by their size."""
    for make in (_huge_view, _fake_contiguous_huge):
        for rank, call in [(2, lambda a: _kernels.sgemm(a, np.ones((a.shape[1], 1), np.float32))),
                           (4, lambda a: _kernels.conv2d_forward(a, np.ones((1, a.shape[1], 1, 1), np.float32),
                                                                 None, 1, 0)),
                           (4, lambda a: _kernels.maxpool2d_forward(a, 2, 2, 0)),
                           (1, _kernels.relu_forward), (2, lambda a: _kernels.batchnorm_forward(
                               a, None, None, None, None, 1e-5))]:
            a = make(np.zeros((1,) * rank, np.float32))
            with pytest.raises(ValueError, match="got"):
                call(a)
