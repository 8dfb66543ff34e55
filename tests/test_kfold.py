"""fc.data.kfold (stratified, every example in exactly one val fold) and
fastconv search --folds K (each trial scored by its mean validation accuracy over the folds)."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv as fc
from fastconv.data import Dataset, kfold
from fastconv.tools import cli, search


def labelled(y):
    y = np.asarray(y, np.int64)
    X = np.arange(len(y), dtype=np.float32).reshape(-1, 1, 1, 1)  # X holds each example's index
    return Dataset(X, y, [str(i) for i in range(int(y.max()) + 1)])


@settings(max_examples=80, deadline=None)
@given(y=st.lists(st.integers(0, 4), min_size=2, max_size=60), k=st.integers(2, 7), seed=st.integers(0, 2**32 - 1))
def test_folds_partition_the_examples_and_keep_each_class_balanced(y, k, seed):
    k = min(k, len(y))
    data = labelled(y)
    folds = list(kfold(data, k, seed))
    assert len(folds) == k
    val_ids = [va.X.ravel().astype(int) for _, va in folds]
    assert sorted(np.concatenate(val_ids).tolist()) == list(range(len(y)))  # each example in exactly one val fold
    for (tr, va), ids in zip(folds, val_ids):
        train_ids = tr.X.ravel().astype(int)
        assert sorted(train_ids.tolist() + ids.tolist()) == list(range(len(y)))  # train is the rest
        assert (np.diff(train_ids) > 0).all() and (np.diff(ids) > 0).all()  # original order kept
        np.testing.assert_array_equal(va.y, data.y[ids])
        assert tr.classes == va.classes == data.classes
    sizes = [len(va) for _, va in folds]
    assert max(sizes) - min(sizes) <= 1
    for c in np.unique(data.y):
        per_fold = [int(np.count_nonzero(va.y == c)) for _, va in folds]
        assert max(per_fold) - min(per_fold) <= 1, (c, per_fold)  # stratified


def test_folds_are_seeded():
    data = labelled(np.arange(40) % 3)
    ids = [[va.X.ravel().tolist() for _, va in kfold(data, 4, seed)] for seed in (0, 0, 1)]
    assert ids[0] == ids[1] and ids[0] != ids[2]


@pytest.mark.parametrize("k", [1, 6, 2.0, True])
def test_bad_k_is_refused_at_the_call(k):
    with pytest.raises(ValueError, match=rf"kfold: `k` must be an int in \[2, 5\] \(the number of examples\); "
                                         rf"got {k!r}"):
        kfold(labelled([0, 1, 0, 1, 0]), k, 0)  # at the call, not when the first fold is asked for


def build(config):
    model = fc.models.build_model("fc10", (1, 8, 8), 10)
    return model, fc.SoftmaxCrossEntropy(), fc.SGD(model.parameters(), lr=config["lr"])


def test_random_search_with_folds_scores_by_the_mean_over_the_folds():
    data = fc.data.load_digits()[:300]
    result = search.random_search(build, {"lr": search.LogUniform(0.01, 0.3), "batch_size": 32}, 2, data, None,
                                  epochs=2, seed=5, verbose=False, folds=3)
    for t in result.trials:
        assert len(t["fold_val_accuracy"]) == 3 and len(t["fold_best_epoch"]) == 3
        assert t["val_accuracy"] == pytest.approx(np.mean(t["fold_val_accuracy"]))
        assert t["epochs"] == 6
    # the first trial's first fold is exactly a plain trial on that fold
    train, val = next(kfold(data, 3, 5))
    first = next(t for t in result.trials if t["trial"] == 1)
    alone = search.run_trial(build, 1, first["config"], first["seed"], train, val, 2)
    assert alone["val_accuracy"] == first["fold_val_accuracy"][0]
    with pytest.raises(ValueError, match="with `folds` the validation data are the folds"):
        search.random_search(build, {"lr": 0.1}, 1, data, data, folds=3)
    with pytest.raises(ValueError, match="`val` is None"):
        search.random_search(build, {"lr": 0.1}, 1, data, None)
    with pytest.raises(ValueError, match="kfold: `k`"):
        search.random_search(build, {"lr": 0.1}, 1, data, None, folds=1)


def test_cli_search_folds(tmp_path, capsys):
    out = tmp_path / "s"
    assert cli.main(["search", "--trials", "2", "--epochs", "1", "--folds", "3", "--arch", "fc10", "--threads", "1",
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "scored by mean val accuracy over 3 folds" in text
    trials = json.loads((out / "results.json").read_text())["trials"]
    assert all(len(t["fold_val_accuracy"]) == 3 for t in trials)
    assert "mean val accuracy over 3 folds" in (out / "best_config.toml").read_text()
    assert cli.main(["search", "--trials", "1", "--folds", "1", "--arch", "fc10", "--out", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--folds must be at least 2" in err[0]


def test_folds_on_a_dask_cluster_score_as_the_serial_search():
    pytest.importorskip("distributed", reason='dask.distributed is not installed: pip install "fastconv[dask]"')
    data = fc.data.load_digits()[:200]
    space = {"lr": search.LogUniform(0.01, 0.3), "batch_size": 32}
    serial = search.random_search(build, space, 2, data, None, epochs=1, seed=2, verbose=False, threads=1, folds=2)
    dask = search.random_search(build, space, 2, data, None, epochs=1, seed=2, verbose=False, workers=2, folds=2)
    assert [t["fold_val_accuracy"] for t in serial.trials] == [t["fold_val_accuracy"] for t in dask.trials]
