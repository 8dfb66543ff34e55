"""The comparison harness (fastconv.tools.bench, ``fastconv bench``): the turn
order, the per-call arithmetic, and a table whose figures agree with each
other. Timing is never asserted: a fake clock drives the scheduler, and the
end-to-end run uses tiny arrays and checks only the table's consistency."""

import argparse
import io
import re

import pytest

from fastconv import _kernels
from fastconv.tools import bench as compare


class FakeClock:
    """A clock that advances only when a fake side is called."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_sides(clock, costs, log):
    def side(name, cost):
        def call():
            log.append(name)
            clock.now += cost
        return call
    return {name: side(name, cost) for name, cost in costs.items()}


@pytest.fixture
def turn_log(monkeypatch):
    """The sides in the order time_sides gives them their timed turns."""
    log, turn = [], compare._turn

    def logged(fn, warm, calls, clock):
        log.append(fn.__name__)
        return turn(fn, warm, calls, clock)
    monkeypatch.setattr(compare, "_turn", logged)
    return log


def test_turns_alternate_and_time_each_call(turn_log):
    clock, log = FakeClock(), []
    costs = {"fastconv": 1e-3, "torch_cl": 4e-3, "numpy": 2e-4}
    sides = fake_sides(clock, costs, log)
    for name, fn in sides.items():
        fn.__name__ = name
    out = compare.time_sides(sides, reps=4, turn_seconds=8e-3, clock=clock)
    for name, cost in costs.items():
        assert out[name].per_call == pytest.approx([cost] * 4)
        assert out[name].calls == round(8e-3 / cost)
        assert out[name].median == pytest.approx(cost) and out[name].best == pytest.approx(cost)
    timed = turn_log[3:]  # after one calibration turn each
    assert timed == ["fastconv", "torch_cl", "numpy", "numpy", "torch_cl", "fastconv"] * 2


def test_warm_calls_are_not_timed():
    clock, state = FakeClock(), {"cold": True}

    def side():  # 1 ms a call, but 50 ms for the first of a turn (a sleeping thread team waking up)
        clock.now += 0.05 if state["cold"] else 1e-3
        state["cold"] = False
    turns = []
    for _ in range(3):
        state["cold"] = True
        turns.append(compare._turn(side, 1, 5, clock))
    assert turns == pytest.approx([1e-3] * 3)
    assert compare.calibrate(side, 0.01, clock) == (1, 10)


def test_alone_runs_each_side_back_to_back(turn_log):
    clock, log = FakeClock(), []
    sides = fake_sides(clock, {"a": 1e-3, "b": 1e-3}, log)
    for name, fn in sides.items():
        fn.__name__ = name
    out = compare.time_sides(sides, reps=3, turn_seconds=2e-3, alone=True, clock=clock)
    assert turn_log[2:] == ["a"] * 3 + ["b"] * 3
    assert len(out["a"].per_call) == len(out["b"].per_call) == 3


def test_table_figures_are_consistent():
    w = compare.Workload("conv x", {}, flop=2e9)
    p = compare.Workload("pool y", {}, nbytes=3e8)
    results = [(w, {"fastconv": compare.Timing([0.010, 0.012, 0.011]),
                    "torch_cl": compare.Timing([0.020, 0.022, 0.025]),
                    "numpy": compare.Timing([0.1, 0.1, 0.1])}),
               (p, {"fastconv": compare.Timing([0.002]), "torch_cl": compare.Timing([0.005])})]
    rows = compare.rows(results, threads=2, peak=400.0)
    cells = rows[0][2]
    assert cells["fastconv ms"] == "11 (10)"
    assert cells["vs PyTorch CL"] == "2.00x" and cells["vs NumPy/OpenBLAS"] == "9.09x"
    assert cells["rate"] == "181.8 GFLOP/s" and cells["% peak"] == "45%"
    assert rows[1][2]["rate"] == "150.0 GB/s" and "% peak" not in rows[1][2]
    table = compare.markdown(rows, ["fastconv", "torch_cl", "numpy"]).splitlines()
    assert table[0] == ("| workload | threads | fastconv ms | PyTorch CL ms | NumPy/OpenBLAS ms | rate | % peak "
                        "| vs PyTorch CL | vs NumPy/OpenBLAS |")
    assert table[3] == "| pool y | 2 | 2 (2) | 5 (5) | - | 150.0 GB/s | - | 2.50x | - |"


def _parse(text):
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return header, [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]


def _median(cell):
    return float(cell.split(" (")[0])


@pytest.mark.parametrize("fairness", [False, True])
def test_tiny_run_prints_a_consistent_table(fairness, torch):
    threads, torch_threads = _kernels.get_num_threads(), torch.get_num_threads()
    p = argparse.ArgumentParser()
    compare.add_arguments(p)
    args = p.parse_args(["--tiny", "--reps", "2", "--turn-ms", "1", "--threads", "1"]
                        + (["--fairness", "--only", "maxpool"] if fairness else []))
    out = io.StringIO()
    try:
        assert compare.run(args, out=out) == 0
    finally:
        _kernels.set_num_threads(threads)
        torch.set_num_threads(torch_threads)
    text = out.getvalue()
    assert "- ISA: " + _kernels.get_isa() in text and re.search(r"- peak: [\d.]+ GFLOP/s at 1 thread", text)
    table = text.split("Fairness")[0]
    header, rows = _parse(table)
    assert header == compare.columns(list(compare.SIDES))
    every = [w for w in compare.workloads(tiny=True) if not fairness or "maxpool" in w.name]
    names = [w.name for w in every]
    assert [r["workload"] for r in rows] == names
    for w, r in zip(every, rows):
        ours = _median(r["fastconv ms"])
        for side in compare.PEERS:
            label = compare.LABELS[side]
            if r[f"{label} ms"] == "-":  # a side the workload does not have (see the next test)
                assert r[f"vs {label}"] == "-" and side not in w.make
                continue
            ratio = float(r[f"vs {label}"].rstrip("x"))
            assert ratio == pytest.approx(_median(r[f"{label} ms"]) / ours, rel=2e-3, abs=6e-3)
        # % of the float32 FMA peak: for the float32 rows only.
        assert (r["rate"].endswith("GFLOP/s") and w.precision == "float32") == (r["% peak"] != "-")
    if fairness:
        header, rows = _parse(text.split("Fairness")[1])
        assert header == ["workload"] + [compare.LABELS[s] for s in compare.SIDES]
        assert [r["workload"] for r in rows] == names and all(float(r["fastconv"]) > 0 for r in rows)


def test_the_sides_of_each_workload():
    """float32 sgemm has no PyTorch side, the bf16 rows no NumPy side and bf16
    sgemm one PyTorch side (row-major, in the NCHW column); the rest have all."""
    for w in compare.workloads(tiny=True):
        sgemm = w.name.startswith("sgemm")
        if w.precision == "float32":
            expected = {"fastconv", "numpy"} | (set() if sgemm else {"torch_cl", "torch_nchw"})
        else:
            expected = {"fastconv", "torch_nchw"} | (set() if sgemm else {"torch_cl"})
        if compare._torch() is None:
            expected -= {"torch_cl", "torch_nchw"}
        assert set(w.make) == expected, w.name
        assert (w.flop > 0) != (w.nbytes > 0), w.name
        assert w.name.endswith(" bf16") == (w.precision == "bfloat16"), w.name


def test_bad_options(capsys):
    p = argparse.ArgumentParser()
    compare.add_arguments(p)
    for argv, match in [(["--sides", "torch_cl"], "must include fastconv"), (["--sides", "fastconv,jax"], "jax")]:
        with pytest.raises(ValueError, match=match):
            compare.run(p.parse_args(argv + ["--list"]), out=io.StringIO())
    # Bad numbers are usage errors: argparse exits with code 2 and names the option.
    for argv, match in [(["--reps", "0"], "--reps: must be >= 1; got 0"),
                        (["--turn-ms", "-1"], "--turn-ms: must be a finite number > 0; got -1"),
                        (["--threads", "a"], "--threads: must be comma-separated whole numbers"),
                        (["--threads", "2,0"], "--threads: must be >= 1; got '2,0'")]:
        with pytest.raises(SystemExit) as e:
            p.parse_args(argv)
        assert e.value.code == 2 and match in capsys.readouterr().err


def test_pin_malloc_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert compare.pin_malloc() is True


@pytest.mark.parametrize("isa", _kernels.supported_isas())
def test_peak_is_a_positive_measurement(isa):
    assert 0 < _kernels.peak_gflops(1, isa, seconds=0.01) < 1e5


@pytest.mark.parametrize("kwargs,match", [({"threads": 0}, "`threads` must be an int"),
                                          ({"threads": 1.5}, "`threads` must be an int"),
                                          ({"isa": "sse9"}, "`isa` must be one of"),
                                          ({"seconds": 0}, r"`seconds` must be in \(0, 60\]")])
def test_peak_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _kernels.peak_gflops(**kwargs)


def test_resnet20_training_step_row(torch):
    """The ResNet-20 rows: batch 128 in full runs, every side in a tiny one, its
    FLOP count that of the network, and table rows (float32, bf16) whose ratios agree."""
    import numpy as np

    import fastconv as fc

    build, shape, gflop = compare.NETS["resnet20"]
    assert shape == (128, 3, 32, 32)
    macs = []
    forward = fc.Conv2d.forward

    def counted(self, x, relu=False):
        y = forward(self, x, relu)
        macs.append(self.weight.data.size * y.shape[-2] * y.shape[-1])
        return y
    model = build(fc)
    try:
        fc.Conv2d.forward = counted
        model(np.zeros((1, 3, 32, 32), np.float32))
    finally:
        fc.Conv2d.forward = forward
    per_image = 2 * (sum(macs) + model[-1].weight.data.size)  # the convs and the Linear
    assert gflop == pytest.approx(3 * per_image * 128 / 1e9, rel=0.01)
    assert [type(m).__name__ for m in build(torch.nn).modules()].count("Residual") == 9

    threads, torch_threads = _kernels.get_num_threads(), torch.get_num_threads()
    p = argparse.ArgumentParser()
    compare.add_arguments(p)
    out = io.StringIO()
    try:
        assert compare.run(p.parse_args(["--tiny", "--reps", "1", "--turn-ms", "1", "--threads", "1",
                                         "--only", "resnet20"]), out=out) == 0
    finally:
        _kernels.set_num_threads(threads)
        torch.set_num_threads(torch_threads)
    _, rows = _parse(out.getvalue())
    assert [r["workload"] for r in rows] == ["resnet20 train step b2", "resnet20 train step b2 bf16"]
    for r, peers in zip(rows, [compare.PEERS, ("torch_cl", "torch_nchw")]):  # bf16: no NumPy side
        ours = _median(r["fastconv ms"])
        for side in peers:
            label = compare.LABELS[side]
            ratio = float(r[f"vs {label}"].rstrip("x"))
            assert ratio == pytest.approx(_median(r[f"{label} ms"]) / ours, rel=2e-3, abs=6e-3)
        assert r["rate"].endswith("GFLOP/s")


def test_bf16_rows_run_both_sides_in_bf16(torch, monkeypatch):
    """The bf16 rows: the cifar_small and resnet20 steps, cifar_small inference
    and GEMMs, in a tiny run; fastconv's side runs its kernels in bf16 and
    PyTorch's runs under its bf16 autocast. Nothing is timed."""
    from fastconv import backend

    bf16 = [w for w in compare.workloads(tiny=True) if w.precision == "bfloat16"]
    assert [w.name for w in bf16] == ["sgemm 16x16x16 bf16", "cifar_small train step b2 bf16",
                                      "resnet20 train step b2 bf16", "cifar_small inference b2 bf16"]
    assert compare.BF16_NETS == ("cifar_small", "resnet20") and compare.BF16_INFERENCE == (256,)
    ours, theirs = [], []
    kernel_precision = backend.kernel_precision
    monkeypatch.setattr(backend, "kernel_precision", lambda name: ours.append(kernel_precision(name)) or ours[-1])
    sgemm = _kernels.sgemm
    monkeypatch.setattr(_kernels, "sgemm", lambda *a, **kw: ours.append(kw.get("precision")) or sgemm(*a, **kw))
    torch_autocast = compare.torch_autocast
    with torch_autocast("bfloat16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with torch_autocast("float32"):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(compare, "torch_autocast", lambda precision: theirs.append(precision) or
                        torch_autocast(precision))
    for w in bf16:
        for side, make in w.make.items():
            ours.clear(), theirs.clear()
            out = make()()
            if side == "fastconv":
                assert "bfloat16" in ours and "float32" not in ours, (w.name, ours)
            else:
                assert theirs and set(theirs) == {"bfloat16"}, (w.name, side)
                if out is not None:  # the forward's scores, the GEMM's product
                    assert out.dtype == torch.bfloat16, (w.name, side)
    # The float32 rows stay float32 on both sides.
    for w in compare.workloads(tiny=True):
        if w.name == "cifar_small train step b2":
            ours.clear(), theirs.clear()
            w.make["fastconv"]()(), w.make["torch_cl"]()()
            assert ours and set(ours) == {None} and set(theirs) == {"float32"}


def _bench_script(name):
    """bench/<name>.py as a module (a script of the repository, not of the package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    if not path.is_file():
        pytest.skip(f"{path} is not here (an installed copy without the repository)")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layers_profile_finds_each_conv_of_the_step(capsys):
    """bench/layers.py on lenet: the step's two convs by shape with one forward
    call each, every kernel kind accounted, and one table row per conv."""
    layers = _bench_script("layers")
    total, by_kernel, convs = layers.step_profile("lenet", 1, 1)
    assert set(convs) == {((64, 1, 28, 28), (8, 1, 5, 5), (1, 1), (2, 2), 1),
                          ((64, 8, 14, 14), (16, 8, 5, 5), (1, 1), (2, 2), 1)}
    assert all(calls == 1 and spent > 0 for calls, spent in convs.values())
    assert {"conv2d_maxpool_forward", "conv2d_backward", "maxpool2d_backward", "sgemm"} <= set(by_kernel)
    assert 0 < sum(by_kernel.values()) <= total
    assert layers.kind_of("add_relu") == "add" and layers.kind_of("maxpool2d_forward") == "pool"
    layers.main(["--net", "lenet", "--threads", "1", "--steps", "1", "--reps", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 64x")]
    assert len(rows) == 2 and all(line.count("|") == 7 for line in rows)


def test_ab_builds_runs_each_build_outside_the_source_tree(monkeypatch):
    """bench/ab_builds.py's turns run from a neutral folder: from a source tree,
    `python -m fastconv` would import that tree's package for both builds."""
    from pathlib import Path
    from types import SimpleNamespace

    ab = _bench_script("ab_builds")
    seen = {}

    def run(cmd, **kwargs):
        seen.update(kwargs, cmd=cmd)
        return SimpleNamespace(stdout="| relu 4x4 | 1 | 0.25 (0.2) | - |\n| relu 4x4 | 2 | 0.125 (0.1) | - |\n")

    monkeypatch.setattr(ab.subprocess, "run", run)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert ab.one_turn("/some/python", "1,2", 3, ["relu"]) == {("relu 4x4", 1): 0.25, ("relu 4x4", 2): 0.125}
    repo = Path(__file__).resolve().parents[1]
    assert seen["cwd"] and repo not in Path(seen["cwd"]).resolve().parents and Path(seen["cwd"]).resolve() != repo
    assert seen["cmd"][:3] == ["/some/python", "-m", "fastconv"] and "--only" in seen["cmd"]
