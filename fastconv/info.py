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


def self_test(seed: int = 0) -> dict:
    """Run each native kernel once against its NumPy twin on small random input.

    Returns {kernel: max abs error}; used by ``fastconv info``.
    """
    rng = np.random.default_rng(seed)
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
    cases = {
        "sgemm": ((a, c), {}),
        "conv2d_forward": ((x, w, b, (1, 1), (1, 1)), {}),
        "conv2d_backward": ((x, w, dy, (1, 1), (1, 1)), {}),
        "conv2d_maxpool_forward": ((xq, wq, bq, (1, 1), (1, 1), True), {}),
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
    }
    missing = set(_kernels.KERNELS) - set(cases)
    if missing:  # a new kernel must be added here too
        raise RuntimeError(f"self_test has no case for {sorted(missing)}")
    errors = {}
    for name, (args, kwargs) in cases.items():
        ref_args = tuple(v.copy() if isinstance(v, np.ndarray) else v for v in args)
        got, want = getattr(_kernels, name)(*args, **kwargs), getattr(reference, name)(*ref_args, **kwargs)
        pairs = zip(got, want) if isinstance(got, tuple) else [(got, want)]
        errors[name] = max(float(np.max(np.abs(g.astype(np.float64) - e))) for g, e in pairs)
    return errors
