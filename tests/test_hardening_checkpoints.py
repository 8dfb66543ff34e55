"""Checkpoints survive SIGKILL mid-write, and hostile checkpoint files are refused.

Kill test: a training subprocess (a small MLP on 96 digits, a checkpoint every
epoch) is killed with SIGKILL inside one of its checkpoint writes, many times;
every time, the `best` and `last` checkpoints written before still load into a
fresh model and optimizer, and training resumes from them. The child runs in
lock step with the parent: before each file-system step of a checkpoint write
(a mkdir, an open, an fsync, a rename, a removal) it says so and waits for the
parent's go-ahead, so the parent kills it at an exact step and knows exactly
which writes completed, however loaded the host is. Trial i kills write
3 + i % 7 at step i % (steps per write), so the trials walk through every crash
point of both `best` and `last` writes. ``FASTCONV_KILL_TRIALS=N`` sets the
number of trials (default 20), ``FASTCONV_KILL_SEED`` shuffles the points.

Untrusted files: truncated, corrupted, oversized-header and wrong-dtype
safetensors files and broken checkpoint.json files raise CheckpointError (a
ValueError) naming the file; nothing is unpickled anywhere in the package.
"""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastconv as fc
from fastconv.train import checkpoint as ckpt
from fastconv.models import build_model

TRIALS = int(os.environ.get("FASTCONV_KILL_TRIALS", "20"))

CHILD = textwrap.dedent("""
    import builtins, os, shutil, sys
    import fastconv as fc
    from fastconv.train import checkpoint as ckpt

    fc.set_num_threads(1)
    save = ckpt.save_checkpoint
    writing = False

    def step(name, fn):  # inside a checkpoint write: announce the step, wait for the go-ahead
        def wrapped(*args, **kwargs):
            if writing:
                print("P", name, flush=True)
                if sys.stdin.readline() != "go\\n":
                    os._exit(3)
            return fn(*args, **kwargs)
        return wrapped

    for module, names in ((os, ("mkdir", "rename", "replace", "fsync", "unlink", "rmdir")),
                          (shutil, ("rmtree",)), (builtins, ("open",))):
        for name in names:
            setattr(module, name, step(name, getattr(module, name)))

    def announced(path, *args, **kwargs):  # tell the parent when a write starts and ends
        global writing
        name = os.path.basename(path)
        print("S", name, flush=True)
        writing = True
        try:
            save(path, *args, **kwargs)
        finally:
            writing = False
        print("E", name, flush=True)

    ckpt.save_checkpoint = announced
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from kill_setup import setup
    trainer, train, val = setup(sys.argv[1])
    trainer.fit(train, val, epochs=10**6)
""")

SETUP = textwrap.dedent("""
    import fastconv as fc

    def setup(out):
        data = fc.data.load_digits()
        X, y = data.X[:96], data.y[:96]
        fc.manual_seed(0)
        model = fc.models.build_model("fc16-relu-fc10", (1, 8, 8), 10)
        opt = fc.Adam(model.parameters(), lr=3e-3)
        trainer = fc.Trainer(model, fc.SoftmaxCrossEntropy(), opt, fc.StepLR(opt, 50), batch_size=32,
                             checkpoint_dir=out, seed=0, progress=False, verbose=False)
        return trainer, (X[:64], y[:64]), (X[64:], y[64:])
""")


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill")
    (folder / "child.py").write_text(CHILD)
    (folder / "kill_setup.py").write_text(SETUP)
    sys.path.insert(0, str(folder))
    try:
        from kill_setup import setup
        yield folder, setup
    finally:
        sys.path.remove(str(folder))


def _kill_during_a_write(folder, out, target, point):
    """Run the child in lock step until its `target`-th checkpoint write reaches
    step `point` (modulo that write's step count), SIGKILL it there. Returns
    ({name: completed writes}, the step names of the killed write up to the kill)."""
    env = dict(os.environ, OMP_WAIT_POLICY="passive", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(folder / "child.py"), str(out)], cwd=folder, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done, starts, steps, counts, current = {"last": 0, "best": 0}, 0, [], {}, None
    try:
        for line in proc.stdout:
            kind, name = line.split()
            if kind == "S":
                starts, steps, current = starts + 1, [], name
            elif kind == "E":
                done[name] += 1
                counts[name] = len(steps)  # this kind's step count, from its latest write
            else:
                steps.append(name)
                at = point % counts.get(current, 1)
                if (starts == target and len(steps) - 1 == at) or starts > target:
                    proc.send_signal(signal.SIGKILL)
                    break
                proc.stdin.write("go\n")
                proc.stdin.flush()
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the child ended before write {target}: {err}"
    return done, steps


def test_sigkill_during_checkpoint_writes_never_loses_best_or_last(child, tmp_path):
    folder, setup = child
    rng = np.random.default_rng(int(os.environ.get("FASTCONV_KILL_SEED", "0")))
    offset = int(rng.integers(0, 1000))
    mid_write = 0
    for trial in range(TRIALS):
        out = tmp_path / f"run{trial}"
        # writes 1 and 2 are the first `best` and `last`; later ones alternate when val improves
        done, steps = _kill_during_a_write(folder, out, target=3 + (trial + offset) % 7, point=trial + offset)
        leftovers = [p.name for p in out.iterdir() if ".tmp-" in p.name or p.name.endswith(".old")]
        mid_write += bool(leftovers)
        assert done["last"] >= 1, done
        for name in ("last", "best"):
            if done[name] == 0:
                continue
            trainer, train, val = setup(str(out))
            meta = ckpt.load_checkpoint(out / name, trainer.model, trainer.optimizer, trainer.scheduler)
            assert all(np.isfinite(p.data).all() for p in trainer.model.parameters())
            if name == "last":  # the killed write is either not visible yet or complete
                assert meta["epoch"] in (done["last"], done["last"] + 1), (trial, meta["epoch"], done, steps)
        # ... and the run resumes from them, writing both again.
        trainer, train, val = setup(str(out))
        history = trainer.fit(train, val, epochs=meta_epoch(out) + 1, resume=True)
        assert len(history["epoch"]) == history["epoch"][-1] and trainer.best_epoch is not None
        for name in ("last", "best"):
            ckpt.load_checkpoint(out / name, trainer.model)
        assert not [p for p in out.iterdir() if ".tmp-" in p.name or p.name.endswith(".old")]
    print(f"\nkill during checkpoint writes: {TRIALS} trials survived, {mid_write} of them "
          "left a temporary or .old folder behind (killed between the first file and the last rename)")
    if TRIALS >= 10:  # the kill points walk through every step, so some fall between mkdir and rename
        assert mid_write > 0, "no kill left a partial write behind: the child's steps were not seen"


def meta_epoch(out):
    return ckpt.read_metadata(out / "last")["meta"]["epoch"]


# ---------------------------------------------------------------------------
# untrusted files

def _net():
    fc.manual_seed(0)
    return build_model("conv4x3p1-relu-pool2-fc3", (2, 6, 6), 3)


@pytest.fixture
def saved(tmp_path):
    model = _net()
    opt = fc.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = np.ones((2, 2, 6, 6), np.float32), np.array([0, 1])
    loss = fc.SoftmaxCrossEntropy()
    loss(model(x), y)
    model.backward(loss.backward())
    opt.step()  # momentum buffers to save
    ckpt.save_checkpoint(tmp_path / "c", model, opt)
    return tmp_path / "c"


def _header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(path, header, body):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def _load(folder):
    model = _net()
    return ckpt.load_checkpoint(folder, model, fc.SGD(model.parameters(), lr=0.1, momentum=0.9))


def _spoil_model_file(path, how):
    raw = path.read_bytes()
    header, body = _header(path)
    key = "0.weight"
    if how == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
    elif how == "header-only":
        path.write_bytes(raw[:6])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(os.urandom(len(raw)))
    elif how == "oversized-header":
        path.write_bytes(struct.pack("<Q", 2**62) + raw[8:])
    elif how == "header-longer-than-file":
        path.write_bytes(struct.pack("<Q", len(raw)) + raw[8:])
    elif how == "wrong-dtype":
        header[key]["dtype"] = "F64"
        _write(path, header, body)
    elif how == "int-dtype":
        header[key]["dtype"] = "I32"
        _write(path, header, body)
    elif how == "wrong-shape":
        header[key]["shape"] = [4, 2, 3, 2]
        _write(path, header, body)
    elif how == "huge-shape":
        header[key]["shape"] = [2**40, 2**40, 3, 3]
        _write(path, header, body)
    elif how == "offsets-out-of-file":
        header[key]["data_offsets"] = [0, 2**40]
        _write(path, header, body)
    elif how == "missing-key":
        del header[key]
        _write(path, header, body)
    elif how == "extra-key":
        header["evil"] = dict(header[key])
        _write(path, header, body)
    elif how == "not-json":
        path.write_bytes(struct.pack("<Q", 9) + b"{not json" + body)
    else:
        raise AssertionError(how)


MODEL_SPOILS = ["truncated", "header-only", "empty", "garbage", "oversized-header", "header-longer-than-file",
                "wrong-dtype", "int-dtype", "wrong-shape", "huge-shape", "offsets-out-of-file", "missing-key",
                "extra-key", "not-json"]


@pytest.mark.parametrize("how", MODEL_SPOILS)
def test_hostile_model_file_is_refused_clearly(saved, how):
    _spoil_model_file(saved / "model.safetensors", how)
    before = [p.data.copy() for p in _net().parameters()]
    model = _net()
    with pytest.raises(ValueError, match=r"model.safetensors|0\.weight|keys") as e:
        ckpt.load_checkpoint(saved, model, fc.SGD(model.parameters(), lr=0.1, momentum=0.9))
    assert "\n" not in str(e.value) and len(str(e.value)) < 500, str(e.value)
    for p, b in zip(model.parameters(), before):  # nothing was half loaded
        np.testing.assert_array_equal(p.data, b)


@pytest.mark.parametrize("how", ["truncated", "wrong-dtype", "oversized-header", "wrong-shape", "missing-key",
                                 "extra-key"])
def test_hostile_optimizer_file_is_refused_clearly(saved, how):
    path = saved / "optimizer.safetensors"
    header, body = _header(path)
    key = next(k for k in header if k != "__metadata__")
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
    elif how == "oversized-header":
        path.write_bytes(struct.pack("<Q", 2**62) + raw[8:])
    else:
        if how == "wrong-dtype":
            header[key]["dtype"] = "F64"
        elif how == "wrong-shape":
            header[key]["shape"] = [1, 2]
        elif how == "missing-key":
            del header[key]
        else:
            header["state.99.momentum_buffer"] = dict(header[key])
        _write(path, header, body)
    with pytest.raises(ValueError, match=r"optimizer|state"):
        _load(saved)


@pytest.mark.parametrize("text", [
    "", "{", "[]", "null", '{"format": "fastconv.train.checkpoint", "version": "1"}',
    '{"format": "fastconv.train.checkpoint", "version": 1}',
    '{"format": "fastconv.train.checkpoint", "version": 1, "model_keys": [], "meta": [], "optimizer": 3}',
    ('{"format": "fastconv.train.checkpoint", "version": 1, "model_keys": [], "meta": {}, '
    '"optimizer": {"type": "SGD", "param_groups": "x", "scalars": {}}, "scheduler": null}'),
    ('{"format": "fastconv.train.checkpoint", "version": 1, "model_keys": [], "meta": {}, '
    '"optimizer": {"type": "SGD", "param_groups": [], "scalars": {"x": 1}}, "scheduler": null}'),
    '{"format": "fastconv.train.checkpoint", "version": 1e999}',
    '{"__float__": "nan"}',
    '{"format": "fastconv.train.checkpoint", "version": 1, "meta": {"a": ' + "[" * 100000 + "]" * 100000 + "}}",
])
def test_hostile_checkpoint_json_is_refused_clearly(saved, text):
    (saved / "checkpoint.json").write_text(text)
    with pytest.raises(ValueError, match="checkpoint"):
        _load(saved)


def test_checkpoint_json_that_is_not_utf8_is_refused(saved):
    (saved / "checkpoint.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="checkpoint.json"):
        _load(saved)


def test_a_hostile_file_is_refused_before_arrays_are_built(saved, monkeypatch):
    """Shapes and dtypes are checked from the header: a header that promises a
    2**80-element tensor never reaches the allocator."""
    _spoil_model_file(saved / "model.safetensors", "huge-shape")
    built = []
    real = np.frombuffer
    monkeypatch.setattr(np, "frombuffer", lambda *a, **k: built.append(1) or real(*a, **k))
    with pytest.raises(ValueError):
        _load(saved)
    assert built == []


# ---------------------------------------------------------------------------
# nothing is unpickled

def test_the_package_never_unpickles():
    """Grep the installed package: no pickle import and no np.load that allows pickles.
    (CIFAR-10's Python batches are pickles; data.py reads them with a restricted
    unpickler that refuses every global, which this test allows by name.)"""
    root = Path(fc.__file__).parent
    sources = sorted(root.rglob("*.py")) + sorted(root.rglob("*.pyx"))
    assert len(sources) > 10
    offenders = []
    for path in sources:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"allow_pickle\s*=\s*True|\bpickle\.loads?\b|\bcPickle\b|\bdill\b|\bjoblib\b|"
                         r"\bmarshal\.loads?\b|\bshelve\b|torch\.load\b", code):
                offenders.append(f"{path.name}:{i}: {line.strip()}")
    assert offenders == [], offenders
    unpicklers = [f"{p.name}:{i}" for p in sources
                  for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                  if "Unpickler" in line.split("#", 1)[0]]
    assert {u.split(":")[0] for u in unpicklers} <= {"loaders.py"}, unpicklers


def test_np_load_in_the_package_refuses_pickles(tmp_path):
    """Where the package reads .npz files, an object array (a pickle inside) is refused."""
    np.savez(tmp_path / "evil.npz", X=np.array([object()], dtype=object), y=np.zeros(1))
    with pytest.raises(ValueError, match="(?i)pickle|object|X"):
        fc.data.load_npz(str(tmp_path / "evil.npz"))
