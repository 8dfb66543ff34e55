"""The installed package next to NumPy and PyTorch, and on a CPU without AVX.

Each check runs in a fresh interpreter (import order, loaded libraries and
thread pools are per process), started in tmp_path so that it imports the
installed package, not ./fastconv. The sdist and wheel contents are checked
by .ci/check_dist, which CI runs on the files it builds.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import fastconv as fc
from fastconv import _kernels
from fastconv.tools.info import openmp_conflict

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
OPENMP = _kernels.build_info()["openmp"]


def run_python(code, cwd, env=None, prefix=(), timeout=600, inherit=True):
    """Run `code` in a fresh interpreter (environment: this one's updated by `env`, or
    `env` alone when not `inherit`); return the JSON object it prints last."""
    env = dict(os.environ, **(env or {})) if inherit else env
    r = subprocess.run([*prefix, sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                       text=True, timeout=timeout, env=env, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


# Layers on odd shapes at 2 threads against the NumPy twins ("check" backend: raises on a
# mismatch), and against PyTorch's conv2d when torch is in the process.
CHECK_RESULTS = """
    import json
    import numpy as np
    fc.set_num_threads(2)
    fc.set_backend("check")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 13, 11), dtype=np.float32)
    model = fc.Sequential(fc.Conv2d(2, 5, 3, stride=2, padding=1), fc.ReLU(), fc.MaxPool2d(2),
                          fc.Flatten(), fc.Linear(5 * 3 * 3, 4))
    y = model(x)
    model.backward(np.ones_like(y))
    out = {"isa": fc.get_isa(), "shape": list(y.shape)}
    if "torch" in sys.modules:
        torch.set_num_threads(2)
        conv = model[0]
        want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(conv.weight.data),
                                          torch.from_numpy(conv.bias.data), stride=2, padding=1)
        got = fc.reference.conv2d_forward(x, conv.weight.data, conv.bias.data, (2, 2), (1, 1))
        fc.set_backend("native")
        out["torch_err"] = float(np.abs(fc._kernels.conv2d_forward(x, conv.weight.data, conv.bias.data,
                                                                  (2, 2), (1, 1)) - want.numpy()).max())
        out["twin_err"] = float(np.abs(got - want.numpy()).max())
    print(json.dumps(out))
"""

ORDERS = [("numpy", "fastconv"), ("fastconv", "numpy"),
          pytest.param(("torch", "fastconv"), marks=needs_torch),
          pytest.param(("fastconv", "torch"), marks=needs_torch),
          pytest.param(("numpy", "torch", "fastconv"), marks=needs_torch),
          pytest.param(("fastconv", "numpy", "torch"), marks=needs_torch)]


@pytest.mark.parametrize("order", ORDERS, ids="-then-".join)
def test_import_order_gives_correct_results(order, tmp_path):
    imports = "".join(f"import {m}\n" for m in order) + "import sys\nimport fastconv as fc\n"
    out = run_python(imports + textwrap.dedent(CHECK_RESULTS), tmp_path)
    assert out["shape"] == [3, 4]
    if "torch" in order:
        assert out["torch_err"] < 1e-4 and out["twin_err"] < 1e-4, out


# -- OpenMP runtimes in the process ------------------------------------------------------------------------


def test_openmp_conflict_is_about_implementations_not_copies():
    gnu_a = {"implementation": "GNU", "filepath": "/a/fastconv.libs/libgomp-f9a9ad78.so.1.0.0"}
    gnu_b = {"implementation": "GNU", "filepath": "/b/torch/lib/libgomp.so.1"}
    llvm = {"implementation": "LLVM", "filepath": "/c/libomp.so"}
    intel = {"implementation": "Intel", "filepath": "/d/libiomp5.so"}
    assert openmp_conflict([]) == ""
    assert openmp_conflict([gnu_a]) == ""
    assert openmp_conflict([gnu_a, gnu_b]) == ""  # two copies of libgomp: each keeps its own pool
    msg = openmp_conflict([gnu_a, gnu_b, llvm])
    assert "2 different OpenMP implementations" in msg and "GNU and LLVM" in msg and "libomp.so" in msg
    assert "Intel and LLVM" in openmp_conflict([llvm, intel])


def test_info_warns_when_implementations_are_mixed(monkeypatch):
    info_module = sys.modules["fastconv.tools.info"]
    fake = [{"implementation": "GNU", "filepath": "/x/libgomp.so.1", "version": None, "num_threads": 2},
            {"implementation": "LLVM", "filepath": "/y/libomp.so", "version": None, "num_threads": 2}]
    monkeypatch.setattr(info_module, "openmp_runtimes", lambda: fake)
    with pytest.warns(RuntimeWarning, match="GNU and LLVM"):
        report = fc.info()
    assert "GNU and LLVM" in report["openmp_warning"]
    assert "/x/libgomp.so.1" in report["openmp_loaded"] and "/y/libomp.so" in report["openmp_loaded"]


LOADED_GOMP = """
    def loaded_gomp():
        with open("/proc/self/maps") as f:
            return {os.path.realpath(line.split()[-1]) for line in f if "libgomp" in line.split()[-1]}
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.skipif(not OPENMP, reason="built without OpenMP")
def test_info_lists_every_loaded_openmp_runtime(tmp_path):
    """fastconv's own libgomp and torch's (when installed) are listed, without a warning."""
    code = "import json, os, sys, warnings\n" + textwrap.dedent(LOADED_GOMP) + textwrap.dedent("""
        import fastconv as fc
        mine = loaded_gomp()
        if HAS_TORCH:
            import torch
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            report = fc.info()
        print(json.dumps({"mine": sorted(mine), "all": sorted(loaded_gomp()), "report": report}))
    """).replace("HAS_TORCH", str(HAS_TORCH))
    out = run_python(code, tmp_path)
    assert out["mine"], "fastconv's module should load a libgomp"
    listed = out["report"]["openmp_loaded"]
    for path in out["all"]:
        assert os.path.basename(path) in listed, (path, listed)
    assert out["report"]["openmp_warning"] == ""
    assert listed.count("GNU ") == len(out["all"])


# -- threads: no BLAS inside fastconv's regions, no oversubscription ---------------------------------------


def test_kernels_do_not_call_blas():
    """The compiled module imports no BLAS symbol, so no OpenBLAS (or MKL) call can run
    inside fastconv's parallel regions: its GEMM is its own (csrc/core/sgemm.c)."""
    with open(_kernels.__file__, "rb") as f:
        binary = f.read()
    for name in (b"cblas_", b"sgemm_\0", b"openblas", b"mkl_", b"dgemm"):
        assert name not in binary, name


TAKING_TURNS = """
    import json, os, time
    import numpy as np
    fc.set_num_threads(2)
    torch.set_num_threads(2)

    def cpu_ticks():
        '''CPU time (user + system, clock ticks) of each thread of this process.'''
        ticks = {}
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks[tid] = int(fields[11]) + int(fields[12])
        return ticks

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32, 32, 32), dtype=np.float32)
    w = rng.standard_normal((32, 32, 3, 3), dtype=np.float32)
    b = np.zeros(32, np.float32)
    xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
    run = {"fastconv": lambda: fc._kernels.conv2d_forward(x, w, b, (1, 1), (1, 1)),
           "torch": lambda: torch.nn.functional.conv2d(xt, wt, bt, 1, 1)}
    for fn in run.values():
        fn()
    phases = []
    for turn in range(3):
        for name, fn in run.items():
            time.sleep(0.1)  # let the other library's idle workers stop spinning and sleep
            before = cpu_ticks()
            for _ in range(16):  # ~20 GFLOP: tens of clock ticks per thread on a fast CPU
                fn()
            after = cpu_ticks()
            used = {tid: after[tid] - before.get(tid, 0) for tid in after}
            phases.append({"library": name, "threads": len(after), "main": used[str(os.getpid())],
                           "used": sorted(used.values(), reverse=True)})
    print(json.dumps(phases))
"""


@needs_torch
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
@pytest.mark.skipif(not OPENMP, reason="built without OpenMP")
@pytest.mark.parametrize("first", ["fastconv", "torch"])
def test_no_oversubscription_when_taking_turns_with_torch(first, tmp_path):
    """fastconv and torch, each at 2 threads, take turns in one process: in each turn
    exactly two threads work (the caller and one pool worker), never more, and no
    thread is created after the first calls. Counts CPU time per thread; times nothing."""
    second = "torch" if first == "fastconv" else "fastconv"
    code = f"import {first}\nimport {second}\nimport fastconv as fc\n" + textwrap.dedent(TAKING_TURNS)
    phases = run_python(code, tmp_path)
    assert len({p["threads"] for p in phases}) == 1, phases
    for p in phases:
        busy = [t for t in p["used"] if t >= 0.25 * p["main"]]
        assert p["main"] >= 5, p  # enough work that one clock tick is noise
        assert len(busy) == 2, p


# -- a CPU without AVX --------------------------------------------------------------------------------------

QEMU = shutil.which("qemu-x86_64")


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (apt install qemu-user) is needed to emulate an older CPU")
def test_runs_on_a_cpu_without_avx(tmp_path):
    """Under QEMU emulating a Westmere (SSE4.2, no AVX: any AVX instruction is SIGILL),
    fastconv picks the generic path by itself, every native kernel matches its twin
    (`fastconv info`'s self-test), and a network trains a step with the "check" backend.
    The per-ISA runs of the kernel tests are the `isa_threads` fixture's job."""
    # "picks by itself": an FASTCONV_ISA of the host's run (e.g. avx2) would be refused there
    env = {k: v for k, v in os.environ.items() if k != "FASTCONV_ISA"}
    # NumPy's OpenBLAS (0.3.31) picks an AVX kernel on QEMU's Westmere model by itself, and
    # `import numpy` dies of SIGILL before fastconv is reached; its core type is pinned.
    env["OPENBLAS_CORETYPE"] = "Nehalem"
    out = run_python("import sys\nimport fastconv as fc\n" + textwrap.dedent(CHECK_RESULTS), tmp_path,
                     prefix=(QEMU, "-cpu", "Westmere"), env=env, inherit=False)
    assert out["isa"] == "generic" and out["shape"] == [3, 4]
    script = shutil.which("fastconv", path=os.path.dirname(sys.executable))
    r = subprocess.run([QEMU, "-cpu", "Westmere", sys.executable, script, "info"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, check=False, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = dict(line.split(None, 1) for line in r.stdout.splitlines() if " " in line)
    assert lines["isa"] == "generic" and lines["supported_isas"] == "['generic']", r.stdout
    assert lines["self-test"].startswith("ok"), r.stdout


def test_no_native_arch_flags():
    """The build does not tune for the machine that built it (the ISA paths get their
    flags file by file in setup.py and are picked at run time)."""
    flags = _kernels.build_info()["flags"]
    assert "-march" not in flags and "-mtune=native" not in flags, flags
