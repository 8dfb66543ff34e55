"""fastconv.train.checkpoint: complete, atomic, pickle-free checkpoints that PyTorch can read."""

import json
import os
import stat

import numpy as np
import pytest

import fastconv as fc
from fastconv.train import checkpoint as ckpt
from fastconv.models import build_model


def net(seed=0):
    fc.manual_seed(seed)
    return build_model("conv4x3p1-relu-pool2-fc6-relu-fc3", (2, 6, 6), 3)


def train_a_bit(model, opt, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((8, 2, 6, 6)).astype(np.float32), rng.integers(0, 3, 8)
    loss = fc.SoftmaxCrossEntropy()
    for _ in range(steps):
        loss(model(x), y)
        opt.zero_grad()
        model.backward(loss.backward())
        opt.step()
    return x


def assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("make_opt", [
    lambda p: fc.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda p: fc.Adam(p, lr=1e-2, betas=(0.8, 0.99), amsgrad=True),
    lambda p: fc.RMSprop(p, lr=1e-2, momentum=0.5, centered=True),
    lambda p: fc.Adagrad(p, lr=0.1),
])
def test_roundtrip_restores_model_optimizer_scheduler_and_metadata(tmp_path, make_opt):
    model = net()
    opt = make_opt(model.parameters())
    sched = fc.StepLR(opt, step_size=2, gamma=0.5)
    train_a_bit(model, opt)
    sched.step()
    sched.step()
    meta = {"epoch": 3, "best": float("inf"), "worst": float("-inf"), "nan": float("nan"),
            "pair": (1, 2), "rng": np.random.default_rng(5).bit_generator.state, "np": np.float32(0.5)}
    ckpt.save_checkpoint(tmp_path / "c", model, opt, sched, meta=meta, files={"notes.txt": b"hello"})
    assert sorted(os.listdir(tmp_path / "c")) == ["checkpoint.json", "model.safetensors", "notes.txt",
                                                   "optimizer.safetensors"]

    model2 = net(seed=1)
    opt2 = make_opt(model2.parameters())
    sched2 = fc.StepLR(opt2, step_size=2, gamma=0.5)
    got = ckpt.load_checkpoint(tmp_path / "c", model2, opt2, sched2)
    assert_state_equal(model.state_dict(), model2.state_dict())
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]  # tuples (Adam's betas) come back as tuples
    for i in s1["state"]:
        for name, v in s1["state"][i].items():
            w = s2["state"][i][name]
            assert type(w) is type(v) or isinstance(v, np.ndarray), (i, name)
            np.testing.assert_array_equal(w, v)
    assert sched2.state_dict() == sched.state_dict() and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert got["epoch"] == 3 and got["best"] == float("inf") and got["worst"] == float("-inf")
    assert np.isnan(got["nan"]) and got["pair"] == [1, 2] and got["np"] == 0.5
    assert got["rng"] == meta["rng"]
    # the two models now train identically
    train_a_bit(model, opt, seed=7)
    train_a_bit(model2, opt2, seed=7)
    assert_state_equal(model.state_dict(), model2.state_dict())


def test_files_are_safetensors_and_strict_json_never_pickle(tmp_path):
    model = net()
    opt = fc.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_a_bit(model, opt)
    ckpt.save_checkpoint(tmp_path / "c", model, opt, fc.ReduceLROnPlateau(opt), meta={"best": float("inf")})
    for name in ("model.safetensors", "optimizer.safetensors"):
        raw = (tmp_path / "c" / name).read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        assert all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__")
        assert b"\x80\x02" not in raw[:2] and b"\x80\x04" not in raw[:2]
    header = json.loads((tmp_path / "c" / "model.safetensors").read_bytes()[8:][:int.from_bytes(
        (tmp_path / "c" / "model.safetensors").read_bytes()[:8], "little")])
    assert {k: v["shape"] for k, v in header.items() if k != "__metadata__"} == \
        {k: list(v.shape) for k, v in model.state_dict().items()}

    def refuse(token):
        raise AssertionError(f"non-standard JSON literal {token}")
    info = json.loads((tmp_path / "c" / "checkpoint.json").read_text(), parse_constant=refuse)
    assert info["format"] == "fastconv.train.checkpoint" and info["optimizer"]["type"] == "SGD"
    assert ckpt.load_weights(tmp_path / "c").keys() == model.state_dict().keys()


def test_pytorch_loads_the_weights_and_gives_the_same_scores(tmp_path, torch):
    from safetensors.torch import load_file

    model = net()
    train_a_bit(model, fc.SGD(model.parameters(), lr=0.1, momentum=0.9))
    ckpt.save_checkpoint(tmp_path / "c", model)
    tnet = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(36, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    # fastconv's Sequential numbers its layers as torch's does: "0.weight", "4.weight", "6.weight"
    assert model.state_dict().keys() == tnet.state_dict().keys()
    tnet.load_state_dict(load_file(str(tmp_path / "c" / "model.safetensors")))
    x = np.random.default_rng(1).standard_normal((5, 2, 6, 6)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(tnet(torch.from_numpy(x)).numpy(), model(x), rtol=1e-4, atol=1e-5)


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = net()
    opt = fc.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ckpt.save_checkpoint(tmp_path / "best", model, opt, meta={"epoch": 1})
    before = {n: (tmp_path / "best" / n).read_bytes() for n in os.listdir(tmp_path / "best")}
    train_a_bit(model, opt)
    real = ckpt._write_synced
    calls = []

    def crash(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real(path, data)
    monkeypatch.setattr(ckpt, "_write_synced", crash)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_checkpoint(tmp_path / "best", model, opt, meta={"epoch": 2})
    monkeypatch.setattr(ckpt, "_write_synced", real)
    assert {n: (tmp_path / "best" / n).read_bytes() for n in os.listdir(tmp_path / "best")} == before
    assert sorted(os.listdir(tmp_path)) == ["best"]  # no temporary folder left behind
    assert ckpt.load_checkpoint(tmp_path / "best", net(3))["epoch"] == 1


def test_a_crash_between_the_renames_is_recovered(tmp_path):
    model = net()
    ckpt.save_checkpoint(tmp_path / "last", model, meta={"epoch": 4})
    os.rename(tmp_path / "last", tmp_path / "last.old")  # as if killed between the two renames
    os.mkdir(tmp_path / "last.tmp-abc")                   # and a half-written new one
    assert ckpt.load_checkpoint(tmp_path / "last", net(1))["epoch"] == 4
    ckpt.save_checkpoint(tmp_path / "last", model, meta={"epoch": 5})
    assert sorted(os.listdir(tmp_path)) == ["last"]
    assert ckpt.read_metadata(tmp_path / "last")["meta"]["epoch"] == 5


def test_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        ckpt.atomic_write(tmp_path / "a.json", b"{}")
        ckpt.save_checkpoint(tmp_path / "c", net())
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "c").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "c" / "model.safetensors").st_mode) == 0o644


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*nope does not exist"):
        ckpt.load_checkpoint(tmp_path / "nope", net())
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"is not a checkpoint folder \(no checkpoint.json in it\)"):
        ckpt.read_metadata(tmp_path / "empty")
    model = net()
    ckpt.save_checkpoint(tmp_path / "c", model, fc.SGD(model.parameters(), lr=0.1, momentum=0.9))
    other = build_model("conv4x3p1-relu-pool2-fc3", (2, 6, 6), 3)
    with pytest.raises(KeyError, match=r"missing keys \[\]; unexpected keys \['6.weight', '6.bias'\]"):
        ckpt.load_checkpoint(tmp_path / "c", other)
    with pytest.raises(ckpt.CheckpointError, match=r"holds SGD state; the optimizer is Adam"):
        ckpt.load_checkpoint(tmp_path / "c", model, fc.Adam(model.parameters()))
    with pytest.raises(ckpt.CheckpointError, match=r"holds no scheduler state; the scheduler is StepLR"):
        ckpt.load_checkpoint(tmp_path / "c", scheduler=fc.StepLR(fc.SGD(model.parameters(), lr=1), 1))
    (tmp_path / "c" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ckpt.CheckpointError, match=r"model.safetensors is not a valid safetensors file"):
        ckpt.load_checkpoint(tmp_path / "c", model)
    info = json.loads((tmp_path / "c" / "checkpoint.json").read_text())
    info["version"] = 99
    (tmp_path / "c" / "checkpoint.json").write_text(json.dumps(info))
    with pytest.raises(ckpt.CheckpointError, match=r"format version 99 is newer than this fastconv reads"):
        ckpt.read_metadata(tmp_path / "c")
    with pytest.raises(ValueError, match=r"extra file name '../x' must be a plain file name"):
        ckpt.save_checkpoint(tmp_path / "d", model, files={"../x": b""})


def test_zero_dimensional_buffers_keep_their_shape(tmp_path):
    """e.g. batch norm's num_batches_tracked: a 0-d int64, as in PyTorch."""

    class Counter(fc.Module):
        def __init__(self):
            super().__init__()
            self.lin = fc.Linear(2, 2)
            self.register_buffer("count", np.array(7, np.int64))

    ckpt.save_checkpoint(tmp_path / "c", Counter())
    weights = ckpt.load_weights(tmp_path / "c")
    assert weights["count"].shape == () and weights["count"].dtype == np.int64 and weights["count"] == 7
    other = Counter()
    other.count[...] = 0
    ckpt.load_checkpoint(tmp_path / "c", other)
    assert other.count == 7
