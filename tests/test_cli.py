"""The ``fastconv`` command, end to end through the installed console script.

Subprocesses run in tmp_path, so they import the installed package, not ./fastconv.
"""

import gzip
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastconv as fc
from fastconv.models import ARCHS, RESNETS
from fastconv.tools import cli

SCRIPT = shutil.which("fastconv", path=os.path.dirname(sys.executable)) or shutil.which("fastconv")
ARCH = "conv8x3p1-relu-pool2-fc10"


def fastconv(*args, cwd, timeout=300):
    if SCRIPT is None:
        pytest.skip("the fastconv console script is not installed")
    env = dict(os.environ, OMP_WAIT_POLICY="passive")  # the tests share the CPUs with each other
    return subprocess.run([SCRIPT, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


def one_line_error(result, code=1):
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`fastconv train` with the default data and model, 2 epochs: (cwd, run folder, stdout)."""
    cwd = tmp_path_factory.mktemp("cli")
    r = fastconv("train", "--epochs", "2", "--threads", "1", "--out", "runs/digits", cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    return cwd, cwd / "runs" / "digits", r.stdout


def test_help_everywhere(tmp_path, capsys):
    top = fastconv("--help", cwd=tmp_path)
    assert top.returncode == 0 and all(c in top.stdout for c in ("train", "evaluate", "search", "bench", "info"))
    for command, words in {"train": ["--arch", "--epochs", "--resume", "--config", "--sanity", "conv<OUT>x<K>",
                                     "lenet", "best/ and last/"],
                           "evaluate": ["CHECKPOINT", "--split"], "search": ["--trials", "log-uniform", "LO:HI"],
                           "bench": ["--reps", "--fairness", "PyTorch"], "info": ["usage"]}.items():
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        for w in words:
            assert w in out, (command, w)
        if command == "train":
            for name in (*ARCHS, *RESNETS):
                assert re.search(rf"\b{name}\b", out), name
    module = subprocess.run([sys.executable, "-m", "fastconv", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, check=False)
    assert module.returncode == 0 and "train" in module.stdout


def test_train_defaults_end_to_end(trained):
    _, run, out = trained
    for name in ("best/model.safetensors", "best/optimizer.safetensors", "best/checkpoint.json", "last/checkpoint.json",
                 "history.json", "config.toml", "summary.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.9 and summary["epochs_run"] == 2
    assert f"test accuracy {100 * summary['test_accuracy']:.2f}%" in out
    assert "model conv32x3p1-relu-conv32x3p1-relu-pool2-fc128-relu-fc10" in out and "epoch 2/2" in out
    pytest.importorskip("matplotlib")
    for name in ("curves.png", "filters.png", "layer_stats.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_no_progress_bar_when_not_a_terminal(trained):
    cwd, _, _ = trained
    r = fastconv("train", "--epochs", "1", "--arch", ARCH, "--threads", "1", "--no-plots", "--out", "quiet", cwd=cwd)
    assert r.returncode == 0 and r.stderr == ""


def test_pytorch_reproduces_the_best_checkpoint(trained, torch):
    from safetensors.torch import load_file

    from fastconv.models import load_model

    _, run, _ = trained
    model, _ = load_model(run / "best")
    nn = torch.nn
    tnet = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 128), nn.ReLU(), nn.Linear(128, 10))
    tnet.load_state_dict(load_file(str(run / "best" / "model.safetensors")))
    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(tnet(torch.from_numpy(x)).numpy(), model(x), rtol=1e-4, atol=1e-4)


def test_evaluate_prints_accuracy_and_confusion_matrix(trained):
    cwd, run, _ = trained
    summary = json.loads((run / "summary.json").read_text())
    r = fastconv("evaluate", run, "--threads", "1", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert f"accuracy {100 * summary['test_accuracy']:.2f}%" in r.stdout
    assert "confusion matrix (rows: true class, columns: predicted)" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.strip().endswith("%") and line.split()[0].isdigit()]
    assert len(rows) == 10 and sum(int(v) for line in rows for v in line.split()[1:-1]) == 359
    r = fastconv("evaluate", run / "last", "--split", "val", cwd=cwd)
    assert r.returncode == 0 and "val split: 143 examples" in r.stdout


def test_resume_continues_the_run(trained):
    cwd, _, _ = trained
    args = ("--arch", ARCH, "--threads", "1", "--no-plots", "--out", "resumable", "--seed", "3")
    assert fastconv("train", "--epochs", "1", *args, cwd=cwd).returncode == 0
    again = fastconv("train", *args, cwd=cwd)
    assert "already holds a run; add --resume" in one_line_error(again)
    r = fastconv("train", "--resume", "--out", "resumable", "--epochs", "2", cwd=cwd)
    assert r.returncode == 0, r.stderr
    history = json.loads((cwd / "resumable" / "history.json").read_text())
    assert history["epoch"] == [1, 2] and "epoch 2/2" in r.stdout and "epoch 1/2" not in r.stdout


def test_sanity_check(tmp_path):
    r = fastconv("train", "--sanity", "--arch", "conv8x3p1-relu-pool2-fc32-relu-fc10", "--optimizer", "sgd",
                 "--lr", "0.05", "--threads", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2.3026 is expected" in r.stdout and "-> ok" in r.stdout and "sanity check passed" in r.stdout
    assert not (tmp_path / "runs").exists()
    r = fastconv("train", "--sanity", "--arch", ARCH, "--optimizer", "sgd", "--lr", "1e-9", cwd=tmp_path)
    assert r.returncode == 1 and "FAILED" in r.stdout


def test_config_file_and_command_line_precedence(tmp_path):
    (tmp_path / "c.toml").write_text(f'arch = "{ARCH}"\nepochs = 1\nbatch-size = 64\nno_plots = true\n'
                                     'optimizer = "sgd"\nlr = 0.05\nthreads = 1\n')
    r = fastconv("train", "--config", "c.toml", "--batch-size", "16", "--out", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "sgd lr 0.05, batch 16, 1 epochs" in r.stdout
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert "batch_size = 16" in saved and "epochs = 1" in saved
    (tmp_path / "bad.toml").write_text("lrr = 0.1\n")
    assert "config file bad.toml: unknown option 'lrr'" in one_line_error(
        fastconv("train", "--config", "bad.toml", cwd=tmp_path))
    (tmp_path / "bad2.toml").write_text('optimizer = "lbfgs"\n')
    assert "optimizer must be one of adagrad, adam, rmsprop, sgd; got 'lbfgs'" in one_line_error(
        fastconv("train", "--config", "bad2.toml", cwd=tmp_path))
    (tmp_path / "bad3.toml").write_text("epochs = [\n")
    assert "is not valid TOML" in one_line_error(fastconv("train", "--config", "bad3.toml", cwd=tmp_path))


def test_search_then_train_its_best_config(tmp_path):
    r = fastconv("search", "--trials", "2", "--epochs", "1", "--arch", ARCH, "--threads", "1", "--out", "s",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "trial 1/2" in r.stdout and "trial 2/2" in r.stdout and "best config:" in r.stdout
    for name in ("results.csv", "results.json", "best_config.toml"):
        assert (tmp_path / "s" / name).is_file()
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    best = results["trials"][0]
    toml = (tmp_path / "s" / "best_config.toml").read_text()
    assert f"lr = {best['config']['lr']!r}" in toml and f"seed = {best['seed']}" in toml
    r = fastconv("train", "--config", "s/best_config.toml", "--epochs", "1", "--no-plots", "--out", "t",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # the same model, seed and data as the trial: the first epoch matches it
    history = json.loads((tmp_path / "t" / "history.json").read_text())
    assert history["val_accuracy"][0] == pytest.approx(best["val_accuracy"])


def test_mnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 10)):
        images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)
        for kind, a in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 8, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape)
            with gzip.open(tmp_path / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + a.tobytes())
    r = fastconv("train", "--data", "mnist", "--data-dir", tmp_path, "--epochs", "1", "--no-plots",
                 "--threads", "1", "--out", "m", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "model conv8x5p2-relu-pool2-conv16x5p2-relu-pool2-fc10" in r.stdout  # lenet
    assert "50 train / 10 val / 10 test" in r.stdout


def test_user_errors_are_one_line_without_traceback(tmp_path):
    (tmp_path / "a_file").write_text("x")
    cases = [
        (("train", "--arch", "conv8x3-softmax-fc10"), "unknown layer 'softmax'"),
        (("train", "--arch", "conv8x3-fc7"), "ends with 7 outputs but the data has 10 classes"),
        (("train", "--data", "mnist"), "--data mnist needs --data-dir DIR"),
        (("train", "--data", "mnist", "--data-dir", "nowhere"), "load_mnist: nowhere is not a folder"),
        (("train", "--data", "missing.npz"), "load_npz: no such file: missing.npz"),
        (("train", "--data", "imagenet"), "--data must be digits, mnist, cifar10, a path ending in .npz, an image "
                                          "folder or a .tar/.tar.gz of one; got 'imagenet'"),
        (("train", "--out", "a_file/run"), "cannot write to the output folder a_file/run"),
        (("train", "--resume"), "--resume needs --out RUN_DIR"),
        (("train", "--resume", "--out", "nothing"), "--resume: nothing is not a run folder"),
        (("train", "--config", "none.toml"), "config file none.toml does not exist"),
        (("evaluate", "nothing"), "checkpoint nothing does not exist"),
        (("search", "--momentum", "0.5:1.5", "--out", "s"), "--momentum values must be in [0, 1)"),
    ]
    for args, message in cases:
        line = one_line_error(fastconv(*args, cwd=tmp_path))
        assert line.startswith(f"fastconv {args[0]}: error: ") and message in line, (args, line)


def test_usage_errors_exit_2(tmp_path):
    for args, message in [(("train", "--epochs", "0"), "--epochs: must be >= 1; got 0"),
                          (("train", "--lr", "fast"), "--lr: must be a number; got 'fast'"),
                          (("train", "--optimizer", "lbfgs"), "invalid choice: 'lbfgs'"),
                          (("train", "--bogus"), "unrecognized arguments: --bogus"),
                          (("evaluate",), "the following arguments are required: CHECKPOINT"),
                          (("search", "--lr", "a:b"), "expected LO:HI, a value, or A,B,C"),
                          ((), "the following arguments are required: COMMAND")]:
        r = fastconv(*args, cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr and "usage:" in r.stderr, (args, r.stderr)


def test_bench_and_info(tmp_path):
    r = fastconv("bench", "--tiny", "--reps", "1", "--turn-ms", "1", "--threads", "1", "--no-torch",
                 "--only", "sgemm", "--only", "maxpool", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # The console script re-executes itself so that OpenBLAS loads with the timeout set.
    assert "- OPENBLAS_THREAD_TIMEOUT: " in r.stdout and "not set" not in r.stdout
    table = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| workload | threads | fastconv ms | NumPy/OpenBLAS ms |")
    # sgemm: three float32 shapes and one bf16; maxpool: forward and backward.
    assert len(table) == 1 + 4 + 2 and all(line.count("|") == table[0].count("|") for line in table)
    r = fastconv("info", cwd=tmp_path)
    assert r.returncode == 0 and "self-test" in r.stdout


def test_bench_with_torch_in_process(capsys, torch):
    threads, torch_threads = fc.get_num_threads(), torch.get_num_threads()
    try:
        assert cli.main(["bench", "--tiny", "--reps", "1", "--turn-ms", "1", "--threads", "1",
                         "--only", "relu"]) == 0
    finally:
        fc.set_num_threads(threads)
        torch.set_num_threads(torch_threads)
    out = capsys.readouterr().out
    assert "| PyTorch CL ms | PyTorch NCHW ms |" in out and "| relu 2x3x8x8 | 1 |" in out


def test_training_still_works_without_matplotlib(tmp_path, monkeypatch, capsys):
    import sys as _sys

    for name in [m for m in _sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(_sys.modules, name)
    monkeypatch.setitem(_sys.modules, "matplotlib", None)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--epochs", "1", "--arch", ARCH, "--threads", "1", "--out", "run"]) == 0
    out = capsys.readouterr().out
    assert 'pictures skipped: matplotlib is not installed (pip install "fastconv[plot]"' in out
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert not (tmp_path / "run" / "curves.png").exists()
