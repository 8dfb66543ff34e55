# The argument checks every wrapper shares: arrays, shapes, pairs, flags, reals, and the memory guard.
# (an include of fastconv/_kernels.pyx: one module, fastconv._kernels)

# Index arithmetic in C is 64-bit; refuse anything whose element count could
# overflow it (or that no machine could hold) before allocating.
cdef fc_int _MAX_ELEMENTS = (<fc_int>1) << 48


# An output larger than the memory this process can get (free memory, cgroup
# and ulimit limits: fastconv._guard) is refused before it is allocated: numpy
# would raise MemoryError, or, under overcommit, the kernel's writes would get
# the process killed.
cdef _check_alloc(str fn, str what, shape, str because, int itemsize=4):
    """Refuse to allocate an array of `shape` that needs more than this process can get."""
    nbytes = itemsize
    for d in shape:
        nbytes *= int(d)
    _guard.check_memory(nbytes, f"{fn}: {what} of shape {_guard.short(tuple(int(d) for d in shape))} "
                                f"(from {_guard.short(because)})")


# -- arrays and shapes (checked once, at the boundary)

def _describe(a):
    if isinstance(a, np.ndarray):
        layout = "" if a.flags.c_contiguous else "non-contiguous "
        return f"{layout}{a.dtype} array with shape {a.shape}"
    return f"{type(a).__name__}"


cdef _check_array(str fn, str name, a, int ndim, bint writable=False):
    """Require a C-contiguous float32 ndarray of rank ndim."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{fn}: `{name}` must be a float32 numpy array of rank {ndim}; got {_describe(a)}")
    if a.dtype != np.float32:
        raise TypeError(f"{fn}: `{name}` must be a float32 array; got {_describe(a)}")
    if a.ndim != ndim:
        raise ValueError(f"{fn}: `{name}` must have rank {ndim}; got {_describe(a)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{fn}: `{name}` must be C-contiguous; got {_describe(a)}")
    if not a.flags.aligned:  # C dereferences float pointers: misalignment is undefined behaviour
        raise ValueError(f"{fn}: `{name}` must be aligned to its element size; got a misaligned view")
    if writable and not a.flags.writeable:
        raise ValueError(f"{fn}: `{name}` must be writable; got a read-only array")
    if a.size > _MAX_ELEMENTS:
        raise ValueError(f"{fn}: `{name}` must have at most {_MAX_ELEMENTS} elements; got {a.size}")


cdef _check_shape(str fn, str name, a, tuple expected):
    if a.shape != expected:
        raise ValueError(f"{fn}: `{name}` must have shape {expected}; got {a.shape}")


cdef tuple _pair(str fn, str name, v, int minimum):
    """An (h, w) pair of ints >= minimum, from an int or a 2-sequence."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (v, v)
    try:
        h, w = v
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: `{name}` must be an int or an (h, w) pair of ints; got {v!r}") from None
    for e in (h, w):
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)):
            raise TypeError(f"{fn}: `{name}` must be an int or an (h, w) pair of ints; got {v!r}")
        if e < minimum:
            raise ValueError(f"{fn}: `{name}` must be >= {minimum}; got {(int(h), int(w))}")
        if e > _MAX_ELEMENTS:
            raise ValueError(f"{fn}: `{name}` must be at most 2**48; got {(int(h), int(w))}")
    return int(h), int(w)


cdef bint _flag(str fn, str name, v) except -1:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{fn}: `{name}` must be a bool; got {v!r}")
    return bool(v)


cdef inline float *_fptr(cnp.ndarray a):
    return <float *>cnp.PyArray_DATA(a)


def _out_size(str fn, size, kernel, stride, padding, str what, str kernel_arg="kernel", after=None,
              dilation=1, ceil_mode=False):
    """Outputs along one axis: `padding` before, `after` (default the same) after, taps `dilation` apart.

    ceil_mode (the pools): PyTorch's rounding up, with its rule that the last
    window must start inside the input or the padding before it.
    """
    after = padding if after is None else after
    span = dilation * (kernel - 1) + 1
    up = stride - 1 if ceil_mode else 0  # how far a ceil_mode window may run past the padded input
    if size + padding + after + up < span:
        padded = f"{size} + 2*{padding}" if after == padding else f"{size} + {padding} + {after}"
        extent = f"kernel {what} {kernel}" + (f" at dilation {dilation} (spanning {span})" if dilation > 1 else "")
        slack = f" by more than stride - 1 = {up} (what ceil_mode allows)" if up else ""
        raise ValueError(
            f"{fn}: {extent} is larger than the padded input {what} "
            f"{padded} = {size + padding + after}{slack}: `{kernel_arg}` must fit in `x` padded by `padding`; "
            f"got {what} {kernel}")
    out = (size + padding + after - span + up) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _shape4(str fn, str name, shape, str dims="(N, C, H, W)"):
    """A shape argument as a tuple of 4 non-negative ints (named `dims`)."""
    try:
        shape = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: `{name}` must be a tuple of 4 ints; got {shape!r}") from None
    if len(shape) != 4 or min(shape) < 0:
        raise ValueError(f"{fn}: `{name}` must be 4 non-negative ints {dims}; got {shape}")
    if max(shape) > _MAX_ELEMENTS:
        raise ValueError(f"{fn}: `{name}` must have sizes of at most 2**48; got {shape}")
    if shape[0] * shape[1] * shape[2] * shape[3] > _MAX_ELEMENTS:
        raise ValueError(f"{fn}: `{name}` {shape} has more than {_MAX_ELEMENTS} elements")
    return shape


cdef _check_any_rank(str fn, str name, a):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{fn}: `{name}` must be a float32 numpy array; got {_describe(a)}")
    _check_array(fn, name, a, a.ndim)


# -- scalar arguments

cdef double _DBL_MAX = 1.7976931348623157e308
cdef double _FLT_MAX = 3.4028234663852886e38


cdef double _real(str fn, str name, v, double lo, double hi=_DBL_MAX) except? -1:
    """A real number in [lo, hi] (so finite; NaN is refused), as a double."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: `{name}` must be a real number; got {type(v).__name__} {v!r}")
    try:
        d = float(v)
    except OverflowError:  # an int beyond double's range
        d = float("inf")
    if not lo <= d <= hi:
        bounds = f">= {lo:g}" if hi == _DBL_MAX else f"in [{lo:g}, {hi:g}]"
        raise ValueError(f"{fn}: `{name}` must be a finite number {bounds}; got {v!r}")
    return d
