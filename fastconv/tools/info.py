"""What this build is and what it runs: ``fc.info()`` and ``fastconv info``."""

from __future__ import annotations

import os
import warnings

import numpy as np

from fastconv import _kernels, reference
from fastconv.backend import get_backend


def info() -> dict:
    """Version, compiler and flags, OpenMP and threads, the SIMD path picked, the backend.

    >>> fc.info()["isa"]
    'avx2'
    """
    from fastconv import __version__

    build = _kernels.build_info()
    return {
        "version": __version__,
        "compiler": build["compiler"],
        "flags": build["flags"],
        "openmp": build["openmp"],
        "openmp_note": "" if build["openmp"] else
        "built WITHOUT OpenMP: kernels run on one thread; rebuild with an OpenMP compiler",
        "threads": _kernels.get_num_threads(),
        "isa": _kernels.get_isa(),
        "supported_isas": list(_kernels.supported_isas()),
        "gemm_blocksizes": _kernels.gemm_blocksizes(),
        "bf16_kernel": _kernels.bf16_kernel(),  # "emulated": fc.autocast("bfloat16") is slow here
        "backend": get_backend(),
        **_openmp_report(),
    }


# threadpoolctl's name for each OpenMP implementation (its `prefix`) and what we call it.
OPENMP_IMPLEMENTATIONS = {"libgomp": "GNU", "libomp": "LLVM", "libiomp": "Intel", "vcomp": "MSVC"}


def openmp_runtimes() -> list[dict]:
    """The OpenMP runtimes loaded in this process, read by threadpoolctl from its loaded libraries.

    One dict per loaded library file: ``implementation`` ("GNU", "LLVM", "Intel", "MSVC"),
    ``filepath``, ``version`` (or None) and ``num_threads`` (its default team size).
    """
    from threadpoolctl import threadpool_info  # imported here: only info() needs it

    return [
        {"implementation": OPENMP_IMPLEMENTATIONS.get(lib["prefix"], lib["prefix"]),
         "filepath": lib["filepath"], "version": lib.get("version"), "num_threads": lib["num_threads"]}
        for lib in threadpool_info() if lib["user_api"] == "openmp"
    ]


def openmp_conflict(runtimes: list[dict]) -> str:
    """A warning when runtimes of two different OpenMP implementations are loaded, else "".

    "Different" means different implementations (GNU libgomp, LLVM libomp, Intel libiomp):
    LLVM's and Intel's export the GNU entry points too, so whichever is loaded first can
    serve another library's parallel regions, a known cause of crashes and deadlocks.
    Two copies of one implementation (e.g. PyTorch's libgomp and the one vendored in
    fastconv's wheel, each under its own name) are not a conflict: each library keeps its
    own copy and thread pool.
    """
    kinds = sorted({r["implementation"] for r in runtimes})
    if len(kinds) < 2:
        return ""
    files = ", ".join(os.path.basename(r["filepath"]) for r in runtimes)
    return (f"{len(kinds)} different OpenMP implementations are loaded in this process "
            f"({' and '.join(kinds)}: {files}); mixing them can crash or deadlock. "
            "Make the libraries use one OpenMP runtime (e.g. install them from the same "
            "channel), or run them in separate processes.")


def _openmp_report() -> dict:
    runtimes = openmp_runtimes()
    warning = openmp_conflict(runtimes)
    if warning:
        warnings.warn(warning, RuntimeWarning, stacklevel=3)
    return {
        "openmp_loaded": "; ".join(f"{r['implementation']} {r['filepath']} ({r['num_threads']} threads)"
                                   for r in runtimes) or "none",
        "openmp_warning": warning,
    }


def conv_plan(model, input_shape, precision=None) -> list[dict]:
    """Which convolution algorithm ``auto`` picks, and why, for each Conv2d of
    ``model`` on an input of ``input_shape`` (N, C, H, W), on the current ISA,
    in ``precision`` ("float32" or "bfloat16"; default: the autocast dtype,
    ``fc.get_autocast_dtype()``, so that under ``fc.autocast("bfloat16")``
    it is the plan of the bf16 step).

    One dict per Conv2d, in the order the forward runs them: ``layer`` (its
    name in the model), ``x_shape``, ``weight_shape``, ``stride``,
    ``padding``, and for ``forward``, ``dx`` and ``dweight`` an
    ``(algorithm, reason)`` pair from the planner (``fastconv._kernels.
    plan_conv2d``); ``dx`` is None for a layer whose ``needs_input_grad`` is
    False (the Trainer sets it on a first Conv2d during ``fit``). The choice
    takes the inputs to be in range: on NaN, infinities or values near the
    float32 limit, a call takes the next algorithm (see
    ``set_conv_algorithm``). Each layer's input shape is found by running
    the model once on a batch of one zero image, in eval mode.

    >>> [row["forward"][0] for row in fc.conv_plan(model, (128, 3, 32, 32))]
    ['implicit_im2col', 'winograd', 'winograd']
    """
    from fastconv.nn.conv import Conv2d

    from fastconv.precision import _dtype_of, get_autocast_dtype

    precision = get_autocast_dtype() if precision is None else _dtype_of("conv_plan", precision)
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"conv_plan: `input_shape` must be 4 positive ints (N, C, H, W); got {input_shape!r}")
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, Conv2d)]
    seen = {}

    def recording(conv, method):
        def run(x, *args, **kwargs):
            seen.setdefault(id(conv), np.shape(x))
            return method(x, *args, **kwargs)
        return run

    modes = [(m, m.training) for m in model.modules()]
    for _, conv in convs:  # instance attributes shadow the methods while the model runs once
        for method in ("forward", "forward_maxpool"):
            object.__setattr__(conv, method, recording(conv, getattr(conv, method)))
    try:
        model.eval()
        model(np.zeros((1,) + shape[1:], np.float32))
    finally:
        for _, conv in convs:
            for method in ("forward", "forward_maxpool"):
                object.__delattr__(conv, method)
        for m, training in modes:
            object.__setattr__(m, "training", training)
    rows = []
    for name, conv in sorted((c for c in convs if id(c[1]) in seen), key=lambda c: list(seen).index(id(c[1]))):
        x_shape = (shape[0],) + tuple(seen[id(conv)][-3:])
        plan = _kernels.plan_conv2d(x_shape, conv.weight.shape, conv.stride, conv.padding,
                                    need_dx=conv.needs_input_grad, dilation=conv.dilation,
                                    groups=conv.groups, precision=precision)
        rows.append({"layer": name, "x_shape": x_shape, "weight_shape": conv.weight.shape,
                     "stride": conv.stride, "padding": conv.padding, **plan})
    return rows


# One convolution per algorithm of the planner, each a shape it applies to:
# (x shape, weight shape, stride, padding[, dilation, groups]).
CONV_CASES = {
    "depthwise": ((2, 4, 9, 8), (8, 1, 3, 3), 2, 1, 1, 4),
    "direct": ((2, 4, 9, 8), (8, 4, 3, 3), 1, 1),
    "winograd": ((2, 16, 8, 6), (16, 16, 3, 3), 1, 1),
    "pointwise": ((2, 6, 5, 7), (4, 6, 1, 1), 1, 0),
    "implicit_im2col": ((2, 3, 9, 8), (4, 3, 3, 3), 1, 1),
    "im2col": ((2, 3, 13, 11), (4, 3, 5, 5), 2, 2),
    "polyphase": ((2, 3, 11, 9), (4, 3, 3, 3), 2, 1),  # dx only
}


def _max_error(got, want) -> float:
    pairs = zip(got, want) if isinstance(got, tuple) else [(got, want)]
    return max(float(np.max(np.abs(g.astype(np.float64) - e))) for g, e in pairs if g is not None)


def _conv_checks(rng) -> dict:
    """Each conv kernel under each algorithm (forced) that this ISA has for its
    case: {"kernel/algorithm": max abs error against the twin}."""
    errors = {}
    for algorithm, (x_shape, w_shape, stride, padding, *more) in CONV_CASES.items():
        dilation, groups = more or (1, 1)
        plan = _kernels.plan_conv2d(x_shape, w_shape, stride, padding, mode=algorithm, dilation=dilation,
                                    groups=groups)
        if algorithm not in {name for name, _ in plan.values()}:
            continue  # not on this ISA (the direct tiles are AVX2's)
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
        b = rng.standard_normal(w_shape[0]).astype(np.float32)
        y = reference.conv2d_ex_forward(x, w, b, stride, padding, dilation, groups)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        # Quarters: exact sums, so the pool's argmax cannot flip on a near tie.
        xq, wq, bq = (np.round(v * 4) / 4 for v in (x, w, b))
        cases = ({"conv2d_ex_forward": (x, w, b, stride, padding, dilation, groups, True),
                  "conv2d_ex_backward": (x, w, dy, stride, padding, dilation, groups)} if more else
                 {"conv2d_forward": (x, w, b, stride, padding, True),
                  "conv2d_backward": (x, w, dy, stride, padding),
                  "conv2d_maxpool_forward": (xq, wq, bq, stride, padding, True)})
        previous = _kernels.set_conv_algorithm(algorithm)
        try:
            for name, args in cases.items():
                errors[f"{name}/{algorithm}"] = _max_error(getattr(_kernels, name)(*args),
                                                           getattr(reference, name)(*args))
        finally:
            _kernels.set_conv_algorithm(previous)
    return errors


def self_test(seed: int = 0) -> dict:
    """Run each native kernel against its NumPy twin on small random input, on
    every ISA this CPU supports, and each convolution kernel under every
    algorithm of the planner that the ISA has (CONV_CASES: depthwise, direct,
    Winograd, 1x1, implicit im2col, strided im2col, a strided dx by phases).

    Returns {"isa/kernel": max abs error} and {"isa/kernel/algorithm": ...};
    used by ``fastconv info``.
    """
    errors = {}
    isa = _kernels.get_isa()
    try:
        for each in _kernels.supported_isas():
            _kernels.set_isa(each)
            rng = np.random.default_rng(seed)
            found = _kernel_checks(rng) | _conv_checks(rng)
            errors.update({f"{each}/{name}": e for name, e in found.items()})
    finally:
        _kernels.set_isa(isa)
    return errors


def _kernel_checks(rng) -> dict:
    """Every kernel of the registry once: {kernel: max abs error}."""
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    a = rng.standard_normal((37, 29)).astype(np.float32)
    c = rng.standard_normal((29, 41)).astype(np.float32)
    y = reference.conv2d_forward(x, w, b, (1, 1), (1, 1))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    _, am = reference.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
    dpool = rng.standard_normal(am.shape).astype(np.float32)
    s3, b3 = rng.standard_normal((2, 3)).astype(np.float32)
    _, m3, v3 = reference.batchnorm_forward(x, s3, b3, None, None, 1e-5)
    dx3 = rng.standard_normal(x.shape).astype(np.float32)
    # Quarters: exact sums, so the pool's argmax cannot flip on a near tie.
    xq, wq, bq = (np.round(v * 4) / 4 for v in (x, w, b))
    wl = rng.standard_normal((9, 4, 4, 3, 3, 3)).astype(np.float32)  # a filter per output position of x
    bl = rng.standard_normal((4, 9, 4)).astype(np.float32)
    dyl = rng.standard_normal((2, 4, 9, 4)).astype(np.float32)
    x2, w2 = x[:, :2].copy(), w[:2, :1].copy()
    cases = {
        "sgemm": ((a, c), {}),
        "to_bfloat16": ((x,), {}),
        "conv2d_forward": ((x, w, b, (1, 1), (1, 1)), {}),
        "conv2d_backward": ((x, w, dy, (1, 1), (1, 1)), {}),
        "conv2d_maxpool_forward": ((xq, wq, bq, (1, 1), (1, 1), True), {}),
        # Grouped, dilated, padded more after than before: each group by the GEMM paths.
        "conv2d_ex_forward": ((x2, w2, b[:2].copy(), 1, ((1, 2), (2, 1)), 2, 2), {}),
        "conv2d_ex_backward": ((x2, w2, dy[:, :2, 1:, 1:].copy(), 1, ((1, 2), (2, 1)), 2, 2), {}),
        "maxpool2d_forward": ((x, (2, 2), (2, 2), (0, 0)), {}),
        "maxpool2d_backward": ((dpool, am, x.shape, (2, 2), (2, 2), (0, 0)), {}),
        "relu_forward": ((x,), {}),
        "relu_backward": ((dy, y), {}),
        "bias_add": ((y.copy(), b), {}),
        "leaky_relu_forward": ((x, 0.1), {}),
        "leaky_relu_backward": ((dy, y, 0.1), {}),
        "elu_forward": ((x, 1.0), {}),
        "elu_backward": ((dy, y, 1.0), {}),
        "sigmoid_forward": ((x,), {}),
        "sigmoid_backward": ((dy, y), {}),
        "tanh_forward": ((x,), {}),
        "tanh_backward": ((dy, y), {}),
        "batchnorm_forward": ((x, s3, b3, None, None, 1e-5), {}),
        "batchnorm_backward": ((dx3, x, s3, m3, v3, 1e-5, True), {}),
        "avgpool2d_forward": ((x, (2, 2), (2, 2), (0, 0)), {}),
        "avgpool2d_backward": ((dpool, x.shape, (2, 2), (2, 2), (0, 0)), {}),
        "locally_connected2d_forward": ((x, wl, bl, (1, 2), (1, 1)), {}),
        "locally_connected2d_backward": ((x, wl, dyl, (1, 2), (1, 1)), {}),
        "adaptive_avgpool2d_forward": ((x, (3, 2)), {}),
        "adaptive_avgpool2d_backward": ((dx3[:, :, :3, :2].copy(), x.shape), {}),
        "adaptive_maxpool2d_forward": ((x, (3, 2)), {}),
        "adaptive_maxpool2d_backward": ((dx3[:, :, :3, :2].copy(), reference.adaptive_maxpool2d_forward(x, (3, 2))[1],
                                         x.shape), {}),
        "add_relu": ((x, dx3, True), {}),
    }
    missing = set(_kernels.KERNELS) - set(cases)
    if missing:  # a new kernel must be added here too
        raise RuntimeError(f"self_test has no case for {sorted(missing)}")
    errors = {}
    for name, (args, kwargs) in cases.items():
        ref_args = tuple(v.copy() if isinstance(v, np.ndarray) else v for v in args)
        got, want = getattr(_kernels, name)(*args, **kwargs), getattr(reference, name)(*ref_args, **kwargs)
        errors[name] = _max_error(got, want)
    return errors
