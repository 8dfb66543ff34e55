"""The ``fastconv`` command on hostile input: corrupt data files, broken checkpoints,
unwritable output folders, bad option values. Each gives one line on stderr,
exit code 1 (failure) or 2 (usage), and no traceback.

Subprocesses run in tmp_path (outside the repository), so they import the
installed package.
"""

import gzip
import struct

import numpy as np
import pytest
from test_cli import fastconv, one_line_error


@pytest.fixture
def files(tmp_path):
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 this is not a zip file at all")
    good = tmp_path / "good.npz"
    np.savez(good, X=np.zeros((20, 1, 8, 8), np.float32), y=np.arange(20) % 2)
    raw = good.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(raw[:len(raw) // 2])
    np.savez(tmp_path / "no_y.npz", X=np.zeros((20, 1, 8, 8), np.float32))
    np.savez(tmp_path / "mismatch.npz", X=np.zeros((20, 1, 8, 8), np.float32), y=np.zeros(7, np.int64))
    np.savez(tmp_path / "nan.npz", X=np.full((20, 1, 8, 8), np.nan, np.float32), y=np.arange(20) % 2)
    np.savez(tmp_path / "strings.npz", X=np.array(["a"] * 20), y=np.arange(20) % 2)
    np.savez(tmp_path / "neg_labels.npz", X=np.zeros((20, 1, 8, 8), np.float32), y=-np.ones(20, np.int64))
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    # IDX headers that promise far more data than the files hold, and a wrong magic number.
    (mnist / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 60000, 28, 28) + b"\0" * 100)
    (mnist / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 60000) + b"\0" * 10)
    (mnist / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 1234, 10, 28, 28))
    with gzip.open(mnist / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00")
    (tmp_path / "bad.toml").write_text("epochs = [\n")
    (tmp_path / "wrong_type.toml").write_text('epochs = "many"\n')
    ckpt = tmp_path / "run" / "best"
    ckpt.mkdir(parents=True)
    (ckpt / "checkpoint.json").write_text("{broken")
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (("train", "--data", "garbage.npz"), "garbage.npz"),
    (("train", "--data", "truncated.npz"), "truncated.npz"),
    (("train", "--data", "no_y.npz"), "y"),
    (("train", "--data", "mismatch.npz"), "`y` must have shape (20,)"),
    (("train", "--data", "strings.npz"), "images must be (N, C, H, W)"),
    (("train", "--data", "neg_labels.npz"), "y"),
    (("train", "--data", "mnist", "--data-dir", "mnist"), "mnist"),
    (("train", "--config", "bad.toml"), "bad.toml"),
    (("train", "--config", "wrong_type.toml"), "epochs"),
    (("train", "--out", "/proc/fastconv-cannot-write-here"), "cannot write to the output folder"),
    (("train", "--out", "garbage.npz/run"), "cannot write to the output folder"),
    (("evaluate", "run"), "checkpoint"),
    (("evaluate", "run/best"), "checkpoint"),
    (("evaluate", "garbage.npz"), "garbage.npz"),
    (("search", "--data", "truncated.npz", "--trials", "1", "--out", "s"), "truncated.npz"),
])
def test_hostile_files_give_one_line_and_exit_1(files, args, message):
    line = one_line_error(fastconv(*args, "--epochs", "1", cwd=files) if args[0] == "train" and "--config" not in args
                          else fastconv(*args, cwd=files))
    assert line.startswith(f"fastconv {args[0]}: error: ") and message in line, (args, line)


def test_nan_data_stops_with_a_clear_error(files):
    r = fastconv("train", "--data", "nan.npz", "--epochs", "1", "--no-plots", "--out", "nan_run", cwd=files)
    line = one_line_error(r)
    assert "nan" in line.lower() or "finite" in line.lower() or "diverged" in line.lower(), line


@pytest.mark.parametrize("args, message", [
    (("train", "--threads", "0"), "--threads: must be >= 1; got 0"),
    (("train", "--threads", "two"), "--threads: must be a whole number; got 'two'"),
    (("train", "--threads", "1.5"), "--threads: must be a whole number"),
    (("train", "--batch-size", "-3"), "--batch-size: must be >= 1; got -3"),
    (("train", "--lr", "nan"), "--lr: must be a finite number > 0; got nan"),
    (("train", "--lr", "-1"), "--lr: must be a finite number > 0; got -1"),
    (("train", "--lr", "0"), "--lr: must be a finite number > 0; got 0"),
    (("train", "--dropout", "1"), "--dropout: must be in [0, 1); got 1"),
    (("evaluate", "a", "b"), "unrecognized arguments: b"),
    (("bench", "--reps", "0"), "--reps: must be >= 1; got 0"),
    (("bench", "--threads", "1,0"), "--threads: must be >= 1"),
    (("nonsense",), "invalid choice: 'nonsense'"),
])
def test_bad_option_values_exit_2(tmp_path, args, message):
    r = fastconv(*args, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
