"""Golden outputs: every native kernel's results on a fixed set of cases that
reach every conv algorithm (im2col, implicit im2col, 1x1, Winograd, direct,
conv+pool), on every ISA and at 1 and 2 threads, hashed and compared with
the hashes recorded in tests/golden_outputs.json.

They pin the bits: a restructuring that must not change any result (the ISA
context, the conv planner) proves it here. A change that means to alter
results re-records them, and says so in its commit:

    FASTCONV_GOLDEN_RECORD=1 pytest tests/test_golden.py

Records are keyed by machine (x86_64, aarch64, ...), since the compiler
contracts and vectorizes the generic C differently per architecture; a
machine with no records skips, saying so. Inputs come from integer
arithmetic, not NumPy's random streams (which may change between releases).
"""

import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest

from fastconv import _kernels

GOLDEN = Path(__file__).with_name("golden_outputs.json")
RECORD = os.environ.get("FASTCONV_GOLDEN_RECORD") == "1"
MACHINE = platform.machine()


def data(*shape, seed=0, scale=1.0):
    """Deterministic float32 values in [-scale, scale): a multiplicative hash of the index."""
    i = np.arange(int(np.prod(shape)), dtype=np.uint64) + np.uint64(seed * 7919 + 1)
    h = (i * np.uint64(2654435761)) % np.uint64(1 << 32)
    return ((h.astype(np.float64) / 2**32 * 2 - 1) * scale).astype(np.float32).reshape(shape)


# (name, N, C, H, W, K, kernel, stride, padding): one case per algorithm and edge
CONVS = [
    ("winograd", 2, 16, 12, 10, 32, 3, 1, 1),      # Winograd under "always" (and in auto for larger N)
    ("winograd_auto", 8, 16, 16, 16, 16, 3, 1, 1),  # enough tiles for auto
    ("direct_k8", 3, 4, 14, 13, 8, 5, 1, 2),
    ("direct_k16", 2, 6, 11, 9, 16, 3, 1, 0),
    ("pointwise", 2, 24, 7, 9, 20, 1, 1, 0),
    ("strided", 2, 3, 21, 19, 12, 7, 2, 3),
    ("first_layer", 4, 3, 16, 16, 32, 3, 1, 1),
    ("rect", 1, 5, 9, 12, 7, (2, 3), (1, 2), (1, 0)),
]
# The Winograd modes the hashes were recorded under (their names are in the keys), as conv algorithms.
ALGORITHM = {"never": "no-winograd", "auto": "auto", "always": "winograd"}
MODES = tuple(ALGORITHM)


def conv_case(n, c, h, w, k, kernel, stride, padding, seed):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x, wt = data(n, c, h, w, seed=seed), data(k, c, kh, kw, seed=seed + 1, scale=0.3)
    b = data(k, seed=seed + 2, scale=0.1)
    return x, wt, b


def cases():
    """(case id, thunk returning a tuple of output arrays)."""
    out = []
    for i, (name, n, c, h, w, k, kernel, stride, padding) in enumerate(CONVS):
        x, wt, b = conv_case(n, c, h, w, k, kernel, stride, padding, 10 * i)
        y = _kernels.conv2d_forward(x, wt, b, stride, padding)
        dy = data(*y.shape, seed=10 * i + 3)
        for mode in MODES:
            def fwd(x=x, wt=wt, b=b, s=stride, p=padding, mode=mode):
                _kernels.set_conv_algorithm(ALGORITHM[mode])
                return (_kernels.conv2d_forward(x, wt, b, s, p), _kernels.conv2d_forward(x, wt, b, s, p, True))

            def bwd(x=x, wt=wt, dy=dy, s=stride, p=padding, mode=mode):
                _kernels.set_conv_algorithm(ALGORITHM[mode])
                return (*_kernels.conv2d_backward(x, wt, dy, s, p),
                        *_kernels.conv2d_backward(x, wt, dy, s, p, need_dx=False)[1:])
            out += [(f"conv2d_forward/{name}/{mode}", fwd), (f"conv2d_backward/{name}/{mode}", bwd)]
            if y.shape[2] >= 2 and y.shape[3] >= 2:
                def pool(x=x, wt=wt, b=b, s=stride, p=padding, mode=mode):
                    _kernels.set_conv_algorithm(ALGORITHM[mode])
                    return _kernels.conv2d_maxpool_forward(x, wt, b, s, p, True)
                out.append((f"conv2d_maxpool_forward/{name}/{mode}", pool))
    a, bm = data(67, 45, seed=100), data(45, 38, seed=101)
    cm = data(38, 67, seed=102)
    out += [
        ("sgemm/plain", lambda: (_kernels.sgemm(a, bm),)),
        ("sgemm/trans_beta", lambda: (_kernels.sgemm(bm, a, cm.copy(), trans_a=True, trans_b=True,
                                                     alpha=0.5, beta=-1.5),)),
        ("sgemm/large", lambda: (_kernels.sgemm(data(300, 200, seed=103), data(200, 260, seed=104)),)),
    ]
    for kernel, stride, padding, shape in ((2, 2, 0, (3, 8, 16, 15)), (3, 2, 1, (2, 5, 13, 11)),
                                           ((2, 3), (1, 2), (1, 1), (1, 3, 7, 9)), (2, 2, 0, (64, 16, 14, 14))):
        x = data(*shape, seed=200)
        key = f"{kernel}-{stride}-{padding}-{'x'.join(map(str, shape))}"

        def mp(x=x, kernel=kernel, stride=stride, padding=padding):
            y, am = _kernels.maxpool2d_forward(x, kernel, stride, padding)
            dx = _kernels.maxpool2d_backward(data(*y.shape, seed=201), am, x.shape, kernel, stride, padding)
            return y, am, dx

        def ap(x=x, kernel=kernel, stride=stride, padding=padding):
            y = _kernels.avgpool2d_forward(x, kernel, stride, padding)
            return y, _kernels.avgpool2d_backward(data(*y.shape, seed=202), x.shape, kernel, stride, padding)
        out += [(f"maxpool2d/{key}", mp), (f"avgpool2d/{key}", ap)]
    v, dv = data(70001, seed=300, scale=4.0), data(70001, seed=301)
    out += [
        ("relu", lambda: (_kernels.relu_forward(v), _kernels.relu_backward(dv, np.maximum(v, 0)))),
        ("bias_add", lambda: (_kernels.bias_add(data(3, 7, 11, 13, seed=302), data(7, seed=303)),)),
        ("leaky_relu", lambda: (_kernels.leaky_relu_forward(v, 0.1), _kernels.leaky_relu_backward(dv, v, 0.1))),
        ("elu", lambda: (_kernels.elu_forward(v, 0.7), _kernels.elu_backward(dv, v, 0.7))),
        ("sigmoid", lambda: (_kernels.sigmoid_forward(v), _kernels.sigmoid_backward(dv, v / 9 + 0.5))),
        ("tanh", lambda: (_kernels.tanh_forward(v), _kernels.tanh_backward(dv, v / 4.5))),
    ]
    xb, wb, bb = data(6, 12, 9, 7, seed=400, scale=3.0), data(12, seed=401), data(12, seed=402)

    def bn():
        y, mean, var = _kernels.batchnorm_forward(xb, wb, bb, None, None, 1e-5)
        back = _kernels.batchnorm_backward(data(*xb.shape, seed=403), xb, wb, mean, var, 1e-5, True)
        return (y, mean, var, *back)
    out.append(("batchnorm", bn))
    return out


def digest(outputs) -> str:
    h = hashlib.sha256()
    for a in outputs:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]


def run_all() -> dict:
    old = (_kernels.get_isa(), _kernels.get_num_threads(), _kernels.set_conv_algorithm("auto"))
    got = {}
    try:
        for isa in _kernels.supported_isas():
            for threads in (1, 2):
                _kernels.set_isa(isa)
                _kernels.set_num_threads(threads)
                for case, thunk in cases():
                    got[f"{MACHINE}/{isa}/{threads}t/{case}"] = digest(thunk())
    finally:
        _kernels.set_isa(old[0])
        _kernels.set_num_threads(old[1])
        _kernels.set_conv_algorithm(old[2])
    return got


def test_outputs_match_the_recorded_bits():
    got = run_all()
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if RECORD:
        # Keep the records of the ISAs this CPU lacks (an AVX2 host keeps AVX-512's).
        ran = {"/".join(k.split("/")[:2]) for k in got}
        recorded = {k: v for k, v in recorded.items() if "/".join(k.split("/")[:2]) not in ran} | got
        GOLDEN.write_text(json.dumps(dict(sorted(recorded.items())), indent=0) + "\n")
        return
    mine = {k: v for k, v in recorded.items() if k.startswith(f"{MACHINE}/")}
    if not mine:
        pytest.skip(f"no golden outputs recorded for {MACHINE}; record them with FASTCONV_GOLDEN_RECORD=1")
    checked = {k: v for k, v in got.items() if k in mine}
    # every case this host can run that was recorded, and every ISA recorded that this CPU has
    missing = sorted(k for k in got if k not in mine and k.split("/")[1] in {m.split("/")[1] for m in mine})
    assert not missing, f"cases without a record (re-record): {missing[:5]}"
    changed = sorted(k for k, v in checked.items() if mine[k] != v)
    assert not changed, f"{len(changed)} of {len(checked)} outputs changed bits, e.g. {changed[:8]}"
