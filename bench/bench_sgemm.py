"""sgemm: fastconv's packed GEMM against numpy.matmul (OpenBLAS) on the same
arrays, at each thread count of the ``threads`` fixture (fastconv through
set_num_threads, NumPy's BLAS through threadpoolctl).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        pytest bench/bench_sgemm.py -p no:cacheprovider --benchmark-json=sgemm.json
    pytest bench/bench_sgemm.py -k "not 2048"      # skip the slowest square

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, when set, make OpenBLAS pick another
kernel or blocking than it would for this CPU: unset them for a fair peer.
Each result records the OpenBLAS build and the kernel ("architecture") that
threadpoolctl reports, and those variables if set.

Shapes: big squares, the im2col GEMMs of workloads.md's layers, (M, N, K) =
(out channels, N * OH * OW, C * kh * kw), and the weight gradient of the
first layer, dW = dy (8, 50176) @ columns (25, 50176).T: a tiny C with a
long k. GFLOP/s counts 2 * M * N * K.

``test_sgemm_bf16`` (workloads "sgemm ... bf16", ``-k bf16``): fastconv's
``sgemm(..., precision="bfloat16")`` against ``torch.mm`` under
``torch.autocast("cpu", dtype=torch.bfloat16)`` on the same float32 arrays,
for the shapes of ``fastconv.tools.bench.BF16_GEMMS``. Both convert A and B
to bf16 on every call; fastconv returns float32, PyTorch bf16.
"""

import os

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from fastconv import _kernels
from fastconv.tools.bench import BF16_GEMMS, torch_autocast

try:
    import torch
except ImportError:  # the bf16 peer is skipped without it
    torch = None

# (M, N, K, trans_b): C (M, N) = A (M, K) @ op(B), op(B) (K, N).
SHAPES = {
    "square-1024": (1024, 1024, 1024, False),
    "square-2048": (2048, 2048, 2048, False),
    "im2col-8x50176x25": (8, 50176, 25, False),
    "im2col-16x12544x200": (16, 12544, 200, False),
    "im2col-32x131072x27": (32, 131072, 27, False),
    "im2col-64x32768x288": (64, 32768, 288, False),
    "im2col-128x2048x576": (128, 2048, 576, False),
    "im2col-16x16384x147": (16, 16384, 147, False),
    "im2col-64x8192x64": (64, 8192, 64, False),
    "dW-8x25x50176": (8, 25, 50176, True),
}
IMPLS = ["fastconv", "numpy"]
BF16_SHAPES = [next(name for name, shape in SHAPES.items() if shape == (m, n, k, False)) for m, n, k in BF16_GEMMS]
BF16_IMPLS = ["fastconv", "torch"]
OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

_arrays = {}


def _operands(name):
    """A, B (stored transposed when trans_b) and one C per implementation,
    made once per shape so every run reads the same data."""
    if name not in _arrays:
        m, n, k, trans_b = SHAPES[name]
        rng = np.random.default_rng(0)
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
        _arrays[name] = a, b, {impl: np.empty((m, n), np.float32) for impl in IMPLS}
    return _arrays[name]


def _blas():
    """What NumPy's BLAS is: library, version and the kernel it runs."""
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            return {key: lib.get(key) for key in ("internal_api", "version", "architecture", "threading_layer")}
    return {}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", SHAPES)
def test_sgemm(benchmark, threads, record, name, impl):
    m, n, k, trans_b = SHAPES[name]
    a, b, out = _operands(name)
    c = out[impl]
    if impl == "fastconv":
        run = lambda: _kernels.sgemm(a, b, c, trans_b=trans_b)
    else:
        b_op = b.T if trans_b else b
        run = lambda: np.matmul(a, b_op, out=c)
    benchmark.group = f"sgemm {name} {threads}t"
    benchmark(run)
    env = {var: os.environ[var] for var in OPENBLAS_ENV if var in os.environ}
    record(impl, flop=2 * m * n * k, workload=f"sgemm {name}", shape=(m, n, k), trans_b=trans_b,
           blas=_blas(), openblas_env=env)


@pytest.mark.parametrize("impl", BF16_IMPLS)
@pytest.mark.parametrize("name", BF16_SHAPES)
def test_sgemm_bf16(benchmark, threads, record, name, impl):
    m, n, k, _ = SHAPES[name]
    a, b, out = _operands(name)
    if impl == "fastconv":
        c = out["fastconv"]
        run = lambda: _kernels.sgemm(a, b, c, precision="bfloat16")
    else:
        if torch is None:
            pytest.skip("PyTorch is not installed")
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)

        def run():
            with torch_autocast("bfloat16"):
                return torch.mm(ta, tb)
    benchmark.group = f"sgemm {name} bf16 {threads}t"
    benchmark(run)
    record(impl, flop=2 * m * n * k, workload=f"sgemm {name} bf16", shape=(m, n, k), precision="bfloat16")
