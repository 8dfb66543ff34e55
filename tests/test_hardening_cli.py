"""The ``fastconv`` command on hostile input: corrupt data files, broken checkpoints,
unwritable output folders, bad option values. Each gives one line on stderr,
exit code 1 (failure) or 2 (usage), and no traceback.

Subprocesses run in tmp_path (outside the repository), so they import the
installed package.
"""

import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from test_cli import SCRIPT, fastconv, one_line_error

from fastconv import _kernels


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


UNSUPPORTED_ISAS = [i for i in _kernels.ISAS if i not in _kernels.supported_isas()]
BAD_SETTINGS = [  # (variable, value, what the message must name besides them)
    ("FASTCONV_ISA", "neon", str(_kernels.ISAS)),
    ("FASTCONV_ISA", "AVX-512", str(_kernels.ISAS)),
    ("FASTCONV_BACKEND", "cuda", "('native', 'reference', 'check')"),
] + [("FASTCONV_ISA", isa, f"this CPU and build support, {_kernels.supported_isas()}") for isa in UNSUPPORTED_ISAS]


def _run(command, tmp_path, **env):
    return subprocess.run(command, cwd=tmp_path, env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("variable, value, expected", BAD_SETTINGS)
@pytest.mark.parametrize("args", [("info",), ("train", "--epochs", "1"), ("--help",), ("nonsense",)])
def test_bad_environment_variable_is_one_line_and_exit_2(tmp_path, variable, value, expected, args):
    if SCRIPT is None:
        pytest.skip("the fastconv console script is not installed")
    for command in ([SCRIPT, *args], [sys.executable, "-m", "fastconv", *args]):
        line = one_line_error(_run(command, tmp_path, **{variable: value}), code=2)
        assert line.startswith(f"fastconv: error: {variable} must be "), line
        assert expected in line and f"got {value!r}" in line, line


@pytest.mark.parametrize("variable, value, expected", BAD_SETTINGS)
def test_bad_environment_variable_fails_import_with_one_value_error(tmp_path, variable, value, expected):
    code = ("import json\ntry:\n    import fastconv\nexcept ValueError as e:\n    print(json.dumps(str(e)))")
    r = _run([sys.executable, "-c", code], tmp_path, **{variable: value})
    assert r.returncode == 0, r.stderr
    message = json.loads(r.stdout)
    assert message.startswith(f"{variable} must be ") and expected in message and f"got {value!r}" in message
    uncaught = _run([sys.executable, "-c", "import fastconv"], tmp_path, **{variable: value})
    frames = [line for line in uncaught.stderr.splitlines() if line.lstrip().startswith("File ")]
    assert uncaught.stderr.rstrip().endswith(f"ValueError: {message}"), uncaught.stderr
    assert all("_kernels" not in f and "backend.py" not in f for f in frames), uncaught.stderr  # raised at the top


def test_unsupported_isa_message():
    """The CPU-support branch of the message, on any host (the subprocess tests above reach it
    only where the CPU lacks an ISA that fastconv builds)."""
    assert _kernels._isa_problem("avx512", "AVX512", supported=("generic", "avx2")) == (
        "must be one this CPU and build support, ('generic', 'avx2'); got 'AVX512' (not supported here)")
    assert _kernels._isa_problem("avx2", supported=("generic", "avx2")) is None


def test_valid_isa_and_backend_settings_still_work(tmp_path):
    r = _run([sys.executable, "-c", "import fastconv as fc; print(fc.get_isa(), fc.get_backend())"], tmp_path,
             FASTCONV_ISA=" Generic ", FASTCONV_BACKEND="REFERENCE")
    assert r.returncode == 0 and r.stdout.split() == ["generic", "reference"], r.stderr
