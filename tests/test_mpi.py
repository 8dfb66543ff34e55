"""Data-parallel training over MPI: `mpirun -n 2` against one process on the same global batches.

The mpirun tests need an MPI launcher and mpi4py (apt-get install openmpi-bin libopenmpi-dev;
pip install "fastconv[mpi]") and are skipped, saying so, without them.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
from importlib.util import find_spec

import numpy as np
import pytest

import fastconv as fc
from fastconv import data as D
from fastconv.train.distributed import _split
from fastconv.train import Trainer
from fastconv.models import build_model

# One training run; argv: arch, out dir, "single" or "mpi", epochs, batch size[, first N training examples]. Every rank saves its final
# state and history as rank<R>.npz / history<R>.json, and gets its own checkpoint folder ckpt<R>, so the test
# can see that ranks agree and that only rank 0 writes checkpoints. Rank r initializes with seed 3 + r.
SCRIPT = """
import json, os, sys
import numpy as np
import fastconv as fc
from fastconv import data as D
from fastconv.train import Trainer
from fastconv.models import build_model

arch, out, mode, epochs, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
fc.set_num_threads(1)
train, val = D.train_val_split(D.load_digits()[:400], 0.25, seed=0)
norm = D.Normalizer.fit(train)
train, val = norm(train)[:int(sys.argv[6]) if len(sys.argv) > 6 else None], norm(val)
rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))
fc.manual_seed(3 + rank)  # each rank initializes its own weights: fit starts from rank 0's
model = build_model(arch, (1, 8, 8), 10)
opt = fc.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
trainer = Trainer(model, fc.SoftmaxCrossEntropy(), opt, batch_size=batch, seed=5, progress=False,
                  checkpoint_dir=os.path.join(out, f"ckpt{rank}"), distributed=None if mode == "single" else "mpi")
history = trainer.fit(train, val, epochs=epochs)
np.savez(os.path.join(out, f"rank{rank}.npz"), **model.state_dict())
with open(os.path.join(out, f"history{rank}.json"), "w") as f:
    json.dump({k: history[k] for k in ("iteration_loss", "train_loss", "train_accuracy", "val_loss",
                                       "val_accuracy")}, f)
"""


@functools.lru_cache
def _launcher():
    """(command prefix for 2 ranks, environment), or (None, why MPI tests cannot run)."""
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    if mpirun is None:
        return None, "no mpirun on PATH: install Open MPI (apt-get install openmpi-bin libopenmpi-dev)"
    if find_spec("mpi4py") is None:
        return None, 'mpi4py is not installed: pip install "fastconv[mpi]"'
    env = dict(os.environ)
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True, check=False).stdout
    prefix = [mpirun, "-n", "2"]
    if "Open MPI" in version or "open-mpi" in version:
        prefix.append("--oversubscribe")  # 2 ranks even where Open MPI counts fewer free slots
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return prefix, env


def mpirun(*cmd, cwd):
    prefix, env = _launcher()
    if prefix is None:
        pytest.skip(env)
    p = subprocess.run([*prefix, *cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def run_script(tmp_path, arch, mode, epochs, batch, n_train=300):
    out = tmp_path / mode
    out.mkdir()
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    args = [str(script), arch, str(out), mode, str(epochs), str(batch), str(n_train)]
    if mode == "mpi":
        shown = mpirun(sys.executable, *args, cwd=tmp_path)
    else:
        shown = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, check=True,
                               timeout=180).stdout
    return out, shown


def test_mpirun_2_equals_one_process_and_only_rank_0_writes(tmp_path):
    """Rank 1 starts from other weights than rank 0: equal results mean rank 0's were broadcast."""
    arch = "conv4x3p1-relu-pool2-fc10"
    mpi, shown = run_script(tmp_path, arch, "mpi", 2, 32)  # 300 examples: 9 batches of 32, then one of 12
    single, _ = run_script(tmp_path, arch, "single", 2, 32)
    one, ranks = np.load(single / "rank0.npz"), [np.load(mpi / f"rank{r}.npz") for r in (0, 1)]
    for key in one:
        np.testing.assert_allclose(ranks[0][key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
        np.testing.assert_array_equal(ranks[1][key], ranks[0][key], err_msg=key)  # ranks never drift apart
    h_one, h_mpi = (json.loads((d / "history0.json").read_text()) for d in (single, mpi))
    assert len(h_mpi["iteration_loss"]) == len(h_one["iteration_loss"]) == 20
    for key in h_one:  # the logged losses and accuracies are those of the global batches
        np.testing.assert_allclose(h_mpi[key], h_one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert shown.count("epoch 1/2") == 1  # one rank logs
    assert {p.name for p in (mpi / "ckpt0").iterdir()} == {"best", "last", "history.json"}
    assert list((mpi / "ckpt1").iterdir()) == []  # the other writes nothing


def test_mpirun_batch_norm_uses_shard_statistics_and_averages_running_stats(tmp_path):
    """One step on one global batch of 8 with batch norm first, so its input is the data itself."""
    mpi, _ = run_script(tmp_path, "bn-conv4x3p1-relu-pool2-fc10", "mpi", 1, 8, n_train=8)
    single, _ = run_script(tmp_path, "bn-conv4x3p1-relu-pool2-fc10", "single", 1, 8, n_train=8)
    ranks, one = [np.load(mpi / f"rank{r}.npz") for r in (0, 1)], np.load(single / "rank0.npz")
    for key in one:
        np.testing.assert_array_equal(ranks[1][key], ranks[0][key], err_msg=key)
    train, _ = D.train_val_split(D.load_digits()[:400], 0.25, seed=0)
    X = D.Normalizer.fit(train)(train).X[:8].astype(np.float64)
    order = np.random.default_rng(5).permutation(len(X))  # the trainer's shuffle with seed 5
    shards = [X[order[:4]], X[order[4:]]]
    momentum = 0.1
    # the mean of the shard means is the batch mean
    np.testing.assert_allclose(ranks[0]["0.running_mean"], momentum * X.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(ranks[0]["0.running_mean"], one["0.running_mean"], rtol=1e-5)
    # the variance is the mean of the shards' unbiased variances, not the batch's
    shard_var = 1 - momentum + momentum * np.mean([s.var(axis=(0, 2, 3), ddof=1) for s in shards], axis=0)
    batch_var = 1 - momentum + momentum * X.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(ranks[0]["0.running_var"], shard_var, rtol=1e-6)
    np.testing.assert_allclose(one["0.running_var"], batch_var, rtol=1e-6)
    assert not np.allclose(shard_var, batch_var, rtol=1e-5, atol=0)  # so the two checks above tell them apart
    assert int(ranks[0]["0.num_batches_tracked"]) == 1


def test_mpirun_fastconv_train(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    common = ["train", "--epochs", "2", "--arch", "conv4x3p1-relu-pool2-fc10", "--optimizer", "sgd", "--batch-size",
              "64", "--no-plots", "--patience", "0"]
    shown = mpirun(sys.executable, "-m", "fastconv", *common, "--out", "mpi", cwd=tmp_path)
    subprocess.run([sys.executable, "-m", "fastconv", *common, "--threads", "1", "--out", "single"], cwd=tmp_path,
                   capture_output=True, text=True, check=True, timeout=180)
    assert shown.count("epoch 1/2") == 1 and shown.count("test accuracy") == 1  # rank 1 prints nothing
    summary = {d: json.loads((tmp_path / d / "summary.json").read_text()) for d in ("mpi", "single")}
    assert summary["mpi"]["mpi_ranks"] == 2 and summary["single"]["mpi_ranks"] == 1
    assert summary["mpi"]["test_accuracy"] == pytest.approx(summary["single"]["test_accuracy"], abs=0.01)
    w = {d: safetensors_numpy.load_file(str(tmp_path / d / "best" / "model.safetensors")) for d in ("mpi", "single")}
    for key in w["single"]:
        np.testing.assert_allclose(w["mpi"][key], w["single"][key], rtol=1e-4, atol=1e-5, err_msg=key)
    # every rank resumes from rank 0's checkpoint
    shown = mpirun(sys.executable, "-m", "fastconv", "train", "--resume", "--out", "mpi", "--epochs", "3", cwd=tmp_path)
    assert shown.count("epoch 3/3") == 1 and "epoch 2/3" not in shown
    assert json.loads((tmp_path / "mpi" / "summary.json").read_text())["epochs_run"] == 3


def test_split_covers_a_batch_in_nearly_equal_contiguous_pieces():
    for n in (2, 7, 12, 300):
        for parts in (1, 2, 3, 5):
            pieces = [_split(n, parts, r) for r in range(parts)]
            assert np.array_equal(np.concatenate([np.arange(n)[p] for p in pieces]), np.arange(n))
            sizes = [p.stop - p.start for p in pieces]
            assert max(sizes) - min(sizes) <= 1


def test_trainer_distributed_errors(monkeypatch):
    model = build_model("fc10", (4,), 10)
    opt = fc.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"`distributed` must be None, 'mpi' or an MPIDataParallel; got 'nccl'"):
        Trainer(model, fc.SoftmaxCrossEntropy(), opt, distributed="nccl")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if not installed
    with pytest.raises(ImportError, match=r'needs mpi4py.*apt-get install openmpi-bin.*pip install "fastconv\[mpi\]"'):
        Trainer(model, fc.SoftmaxCrossEntropy(), opt, distributed="mpi")


def test_import_fastconv_imports_no_engine(tmp_path):
    code = ("import sys, fastconv, fastconv.train.distributed, fastconv.tools.search; "
            "print(sorted(m for m in ('mpi4py', 'dask', 'distributed') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]"
