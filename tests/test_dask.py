"""fastconv.tools.search on Dask: the same table as a serial search, per-trial threads, and dying workers.

Skipped when dask.distributed is not installed (pip install "fastconv[dask]").
"""

import csv
import json
import logging
import os
import subprocess
import sys
from importlib.util import find_spec

import numpy as np
import pytest

import fastconv as fc
from fastconv import data as D
from fastconv.tools import search as S
from fastconv.models import build_model

needs_dask = pytest.mark.skipif(find_spec("distributed") is None,
                                reason='dask.distributed is not installed: pip install "fastconv[dask]"')

SPACE = {"lr": S.LogUniform(1e-3, 1e-1), "momentum": S.Uniform(0.5, 0.9), "batch_size": S.Choice([32, 64])}


@pytest.fixture(scope="module")
def splits():
    train, val = D.train_val_split(D.load_digits()[:300], 0.3, seed=0)
    norm = D.Normalizer.fit(train)
    return norm(train), norm(val)


@pytest.fixture(scope="module", autouse=True)
def ship_this_module_by_value():
    """The build functions below travel to the workers by value: workers cannot import a test module."""
    if find_spec("cloudpickle") is None:
        yield
        return
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def build(config):
    """A tiny net; with config["log"], notes which process ran the trial and with how many kernel threads."""
    if config.get("log"):
        with open(os.path.join(config["log"], f"{config['lr']!r}.txt"), "w") as f:
            f.write(f"{os.getpid()} {fc.get_num_threads()}")
    if config.get("marks"):
        _crash_if_asked(config)
    model = build_model("conv4x3p1-relu-pool2-fc10", (1, 8, 8), 10)
    opt = fc.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"])
    return model, fc.SoftmaxCrossEntropy(), opt


def _crash_if_asked(config):
    """Kill this worker process, as a segfault or the OOM killer would: the trial "crash_once" on its first
    run only (a marker file remembers it across processes), the trial "crash_always" every time."""
    mark = os.path.join(config["marks"], f"{config['lr']!r}")
    if config["lr"] == config["crash_always"] or (config["lr"] == config["crash_once"] and not os.path.exists(mark)):
        open(mark, "w").close()
        os._exit(1)


def _without_time(trials):
    return [{k: v for k, v in t.items() if k != "time"} for t in trials]


def _csv_without_time(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("time")
    return rows


@needs_dask
def test_local_cluster_search_equals_serial_and_runs_one_thread_per_trial(splits, tmp_path):
    train, val = splits
    (tmp_path / "log").mkdir()
    space = dict(SPACE, log=str(tmp_path / "log"))
    serial = S.random_search(build, space, n_trials=4, train=train, val=val, epochs=1, seed=7, threads=1,
                             out_dir=tmp_path / "serial", verbose=False)
    lines = []
    fc.set_num_threads(2)  # the client's setting must not leak into the trials: they run with 1 by default
    on_dask = S.random_search(build, space, n_trials=4, train=train, val=val, epochs=1, seed=7, workers=2,
                              out_dir=tmp_path / "dask", log=lines.append)
    assert _without_time(on_dask.trials) == _without_time(serial.trials)
    assert on_dask.best_config == serial.best_config
    assert sorted(t["seed"] for t in on_dask.trials) == [8, 9, 10, 11]
    assert _csv_without_time(tmp_path / "dask" / "results.csv") == _csv_without_time(tmp_path / "serial" /
                                                                                       "results.csv")
    saved = json.loads((tmp_path / "dask" / "results.json").read_text())
    assert _without_time(saved["trials"]) == _without_time(json.loads((tmp_path / "serial" / "results.json")
                                                                      .read_text())["trials"])
    assert len(lines) == 4 and all("val acc" in line for line in lines)
    # the Dask trials ran in worker processes, with 1 kernel thread each
    ran = [(tmp_path / "log" / f"{t['config']['lr']!r}.txt").read_text().split() for t in on_dask.trials]
    assert {threads for _, threads in ran} == {"1"}
    assert os.getpid() not in {int(pid) for pid, _ in ran}


@pytest.fixture(scope="module")
def cluster():
    """Two local workers (restarted by their nannies when they die), set up as random_search sets up its own:
    Dask gives a task up at its first worker death, and fastconv reruns it."""
    if find_spec("distributed") is None:
        pytest.skip('dask.distributed is not installed: pip install "fastconv[dask]"')
    import dask
    import distributed

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                           silence_logs=logging.CRITICAL)
    yield cluster
    cluster.close()


@needs_dask
def test_a_dying_worker_costs_only_its_trial(splits, tmp_path, cluster):
    train, val = splits
    rng = np.random.default_rng(3)
    lrs = [S.sample(SPACE, rng)["lr"] for _ in range(4)]  # constants in the space draw nothing: same configs
    (tmp_path / "marks").mkdir()
    crashing = dict(SPACE, crash_once=lrs[0], crash_always=lrs[1], marks=str(tmp_path / "marks"))
    result = S.random_search(build, crashing, n_trials=4, train=train, val=val, epochs=1, seed=3, threads=1,
                             scheduler=cluster.scheduler_address, retries=1, verbose=False)
    by_trial = {t["trial"]: t for t in result.trials}
    assert [t["status"] for t in result.trials] == ["ok", "ok", "ok", "failed"], result.trials
    assert by_trial[2]["status"] == "failed" and "died each of the 2 times it ran this trial (KilledWorker" in \
        by_trial[2]["error"]
    assert result.trials[-1]["trial"] == 2 and by_trial[2]["rank"] == 4  # a failed trial ranks last
    assert (tmp_path / "marks" / f"{lrs[0]!r}").exists()  # trial 1 did kill a worker once, then was rerun

    serial = S.random_search(build, SPACE, n_trials=4, train=train, val=val, epochs=1, seed=3, threads=1,
                             verbose=False)
    expected = {t["trial"]: t for t in serial.trials}
    for i in (1, 3, 4):
        assert by_trial[i]["status"] == "ok"
        for key in ("seed", "val_accuracy", "val_loss", "train_loss", "best_epoch"):
            assert by_trial[i][key] == expected[i][key], (i, key)


def test_search_on_dask_says_how_to_install_it(splits, monkeypatch):
    train, val = splits
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(ImportError, match=r'needs dask.distributed.*pip install "fastconv\[dask\]"'):
        S.random_search(build, SPACE, 2, train, val, workers=2, verbose=False)
    with pytest.raises(ValueError, match=r"either `scheduler`.*or `workers`.*not both"):
        S.random_search(build, SPACE, 2, train, val, workers=2, scheduler="tcp://x:1", verbose=False)
    with pytest.raises(ValueError, match=r"`workers` must be an int >= 1 or None; got 0"):
        S.random_search(build, SPACE, 2, train, val, workers=0, verbose=False)


@needs_dask
def test_cli_search_with_workers_writes_the_serial_table(tmp_path):
    common = ["search", "--trials", "3", "--epochs", "1", "--arch", "conv4x3p1-relu-pool2-fc10", "--seed", "2",
              "--lr", "1e-2:1e-1"]

    def run(*extra, out):
        p = subprocess.run([sys.executable, "-m", "fastconv", *common, "--out", str(tmp_path / out), *extra],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
        assert p.returncode == 0, p.stderr
        return p.stdout

    shown = run("--workers", "2", out="dask")
    assert "on a local Dask cluster of 2 workers, 1 kernel thread(s) per trial" in shown
    run("--threads", "1", out="serial")
    assert _csv_without_time(tmp_path / "dask" / "results.csv") == _csv_without_time(tmp_path / "serial" /
                                                                                       "results.csv")
    assert (tmp_path / "dask" / "best_config.toml").read_text() == (tmp_path / "serial" / "best_config.toml"
                                                                     ).read_text()
