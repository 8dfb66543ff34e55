"""Optimizer, state dicts, backends, settings, and training end to end."""

import os
import subprocess  # subprocesses run in tmp_path so they import the installed package, not ./fastconv
import sys

import numpy as np
import pytest
from conftest import rand

import fastconv as fc


def lenet():
    return fc.Sequential(
        fc.Conv2d(1, 8, 5, padding=2), fc.ReLU(), fc.MaxPool2d(2),
        fc.Conv2d(8, 16, 5, padding=2), fc.ReLU(), fc.MaxPool2d(2),
        fc.Flatten(), fc.Linear(16 * 7 * 7, 10))


def train_steps(backend, steps=8, seed=0):
    fc.set_backend(backend)
    try:
        fc.manual_seed(seed)
        model = lenet()
        rng = np.random.default_rng(seed)
        x, y = rand(rng, 16, 1, 28, 28), rng.integers(0, 10, 16)
        loss_fn = fc.SoftmaxCrossEntropy()
        opt = fc.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
        losses = []
        for _ in range(steps):
            losses.append(loss_fn(model(x), y))
            opt.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
        return np.array(losses), model
    finally:
        fc.set_backend("native")


def test_lenet_loss_falls_and_backends_agree():
    native, model_n = train_steps("native")
    ref, model_r = train_steps("reference")
    assert native[-1] < 0.5 * native[0]
    np.testing.assert_allclose(native, ref, rtol=2e-3, atol=1e-4)
    for (name, a), (_, b) in zip(model_n.named_parameters(), model_r.named_parameters()):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-3, atol=1e-4, err_msg=name)


def test_check_backend_runs_both_and_agrees():
    checked, _ = train_steps("check", steps=2)
    native, _ = train_steps("native", steps=2)
    np.testing.assert_array_equal(checked, native)


def test_check_backend_raises_on_mismatch(monkeypatch):
    from fastconv import reference

    monkeypatch.setattr(reference, "relu_forward", lambda x: np.maximum(x, 0) * 1.5)
    fc.set_backend("check")
    try:
        with pytest.raises(fc.BackendMismatchError, match=r"kernel 'relu_forward' output 0 differs.*\(2, 3\)"):
            fc.ReLU()(np.ones((2, 3), np.float32))
    finally:
        fc.set_backend("native")


def test_backend_setting_and_environment(tmp_path):
    with pytest.raises(ValueError, match=r"set_backend: backend must be one of .*; got 'gpu'"):
        fc.set_backend("gpu")
    code = "import fastconv as fc; print(fc.get_backend())"
    env = dict(os.environ, FASTCONV_BACKEND="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.strip() == "reference"
    env["FASTCONV_BACKEND"] = "cuda"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and "ValueError: FASTCONV_BACKEND must be one of" in bad.stderr


def test_isa_environment_and_errors(tmp_path):
    code = "import fastconv as fc; print(fc.get_isa())"
    env = dict(os.environ, FASTCONV_ISA="generic")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.strip() == "generic"
    env["FASTCONV_ISA"] = "neon"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and "ValueError: FASTCONV_ISA must be one of" in bad.stderr
    with pytest.raises(ValueError, match=r"set_isa: `name` must be one of"):
        fc.set_isa("sse9")
    unsupported = [i for i in ("generic", "avx2", "avx512") if i not in fc.supported_isas()]
    for isa in unsupported:
        with pytest.raises(ValueError, match=f"this CPU and build support, .*; got '{isa}'"):
            fc.set_isa(isa)


def test_threads_setting():
    old = fc.get_num_threads()
    assert old >= 1
    try:
        fc.set_num_threads(1)
        assert fc.get_num_threads() == 1
        for bad, exc in [(0, ValueError), (-2, ValueError), (10**6, ValueError), (1.5, TypeError), (True, TypeError)]:
            with pytest.raises(exc, match="set_num_threads: `n` must"):
                fc.set_num_threads(bad)
        assert fc.get_num_threads() == 1
    finally:
        fc.set_num_threads(old)


def test_info_reports_build_and_runtime(tmp_path):
    info = fc.info()
    for key in ("version", "compiler", "flags", "openmp", "threads", "isa", "backend"):
        assert key in info
    assert info["isa"] in info["supported_isas"]
    assert "-O3" in info["flags"] and "-march=native" not in info["flags"]
    out = subprocess.run([sys.executable, "-m", "fastconv", "info"], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert "self-test" in out.stdout and "ok" in out.stdout


# ---------------------------------------------------------------------------
# state dicts


def test_state_dict_keys_and_round_trip():
    model = lenet()
    state = model.state_dict()
    assert list(state) == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias"]
    assert state["0.weight"].shape == (8, 1, 5, 5) and state["7.weight"].shape == (10, 784)
    other = lenet()
    other.load_state_dict(state)
    for (_, a), (_, b) in zip(model.named_parameters(), other.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    state["0.weight"][...] = 0  # a copy: the model is not changed
    assert np.any(model[0].weight.data != 0)


def test_load_state_dict_errors_and_atomicity():
    model = lenet()
    before = model.state_dict()
    state = model.state_dict()
    del state["3.bias"]
    with pytest.raises(KeyError, match=r"missing keys \['3.bias'\]"):
        model.load_state_dict(state)
    state = model.state_dict()
    state["9.weight"] = np.zeros(3, np.float32)
    with pytest.raises(KeyError, match=r"unexpected keys \['9.weight'\]"):
        model.load_state_dict(state)
    state = model.state_dict()
    state["0.weight"] = np.zeros((1, 8, 5, 5), np.float32)
    state["0.bias"] = np.ones(8, np.float32)
    with pytest.raises(ValueError, match=r"`0.weight` must have shape \(8, 1, 5, 5\); got \(1, 8, 5, 5\)"):
        model.load_state_dict(state)
    for k, v in model.state_dict().items():  # nothing changed by the failed loads
        np.testing.assert_array_equal(v, before[k])
    missing, unexpected = model.load_state_dict({"0.bias": np.ones(8, np.float32)}, strict=False)
    assert "0.weight" in missing and unexpected == []
    np.testing.assert_array_equal(model[0].bias.data, 1)


def test_parameter_data_is_live_storage(rng):
    lin = fc.Linear(3, 2)
    lin.weight.data[...] = 0
    lin.bias.data[...] = 5
    np.testing.assert_array_equal(lin(rand(rng, 4, 3)), 5)


# ---------------------------------------------------------------------------
# SGD


def test_sgd_first_steps_by_hand():
    p = fc.Parameter(np.array([1.0, -2.0], np.float32))
    opt = fc.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    p.grad[:] = [1.0, 1.0]
    opt.step()  # g = grad + 0.5 p = [1.5, 0]; buf = g; p -= 0.1 g
    np.testing.assert_allclose(p.data, [0.85, -2.0], rtol=1e-6)
    opt.step()  # g = [1.425, 0]; buf = 0.9*[1.5, 0] + g = [2.775, 0]
    np.testing.assert_allclose(p.data, [0.85 - 0.2775, -2.0], rtol=1e-6)


def test_sgd_errors():
    p = fc.Parameter(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"SGD: `lr` must be a finite number >= 0; got -1"):
        fc.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        fc.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty"):
        fc.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="params must be Parameters"):
        fc.SGD([np.zeros(2)], lr=0.1)


def test_sgd_state_dict_resume_is_identical(rng):
    def run(split):
        fc.manual_seed(3)
        model = fc.Sequential(fc.Linear(4, 3))
        opt = fc.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        x, y = rand(np.random.default_rng(0), 8, 4), np.arange(8) % 3
        loss_fn = fc.SoftmaxCrossEntropy()
        for step in range(6):
            if step == split:
                ms, os_ = model.state_dict(), opt.state_dict()
                fc.manual_seed(99)
                model = fc.Sequential(fc.Linear(4, 3))
                opt = fc.SGD(model.parameters(), lr=0.5)
                model.load_state_dict(ms)
                opt.load_state_dict(os_)
            loss_fn(model(x), y)
            opt.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
        return model.state_dict()["0.weight"]

    np.testing.assert_array_equal(run(split=None), run(split=3))
