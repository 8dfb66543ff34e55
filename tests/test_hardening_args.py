"""One clear line for every bad argument: each names the option, the expected and the
actual value, with exit code 2 (usage) or 1 (failure) and no traceback; messages
print plain numbers, never NumPy reprs."""

import os
import sys

import numpy as np
import pytest
from limited import CLI, run_limited
from test_cli import fastconv, one_line_error

import fastconv as fc
from fastconv import backend
from fastconv.tools import cli


@pytest.mark.parametrize("arch, message", [
    ("conv8x3s0-fc10", "arch: 'conv8x3s0': the stride must be >= 1; got 0"),
    ("pool0-fc10", "arch: 'pool0': the kernel size must be >= 1; got 0"),
    ("avgpool2s0-fc10", "arch: 'avgpool2s0': the stride must be >= 1; got 0"),
    ("conv0x3-fc10", "arch: 'conv0x3': the filters must be >= 1; got 0"),
])
def test_zero_sizes_in_an_arch_spec(tmp_path, arch, message):
    line = one_line_error(fastconv("train", "--arch", arch, "--epochs", "1", "--out", "r", cwd=tmp_path))
    assert line == f"fastconv train: error: {message}"


@pytest.mark.parametrize("path", ["/".join(["a"] * 2500), "x" * 300], ids=["2500-folders", "a-300-byte-name"])
def test_an_out_path_the_system_cannot_hold(tmp_path, path):
    """Refused (PATH_MAX, NAME_MAX) before any folder of it is made, in one line of bounded length."""
    line = one_line_error(fastconv("train", "--out", path, "--epochs", "1", cwd=tmp_path))
    assert line.startswith(f"fastconv train: error: cannot write to the output folder {path[:20]}")
    assert "File name too long" in line and len(line) < 400
    assert os.listdir(tmp_path) == []


def test_a_path_deeper_than_the_recursion_limit_is_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = "/".join(["a"] * (sys.getrecursionlimit() + 200))
    try:
        assert cli._writable_dir(path) == path and os.path.isdir(path)
    finally:  # bottom-up here: shutil.rmtree (pytest's clean-up) would exceed the recursion limit on it
        while path:
            if os.path.isdir(path):
                os.rmdir(path)
            path = os.path.dirname(path)


def test_a_config_that_is_not_utf8_names_the_file(tmp_path):
    (tmp_path / "latin1.toml").write_bytes("epochs = 1\n# r\xe9sum\xe9\n".encode("latin1"))
    line = one_line_error(fastconv("train", "--config", "latin1.toml", cwd=tmp_path))
    assert line.startswith("fastconv train: error: config file latin1.toml is not UTF-8 text"), line


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS: Linux")
@pytest.mark.parametrize("args", [["train", "--threads", "1024", "--epochs", "1", "--out", "r"],
                                  ["bench", "--threads", "1,1024", "--tiny", "--no-torch"]])
def test_threads_this_process_cannot_start_are_refused_before_openmp(tmp_path, args):
    """Under a 1.5 GiB address-space limit 1024 threads cannot start; libgomp would end
    the process from C ("Thread creation failed"). Refused first, as a usage error."""
    r = run_limited(["-c", CLI, *args], tmp_path)
    line = r.error_line()
    assert r.returncode == 2, r.stderr
    assert line.startswith(f"fastconv {args[0]}: error: --threads: must be at most ") and line.endswith("got 1024")
    assert "RLIMIT_AS" in line and "libgomp" not in r.stderr


def test_bench_only_matching_nothing_is_a_usage_error(tmp_path):
    r = fastconv("bench", "--only", "nonexistent", "--tiny", "--no-torch", cwd=tmp_path)
    line = one_line_error(r, code=2)
    assert line == "fastconv bench: error: --only: must be part of a workload's name (see --list); got 'nonexistent'"


@pytest.mark.parametrize("value", ["0", "-1"])
def test_lr_says_greater_than_zero(tmp_path, value):
    r = fastconv("train", "--lr", value, cwd=tmp_path)
    assert r.returncode == 2 and f"--lr: must be a finite number > 0; got {value}" in r.stderr


def test_messages_print_plain_numbers():
    got, expected = np.array([1, 2], np.float32), np.array([1, 3], np.float32)
    assert "native 2.0, reference 3.0" in backend._mismatch(got, expected)
    for make, text in [(lambda: fc.SGD(fc.Linear(2, 2).parameters(), lr=np.float32(-1)), "got -1.0"),
                       (lambda: fc.Conv2d(1, 1, np.float64(3)), "got 3.0"),
                       (lambda: fc.LeakyReLU(np.float32("nan")), "got nan"),
                       (lambda: fc.data.Dataset(np.zeros((2, 1, 2, 2)), [0, 1]).batches(np.float64(0)).__next__(),
                        "got 0.0")]:
        with pytest.raises((ValueError, TypeError)) as e:
            make()
        assert text in str(e.value) and "np." not in str(e.value), str(e.value)


def test_gradcheck_says_what_decided_it():
    """A large relative error where the gradient is ~0 is within atol: the report says
    passed and why, and indices print as plain ints."""
    fc.manual_seed(0)
    layer = fc.Linear(3, 2)
    layer.bias.data[:] = 100.0  # the objective is ~100, so its differences carry ~1e-11 of rounding ...
    x = np.zeros((2, 3))
    x[0, 0] = 1e-9  # ... on weight gradients of ~1e-9: far more than rtol relative, far less than atol
    r = fc.gradcheck(layer, x)
    text = str(r)
    assert r.passed and r.max_rel_error > 1e-5, text
    assert text.startswith("gradcheck passed: every element is within its tolerance atol + rtol * |gradient|")
    assert "np." not in text and r.worst_ratio <= 1

    class Wrong(fc.Module):
        def forward(self, x):
            return 2 * x

        def backward(self, dy):
            return 2.1 * dy

    r = fc.gradcheck(Wrong(), np.ones((2, 3)))
    assert not r.passed and str(r).startswith("gradcheck FAILED: an element is outside its tolerance")
    assert len(r.worst[1]) == 2 and all(type(i) is int for i in r.worst[1]) and r.worst_ratio > 1
